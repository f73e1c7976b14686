"""The peer beside `layerdiff bisect`: Intel NNCF's `quantize_with_accuracy_control` on one ONNX model,
with the same samples, metric (the worst sample's float64 cosine over every float output) and
tolerance. Runs inside NNCF's own virtual environment (scripts/bench_bisect.py --peer nncf makes it),
so NNCF's pins on onnx and onnxruntime never touch layerdiff's. Prints one JSON object.

    python peer_nncf.py MODEL.onnx --calib DIR --search DIR --holdout DIR --min-cosine X --out OUT.onnx
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _samples(path: Path) -> list[dict[str, np.ndarray]]:
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    return [{k: v for k, v in np.load(f).items()} for f in files]


def _cosine(a: dict, b: dict) -> float:
    x = np.concatenate([np.asarray(a[k], np.float64).ravel() for k in sorted(a)])
    y = np.concatenate([np.asarray(b[k], np.float64).ravel() for k in sorted(a)])
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return 1.0 if nx == 0 and ny == 0 else float(x @ y / (nx * ny)) if nx and ny else 0.0


def _run(model_bytes: bytes, feeds: list[dict]) -> list[dict]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if o.type.startswith("tensor(float")]
    return [dict(zip(names, sess.run(names, f), strict=True)) for f in feeds]


def _quantized_ops(model) -> int:
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
               and any(producer.get(t) is not None and producer[t].op_type == "DequantizeLinear" for t in n.input))


def main() -> int:
    import nncf
    import onnx

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--calib", required=True)
    parser.add_argument("--search", required=True)
    parser.add_argument("--holdout", required=True)
    parser.add_argument("--min-cosine", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = onnx.load(args.model)
    blob = model.SerializeToString()
    calib, search, held = (_samples(Path(p)) for p in (args.calib, args.search, args.holdout))
    refs = {id(f): r for f, r in zip(search, _run(blob, search), strict=True)}
    calls = [0]

    def validate(candidate, data) -> float:
        calls[0] += 1
        feeds = list(data)
        got = _run(candidate.SerializeToString(), feeds)
        return min(_cosine(refs[id(f)], g) for f, g in zip(feeds, got, strict=True))

    start = time.perf_counter()
    all_int8 = nncf.quantize(model, nncf.Dataset(calib))
    result = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calib), nncf.Dataset(search), validation_fn=validate,
        max_drop=1.0 - args.min_cosine, drop_type=nncf.DropType.ABSOLUTE)
    wall = time.perf_counter() - start
    onnx.save(result, args.out)
    held_ref = _run(blob, held)
    held_got = _run(result.SerializeToString(), held)
    print(json.dumps({
        "all_int8": validate(all_int8, search),
        "answer": min(_cosine(refs[id(f)], g) for f, g in zip(search, _run(result.SerializeToString(), search),
                                                              strict=True)),
        "held_out": min(_cosine(r, g) for r, g in zip(held_ref, held_got, strict=True)),
        "quantized_ops_all": _quantized_ops(all_int8), "quantized_ops_answer": _quantized_ops(result),
        "evaluations": calls[0] - 1, "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "size_mb": Path(args.out).stat().st_size / 2**20, "nncf": nncf.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
