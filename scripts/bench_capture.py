"""How well the capture reads the deployed graph, per model: rows, rows with a tensor said not to exist,
the largest row (ONNX compute nodes in one row), how many tensors the check of those claims against the
deployed graph's values found held after all and read by value (backends/ortclaims.py), whether the capture equals a plain session, the first
divergent row and the strongest amplifier. On the fixtures that trigger ONNX Runtime's rewrites at level
`all`, and on the real models scripts/get_models.py fetches (skipped where not fetched).

    python scripts/bench_capture.py [--candidate ort-int8] [--ort-optimization all]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import layerdiff  # noqa: E402
from layerdiff.report import amplifiers  # noqa: E402

FIXTURES = ROOT / "fixtures"
MODELS = ROOT / "models"


def cases(candidate: str):
    """(label, model, candidate spec, inputs) for each model the table covers."""
    yield "cnn", FIXTURES / "cnn.onnx", candidate, FIXTURES / "cnn_inputs"
    yield "transformer", FIXTURES / "transformer.onnx", candidate, None
    yield "qlinear_chain (QDQ file)", FIXTURES / "qlinear_chain.onnx", str(FIXTURES / "qlinear_chain_qdq.onnx"), \
        FIXTURES / "cnn_inputs"
    yield "lstm_state", FIXTURES / "lstm_state.onnx", candidate, None
    yield "cse_twins", FIXTURES / "cse_twins.onnx", candidate, None
    yield "split_heads", FIXTURES / "split_heads.onnx", candidate, None
    yield "nhwc_pool", FIXTURES / "nhwc_pool.onnx", candidate, None
    for name in ("ppocr_cls", "ppocr_rec", "ppocr_det"):
        if (MODELS / name / "model.onnx").is_file():
            yield name, MODELS / name / "model.onnx", candidate, MODELS / name / "inputs"


def measure(model, spec, inputs, level: str) -> dict:
    report = layerdiff.compare(model, spec, inputs=inputs, reference_provider="cpu", optimization=level)
    layers = [lay for lay in report.layers if lay.kind == "layer"]
    unread = [lay for lay in layers if any(not o.paired and "no value of it exists" in o.unpaired_reason
                                           for o in lay.outputs)]
    by_value = sum(1 for w in report.warnings if "read by their values" in w and w.split()[0].isdigit()
                   for _ in range(int(w.split()[0])))
    largest = max(layers, key=lambda lay: len(lay.onnx_nodes))
    amp = amplifiers(report.layers, n=1)
    fd = report.first_divergence
    return {"rows": len(layers), "unread": len(unread), "by_value": by_value, "largest": len(largest.onnx_nodes),
            "exposed": report.capture.exposed_vs_plain_max_abs,
            "first": fd.layer if fd is not None else "none",
            "amp": f"{amp[0].name} x{amp[0].amplification:.3g}" if amp else "none"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="ort-int8")
    parser.add_argument("--ort-optimization", default="all")
    args = parser.parse_args()
    print(f"candidate {args.candidate}, ONNX Runtime level {args.ort_optimization}")
    print("| model | layer rows | rows with a tensor said not to exist | largest row (nodes) | "
          "read by value | capture vs plain | first divergent | top amplifier |")
    print("|---|---|---|---|---|---|---|---|")
    for label, model, spec, inputs in cases(args.candidate):
        m = measure(model, spec, inputs, args.ort_optimization)
        exposed = "n/a" if m["exposed"] is None else f"{m['exposed']:.3g}"
        print(f"| {label} | {m['rows']} | {m['unread']} | {m['largest']} | {m['by_value']} | {exposed} | {m['first']} | {m['amp']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
