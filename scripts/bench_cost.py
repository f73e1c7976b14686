"""What each precision plan costs beside what it loses: FP32, INT8, FP16 and the bisect recipe of the
same model, each with its accuracy (worst-sample cosine of the final outputs against FP32), latency
(median and p90 of --runs after --warmup, timed by the worker `layerdiff compare --bench` uses: a
plain session in a process of its own; the plans of one model in --rounds turns, as bisect --objective
time times its finalists, so that the load of a shared machine falls on all of them), size on disk and peak memory. Prints a Markdown table.

    python scripts/get_models.py && python scripts/bench_cost.py
    python scripts/bench_cost.py --cases cnn --runs 20

The bisect recipes are `bisect`'s auto answers for ort-int8 at the tolerance halfway between the
all-INT8 cosine and 1 (as scripts/bench_bisect.py), with --objective pins and --objective time, realised
and timed like the others; "kept" is the share of the all-INT8 plan's gain over FP32 the recipe keeps. FP16 on a CPU runs
ONNX Runtime's FP16 model, which inserts casts where the CPU provider has no FP16 kernel: its latency
is the CPU's, not a GPU's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))
from bench_bisect import CASES as BISECT_CASES  # noqa: E402  (the same models, inputs and calibration)

CASES = {k: v for k, v in BISECT_CASES.items() if k != "ppocr_det"}  # the detector: a minute per plan here


def worst_cosine(session, cand) -> float:
    from layerdiff.target import Target

    target = Target.parse("cosine", 0.0, (), session.model.outputs)
    ref = session.reference_outputs()
    got = session.outputs_on(cand)
    return target.worst([target.score(r, g) for r, g in zip(ref, got, strict=True)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of timing every plan in turn (load changes on a "
                    "shared machine fall on all plans)")
    args = ap.parse_args(argv)

    import layerdiff
    from layerdiff.bench import machine, model_size, race
    from layerdiff.bisect import bisect
    from layerdiff.cost import RecipeCost
    from layerdiff.graph import serialize
    from layerdiff.plan import PrecisionPlan
    from layerdiff.target import Target

    print(f"median and p90 of {args.runs} runs after {args.warmup} warm-up, in {args.rounds} rounds that time every "
          f"plan of a model in turn, each in a process of its own; {machine()}; ONNX Runtime CPU\n")
    print("| model | plan | pins | cosine (worst sample) | ms median | ms p90 | speed-up | INT8 speed-up kept | "
          "size MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        model, inputs, calib, label = CASES[case]
        if not (ROOT / model).is_file():
            print(f"| {label} | not here: run scripts/get_models.py | | | | | | | | |")
            continue
        session = layerdiff.prepare(ROOT / model, inputs=ROOT / inputs if inputs else None,
                                    calib=ROOT / calib if calib else None)
        int8 = session.candidate("ort-int8")
        plans = [("FP32", 0, 1.0, (ROOT / model).read_bytes()), ("INT8", 0, worst_cosine(session, int8), int8)]
        fp16 = session.candidate("ort-fp16")
        plans.append(("FP16", 0, worst_cosine(session, fp16), fp16))
        target = Target.parse("cosine", (plans[1][2] + 1.0) / 2, (), session.model.outputs)
        for objective in ("pins", "time"):
            result = bisect(session, "ort-int8", target, evidence=False, objective=objective)
            pins = frozenset(p.node for p in result.pins)
            recipe = session.candidate("ort-int8", PrecisionPlan.uniform("int8", pins))
            plans.append((f"INT8 + recipe, objective {objective} ({result.status})", len(pins),
                          worst_cosine(session, recipe), recipe))
        blobs = [c if isinstance(c, bytes) else serialize(c.model) for _, _, _, c in plans]
        costs = race(blobs, session.samples, providers=["CPUExecutionProvider"], runs=args.runs, warmup=args.warmup,
                     rounds=args.rounds)
        costs[0] = replace(costs[0], size_bytes=model_size(ROOT / model))
        ref, int8_cost = costs[0], costs[1]
        for (name, n, cos, _), c in zip(plans, costs, strict=True):
            speed = ref.latency_ms_median / c.latency_ms_median
            kept = RecipeCost("int8", ref, int8_cost, c).kept if "recipe" in name else None
            kept_text = "" if "recipe" not in name else ("no gain" if kept is None else f"{kept:.0%}")
            print(f"| {label} | {name} | {n} | {cos:.6f} | {c.latency_ms_median:.3f} | {c.latency_ms_p90:.3f} | "
                  f"{speed:.2f}x | {kept_text} | {c.size_bytes / 2**20:.3f} | {c.peak_rss_mb:.0f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
