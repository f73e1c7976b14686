"""Benchmark the TUI headless: time from start to the first rendered table, and to re-sort, for reports
of 100, 1,000 and 10,000 layers (synthetic: a chain of Conv/Relu/Add rows with random errors, the
report's own dataclasses). Prints a Markdown table. Targets: first render under 1 s and re-sort under
100 ms at 10,000 layers.

    python scripts/bench_tui.py [--sizes 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_report(n: int, seed: int = 0):
    """A report of `n` rows in a chain (each reads the previous one; every tenth an Add that also reads
    the row ten back), with errors that grow along it and a few bad rows; constants every 50th row."""
    import numpy as np

    from layerdiff.diffs import LayerDiff, TensorDiff
    from layerdiff.metrics import Aggregate, TensorMetrics
    from layerdiff.report import (
        CandidateInfo,
        CaptureInfo,
        Counts,
        InputsInfo,
        ModelInfo,
        OutputDiff,
        ReferenceInfo,
        Report,
        Thresholds,
    )

    rng = np.random.default_rng(seed)
    ops = ("Conv", "Relu", "Add", "MatMul", "Softmax", "LayerNormalization")
    layers = []
    acc = 0.0
    for i in range(n):
        kind = "constant" if i % 50 == 49 else "layer"
        op = "Constant" if kind == "constant" else ops[i % len(ops)]
        local = float(rng.exponential(1e-5)) * (100 if i % 997 == 13 else 1)
        acc = min(1.0, acc + local * 0.5)

        def metrics(gap):
            return TensorMetrics(1 - gap, gap * 10, gap * 2, gap ** 0.5, -10 * np.log10(max(gap, 1e-12)), 0, 0,
                                 5.0, 1024, 5.0, 1.0, 1.0)

        out = f"t{i}"
        loc = Aggregate(metrics(local), metrics(local), 4) if kind == "layer" else None
        tensor = TensorDiff(out, (1, 64, 8, 8), out, Aggregate(metrics(acc), metrics(acc), 4), loc)
        reads = (f"t{i - 1}",) if i else ("input",)
        if op == "Add" and i >= 10:
            reads += (f"t{i - 10}",)
        layers.append(LayerDiff(i, f"layer_{i:05d}", op, "int8" if i % 3 else "fp32", (tensor,),
                                diverges=local > 1e-2, onnx_nodes=(f"layer_{i:05d}",) if kind == "layer" else (),
                                kind=kind, inputs=reads if kind == "layer" else ()))
    last = layers[-1].outputs[0]
    return Report(
        model=ModelInfo("synthetic.onnx", "0" * 64, n, 17), inputs=InputsInfo("synthetic", 4, False),
        reference=ReferenceInfo("onnxruntime", "fp32", "CPUExecutionProvider"),
        candidate=CandidateInfo("ort-int8", "ort-int8", "onnxruntime", "CPUExecutionProvider", "ort"),
        capture=CaptureInfo("kernels", 1, None, 0.0, None, False, 4, "bench"),
        layers=tuple(layers), outputs=(OutputDiff(last.tensor, last.accumulated),), first_divergence=None,
        thresholds=Thresholds(0.99), counts=Counts(n, n, n, n, 0, 0, 0, 0, n))


async def _measure(report, repeat_sort: int) -> tuple[float, float]:
    from layerdiff.tui.app import LayerdiffApp
    from layerdiff.tui.table import LayerTable

    start = time.perf_counter()
    app = LayerdiffApp(report)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        table = app.query_one(LayerTable)
        assert table.rows
        first = time.perf_counter() - start
        sorts = []
        for column in ("local_cosine", "cosine", "name", "local_cosine")[:repeat_sort]:
            t = time.perf_counter()
            app.view = app.view.sorted_by(column)
            await pilot.pause()
            sorts.append(time.perf_counter() - t)
    return first, statistics.median(sorts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        report = synthetic_report(n)
        firsts, sorts = [], []
        for _ in range(args.repeat):
            first, sort = asyncio.run(_measure(report, 4))
            firsts.append(first)
            sorts.append(sort)
        rows.append(f"| {n} | {statistics.median(firsts) * 1000:.0f} | {statistics.median(sorts) * 1000:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("| layers | start to first rendered table, ms (median) | re-sort, ms (median) |")
    print("| --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
