"""Which calibration method fits the data: the all-INT8 candidate's worst-sample cosine of every float
output, per model, placement and method (minmax, percentile, entropy), on the search inputs and on the
held-out samples get_models.py writes. Prints a Markdown table.

    python scripts/get_models.py && python scripts/bench_calibration.py [--int8-placement trt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))
from bench_bisect import CASES  # noqa: E402  (one list of models for the benchmarks)

METHODS = ("minmax", "percentile", "entropy")


def main() -> int:
    import layerdiff
    from layerdiff.inputs import load_samples
    from layerdiff.target import Target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cnn,ppocr_cls,ppocr_rec,ppocr_det")
    parser.add_argument("--int8-placement", default="trt")
    args = parser.parse_args()
    print("| model | placement | method | all-INT8 cosine, inputs | held out | calibrate and quantize s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in args.cases.split(","):
        model, inputs, calib, _ = CASES[case]
        holdout = str(Path(model).parent / "holdout")  # (get_models.py writes one beside each real model)
        if not (ROOT / model).is_file():
            print(f"skipping {case}: {model} not found (run python scripts/get_models.py)", file=sys.stderr)
            continue
        for method in METHODS:
            session = layerdiff.prepare(ROOT / model, inputs=ROOT / inputs if inputs else None,
                                        calib=ROOT / calib if calib else None,
                                        calibration=method, reference_provider="cpu",
                                        int8_placement=args.int8_placement)
            target = Target.parse("cosine", 0.0, [], session.model.outputs)
            t = time.perf_counter()
            cand = session.candidate("ort-int8")
            seconds = time.perf_counter() - t
            worst = target.worst([target.score(r, g) for r, g in
                                  zip(session.outputs_on(None), session.outputs_on(cand), strict=True)])
            held = "-"
            if holdout and (ROOT / holdout).is_dir():
                samples = load_samples(ROOT / holdout, session.model.inputs, {}, 1)
                held = f"{target.worst([target.score(r, g) for r, g in zip(session.outputs_on(None, samples), session.outputs_on(cand, samples), strict=True)]):.6f}"
            print(f"| {case} | {args.int8_placement} | {method} | {worst:.6f} | {held} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
