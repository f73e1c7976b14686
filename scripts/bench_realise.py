"""Benchmark what `layerdiff bisect` will do many times: realise a precision plan and evaluate it on a
prepared session, against `layerdiff.compare()` of the same plan (which prepares, calibrates, quantizes
and compares layer by layer from scratch). One process, one model, the same samples; prints a table.

    python scripts/get_models.py && python scripts/bench_realise.py                 # PP-OCRv4 detector
    python scripts/bench_realise.py --model fixtures/cnn.onnx --inputs fixtures/cnn_inputs

Times are the median of --repeat runs (realise + evaluate) and of --compare-repeat runs of compare().
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> int:
    import layerdiff
    from layerdiff import PrecisionPlan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = ROOT / "models" / "ppocr_det"
    parser.add_argument("--model", default=str(d / "model.onnx"))
    parser.add_argument("--inputs", default=str(d / "inputs"))
    parser.add_argument("--calib", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare-repeat", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"{args.model} not found: run python scripts/get_models.py first", file=sys.stderr)
        return 2
    calib = args.calib or (str(Path(args.model).parent / "calib") if (Path(args.model).parent / "calib").is_dir()
                           else args.inputs)

    t = time.perf_counter()
    session = layerdiff.prepare(args.model, inputs=args.inputs, calib=calib, reference_provider="cpu")
    first = session.realise(PrecisionPlan.uniform("int8"))
    session.evaluate(first)
    warm = time.perf_counter() - t
    names = sorted(session.backend("ort").quantizer.quantized)
    rng = np.random.default_rng(0)
    plans = [("all int8", PrecisionPlan.uniform("int8")),
             ("10 pins", PrecisionPlan.uniform("int8", pin_fp32=rng.choice(names, 10, replace=False))),
             (f"{len(names) // 2} pins", PrecisionPlan.uniform("int8", pin_fp32=rng.choice(names, len(names) // 2,
                                                                                           replace=False)))]
    print(f"model {args.model}: {len(session.model.layers)} nodes, {len(names)} quantized, {len(session.samples)} "
          f"sample(s); prepare + calibrate + quantize + first evaluation {warm:.2f} s (once per session)")
    print()
    print("| plan | realise s | evaluate s | realise + evaluate s | compare() s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, plan in plans:
        realise, cand = median_time(lambda p=plan: session.realise(p), args.repeat)
        evaluate, _ = median_time(lambda c=cand: session.evaluate(c), args.repeat)
        both, _ = median_time(lambda p=plan: session.evaluate(session.realise(p)), args.repeat)
        full, _ = median_time(lambda p=plan: layerdiff.compare(args.model, "ort-int8", plan=p, inputs=args.inputs,
                                                               calib=calib, reference_provider="cpu"),
                              args.compare_repeat)
        print(f"| {label} | {realise:.3f} | {evaluate:.3f} | {both:.3f} | {full:.2f} | {full / both:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
