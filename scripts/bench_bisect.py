"""Benchmark `bisect`'s strategies on the same models, candidate (ort-int8) and tolerance: pins,
evaluations, wall time, time per evaluation against a plain ONNX Runtime run of the candidate (session
creation included), and whether the answer holds on held-out samples. Prints a Markdown table.

    python scripts/get_models.py && python scripts/bench_bisect.py
    python scripts/bench_bisect.py --cases cnn --strategies auto,prefix

The tolerance is halfway between the all-INT8 baseline's cosine and 1.0 (the worst sample, every float
output). Real models search on their 3 inputs and are checked on the 6 samples of their holdout/
folder (other photos; for the text-line models three crops upside down and three other lines),
calibrated on their calib/ samples; the fixtures hold out the last third of their inputs and calibrate
on the rest. "fewest possible": no plan of fewer pins passes, checked exhaustively where that takes at
most 256 evaluations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    "cnn": ("fixtures/cnn.onnx", "fixtures/cnn_inputs", None, "CNN fixture"),
    "transformer": ("fixtures/transformer.onnx", None, None, "transformer fixture (random inputs)"),
    "ppocr_cls": ("models/ppocr_cls/model.onnx", "models/ppocr_cls/inputs", "models/ppocr_cls/calib",
                  "PP-OCR mobile v2.0 direction classifier"),
    "ppocr_det": ("models/ppocr_det/model.onnx", "models/ppocr_det/inputs", "models/ppocr_det/calib",
                  "PP-OCRv4 text detector"),
    "ppocr_rec": ("models/ppocr_rec/model.onnx", "models/ppocr_rec/inputs", "models/ppocr_rec/calib",
                  "PP-OCRv4 text recogniser"),
}


def plain_run_seconds(session, candidate, repeat: int = 3) -> float:
    """A plain ONNX Runtime session of the candidate over the search samples, creation included."""
    import onnxruntime as ort

    blob = candidate.model.SerializeToString()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        for feed in session.samples.feeds:
            sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fewest_possible(session, target, ref, k: int, limit: int = 256) -> str:
    """Whether no plan of fewer than k pins passes, checked exhaustively where that takes at most
    `limit` evaluations ("-" where it would take more)."""
    from itertools import combinations
    from math import comb

    from layerdiff.plan import PrecisionPlan

    quantized = session.quantizer.quantized
    names = [lay.name for lay in session.model.layers if lay.name in quantized]
    total = sum(comb(len(names), j) for j in range(k))
    if total > limit:
        return "-"
    for j in range(k):
        for pins in combinations(names, j):
            got = session.outputs_on(session.candidate("ort-int8", PrecisionPlan.uniform("int8", pins)))
            if target.passes(target.worst([target.score(r, g) for r, g in zip(ref, got, strict=True)])):
                return f"no: {j} pass"
    return f"yes ({total} plans)"


def main() -> int:
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.search import eval_bound
    from layerdiff.target import Target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cnn,transformer,ppocr_cls,ppocr_det")
    parser.add_argument("--strategies", default="auto,prefix,suffix,rank")
    parser.add_argument("--jobs", default="1", help="comma-separated --jobs values to run each strategy with")
    parser.add_argument("--int8-placement", default="trt", help="comma-separated placements (trt, ort-all)")
    parser.add_argument("--peer", choices=["nncf"], help="also run NNCF's quantize_with_accuracy_control on the real "
                        "models, same samples, metric and tolerance (in its own venv, made under .cache/ if absent)")
    parser.add_argument("--validation", type=int, default=0, help="the first N held-out samples validate each "
                        "answer instead (a sample an answer fails joins the search); the rest stay held out")
    args = parser.parse_args()
    rows, peers = [], []
    for case, placement in ((c, p) for c in args.cases.split(",") for p in args.int8_placement.split(",")):
        model, inputs, calib, label = CASES[case]
        if not (ROOT / model).is_file():
            print(f"skipping {case}: {model} not found (run python scripts/get_models.py)", file=sys.stderr)
            continue
        # a model with a holdout/ folder (get_models.py writes 6 other photos or text lines) searches on all
        # its inputs and is checked on those; the fixtures hold out the last third of their inputs
        holdout = ROOT / model.rsplit("/", 1)[0] / "holdout"
        session, held = prepare_split(ROOT / model, inputs=ROOT / inputs if inputs else None,
                                      calib=ROOT / calib if calib and (ROOT / calib).is_dir() else None,
                                      holdout=holdout if holdout.is_dir() else None, reference_provider="cpu",
                                      int8_placement=placement)
        validation = None
        if args.validation and held is not None and len(held) > args.validation:
            from dataclasses import replace

            k = args.validation
            validation = replace(held, feeds=held.feeds[:k], names=held.names[:k])
            held = replace(held, feeds=held.feeds[k:], names=held.names[k:])
        base = session.candidate("ort-int8")
        ref = session.outputs_on(None)
        probe = Target.parse("cosine", 0.0, [], session.model.outputs)
        baseline = probe.worst([probe.score(r, g) for r, g in zip(ref, session.outputs_on(base), strict=True)])
        threshold = (max(baseline, 0.0) + 1.0) / 2
        target = Target.parse("cosine", threshold, [], session.model.outputs)
        plain = plain_run_seconds(session, base)
        n = len(session.quantizer.quantized)
        results, walls = {}, {}
        # all on one prepared session: calibration once
        for strategy, jobs in ((s, int(j)) for s in args.strategies.split(",") for j in args.jobs.split(",")):
            t = time.perf_counter()
            r = bisect(session, "ort-int8", target, strategy=strategy, holdout=held, validation=validation,
                       evidence=False, jobs=jobs)
            wall = time.perf_counter() - t
            results[strategy] = r
            walls[strategy] = wall
            holds = "-" if r.holdout is None else ("yes" if r.holdout.holds else "no")
            if r.validation is not None:
                holds += f" (val {'yes' if r.validation.holds else 'no'}, {len(r.validation.counterexamples)} cex)"
            per_eval = wall / max(r.evaluations, 1)
            fewest = fewest_possible(session, target, ref, len(r.pins)) if r.outcome.passed else "-"
            rows.append(f"| {label} ({n}) | {placement} | {baseline:.6f} | {threshold:.6f} | {strategy} | {jobs} | {len(r.pins)} | "
                        f"{fewest} | {r.evaluations} / {eval_bound(strategy, n)} | {wall:.1f} | {per_eval:.3f} | "
                        f"{per_eval / plain:.2f} | {holds} | {r.status} |")
            print(rows[-1], file=sys.stderr, flush=True)
        if args.peer == "nncf" and holdout.is_dir() and calib and placement == args.int8_placement.split(",")[0]:
            peers.append(_nncf_row(label, ROOT / model, ROOT / calib, ROOT / inputs, holdout, threshold, results,
                                   walls))
        if "auto" in results and {"prefix", "suffix"} <= set(results):
            best = min(len(results["prefix"].pins), len(results["suffix"].pins))
            ok = len(results["auto"].pins) <= max(1, best // 2) or len(results["auto"].pins) <= best
            print(f"{case}: auto {len(results['auto'].pins)} pins, better contiguous {best}: "
                  f"{'target met' if len(results['auto'].pins) <= max(1, best // 2) else 'not half'}"
                  f"{'' if ok else ' (MORE than contiguous)'}", file=sys.stderr)
    print()
    print("| model (pinnable N) | placement | baseline cosine | tolerance | strategy | jobs | pins | fewest possible | evaluations / bound | wall s | "
          "s per evaluation | x plain ORT run | holds on held-out | status |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    if peers:
        print()
        print("| model | tool | all-INT8 cosine | ops kept float | evaluations | wall s | peak MB | held-out cosine (needed) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in peers:
            print(row)
    return 0


def _nncf_row(label, model, calib, search, holdout, threshold, results, walls) -> str:
    """NNCF beside layerdiff's auto answer on one model: two Markdown rows."""
    import json
    import subprocess

    venv = ROOT / ".cache" / "nncf-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nncf", "onnx", "onnxruntime"], check=True)
    out = ROOT / ".cache" / f"nncf-{Path(model).parent.name}.onnx"
    done = subprocess.run([str(python), str(ROOT / "scripts" / "peer_nncf.py"), str(model), "--calib", str(calib),
                           "--search", str(search), "--holdout", str(holdout), "--min-cosine", repr(threshold),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    r = results.get("auto")
    ours = (f"| {label} | layerdiff | {r.baseline.value:.6f} | {len(r.pins)} | {r.evaluations} | "
            f"{walls.get('auto', float('nan')):.1f} | - | "
            f"{r.holdout.value:.6f} ({threshold:.6f}) |") if r is not None and r.holdout is not None else ""
    theirs = (f"| {label} | NNCF {peer['nncf']} | {peer['all_int8']:.6f} | "
              f"{peer['quantized_ops_all'] - peer['quantized_ops_answer']} | {peer['evaluations']} | "
              f"{peer['wall_s']:.1f} | {peer['peak_rss_mb']:.0f} | {peer['held_out']:.6f} ({threshold:.6f}) |")
    return "\n".join(x for x in (ours, theirs) if x)


if __name__ == "__main__":
    sys.exit(main())
