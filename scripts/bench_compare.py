"""Benchmark `layerdiff compare` against the equivalent Polygraphy pipeline, on the same model, candidate
and inputs, and print a table of wall time and peak memory.

Polygraphy pipeline (what engineers run today):
    polygraphy run MODEL --onnxrt --onnx-outputs mark all --load-inputs in.json --save-outputs ref.json
    polygraphy run CAND  --onnxrt --onnx-outputs mark all --load-inputs in.json --save-outputs cand.json
    polygraphy run --load-outputs ref.json cand.json
layerdiff (which also computes every layer's local error and a plain run of the candidate):
    layerdiff compare MODEL --candidate CAND --inputs DIR -q -o report.json

Wall time is summed over the commands, peak memory is the largest peak RSS of any one command. The
candidate is built once beforehand (`--save-candidate`) so neither side pays for quantization.

    python scripts/bench_compare.py                      # fixtures, and models/ if get_models.py ran
    python scripts/bench_compare.py --models ppocr_det   # one real model
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, run in a child of a fresh helper process so
    that RUSAGE_CHILDREN sees that command alone."""
    helper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
              "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True, check=True).stdout
    wall, rss_kb, rc = out.split()
    if rc not in ("0", "1"):
        raise SystemExit(f"benchmark command failed (exit {rc}): {' '.join(cmd)}")
    return float(wall), int(rss_kb) * 1024


def cases(selected: list[str] | None) -> list[tuple[str, Path, Path, str]]:
    found = [("cnn (fixture)", ROOT / "fixtures/cnn.onnx", ROOT / "fixtures/cnn_inputs", "ort-int8"),
             ("transformer (fixture)", ROOT / "fixtures/transformer.onnx", None, "ort-fp16")]
    for name in ("ppocr_cls", "ppocr_det", "ppocr_rec"):
        d = ROOT / "models" / name
        if (d / "model.onnx").is_file():
            found.append((name, d / "model.onnx", d / "inputs", "ort-int8"))
    if selected:
        found = [c for c in found if any(s in c[0] for s in selected)]
    return found


def polygraphy_inputs(inputs: Path, model: Path, out: Path) -> None:
    from polygraphy.json import save_json

    feeds = []
    for f in sorted(inputs.glob("*.npz")):
        with np.load(f) as d:
            feeds.append({k: d[k] for k in d.files})
    save_json(feeds, str(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="substrings of case names to run")
    args = parser.parse_args()
    rows = []
    for name, model, inputs, cand_kind in cases(args.models):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if inputs is None:  # make an explicit sample so both sides see the same data
                from layerdiff.graph import load_model
                from layerdiff.inputs import random_samples

                inputs = tmp / "inputs"
                inputs.mkdir()
                np.savez(inputs / "0.npz", **random_samples(load_model(model).inputs, {}, 1).feeds[0])
            cand = tmp / "cand.onnx"
            subprocess.run([str(BIN / "layerdiff"), "compare", str(model), "--candidate", cand_kind, "--inputs",
                            str(inputs), "--calib", str(inputs.parent / "calib") if (inputs.parent / "calib").is_dir()
                            else str(inputs), "--save-candidate", str(cand), "-q"], check=True)
            ld = measure([str(BIN / "layerdiff"), "compare", str(model), "--candidate", str(cand), "--inputs",
                          str(inputs), "-q", "-o", str(tmp / "report.json")])
            polygraphy_inputs(inputs, model, tmp / "in.json")
            steps = [
                [str(BIN / "polygraphy"), "run", str(model), "--onnxrt", "--onnx-outputs", "mark", "all",
                 "--load-inputs", str(tmp / "in.json"), "--save-outputs", str(tmp / "ref.json")],
                [str(BIN / "polygraphy"), "run", str(cand), "--onnxrt", "--onnx-outputs", "mark", "all",
                 "--load-inputs", str(tmp / "in.json"), "--save-outputs", str(tmp / "cand.json")],
                [str(BIN / "polygraphy"), "run", "--load-outputs", str(tmp / "ref.json"), str(tmp / "cand.json")],
            ]
            pg = [measure(s) for s in steps]
            pg_wall, pg_rss = sum(w for w, _ in pg), max(r for _, r in pg)
            json_mb = ((tmp / "ref.json").stat().st_size + (tmp / "cand.json").stat().st_size) / 1e6
            n = len(list(inputs.glob("*.npz")))
            rows.append((name, n, ld[0], pg_wall, ld[1], pg_rss, json_mb))
            print(f"measured {name}", file=sys.stderr)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"layerdiff compare vs Polygraphy (wall s, peak RSS MB; {os.cpu_count()} cores)")
    for col in ("case", "samples", "layerdiff s", "polygraphy s", "time ratio", "layerdiff MB", "polygraphy MB",
                "memory ratio", "polygraphy JSON MB"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name, n, lw, pw, lr, pr, mb in rows:
        table.add_row(name, str(n), f"{lw:.2f}", f"{pw:.2f}", f"{lw / pw:.3f}", f"{lr / 1e6:.0f}", f"{pr / 1e6:.0f}",
                      f"{lr / pr:.2f}", f"{mb:.0f}")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
