"""Peak memory of `layerdiff compare` under `--max-memory` budgets, and the chunks each needed: once
with the candidate saved beforehand (capture only), once building it (`ort-int8`: calibration, which
the budget bounds too, quantization and capture), with the percentile calibration that needs histograms.

    python scripts/bench_memory.py [MODEL INPUTS CANDIDATE]   # default: models/ppocr_det (get_models.py)

The budget bounds the captured tensors; the peak also holds the interpreter, ONNX Runtime, the models'
weights and ONNX Runtime's working memory, which the "no budget" row shows on top of all activations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import BIN, ROOT, measure  # noqa: E402


def main() -> int:
    if len(sys.argv) == 4:
        model, inputs, cand_kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    else:
        model, inputs, cand_kind = ROOT / "models/ppocr_det/model.onnx", ROOT / "models/ppocr_det/inputs", "ort-int8"
    if not model.is_file():
        raise SystemExit(f"{model} not found: run python scripts/get_models.py first")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"layerdiff compare peak memory by --max-memory ({model.parent.name}, {cand_kind})")
    for col in ("candidate", "--max-memory", "chunks", "wall s", "peak RSS MB", "final-output cosine"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / "cand.onnx"
        subprocess.run([str(BIN / "layerdiff"), "compare", str(model), "--candidate", cand_kind, "--inputs",
                        str(inputs), "--save-candidate", str(cand), "-q"], check=True)
        for label, spec, extra in (("saved file", str(cand), []),
                                   (f"{cand_kind}, percentile", cand_kind, ["--calibration", "percentile"])):
            for budget in (None, "1GiB", "512MiB", "256MiB", "128MiB"):
                out = Path(tmp) / "r.json"
                cmd = [str(BIN / "layerdiff"), "compare", str(model), "--candidate", spec, "--inputs", str(inputs),
                       "-q", "-o", str(out), *extra] + (["--max-memory", budget] if budget else [])
                wall, rss = measure(cmd)
                d = json.loads(out.read_text())
                table.add_row(label, budget or "none", str(d["capture"]["chunks"]), f"{wall:.1f}",
                              f"{rss / 1e6:.0f}", f"{d['outputs'][0]['cosine']}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
