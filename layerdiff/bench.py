"""Measuring what a plan costs (`layerdiff compare --bench N`, `apply --bench`): each model is timed in
its own plain session (nothing exposed, the deployed optimization level), in its own process
(`_benchworker`), so the peak memory is that model's; per-layer kernel times come from ONNX Runtime's
profiler on a second session of the same model (put on the report's rows by layertimes.py)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from layerdiff.cost import PlanCost
from layerdiff.errors import BackendError, BadInput
from layerdiff.inputs import Samples

DEFAULT_RUNS, DEFAULT_WARMUP = 50, 10
RACE_ROUNDS = 2  # bisect --objective time: its finalists are timed in this many turns each
PROFILE_RUNS = 20  # per-layer times: the median of this many profiled runs (or of --bench N, if fewer)


def check_runs(runs: int | None, warmup: int = 0) -> None:
    """--bench N and --warmup W as every command takes them: N at least 1, W at least 0 (BadInput)."""
    if runs is not None and runs < 1:
        raise BadInput(f"--bench takes the number of timed runs, at least 1 (not {runs}); --bench alone runs 50")
    if warmup < 0:
        raise BadInput(f"--warmup is 0 or more (not {warmup})")


def machine() -> str:
    """The machine timings were taken on, in words: architecture, CPU model, cores this process may use."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} {model}, {cores} cores"


def model_size(path: str | Path) -> int:
    """Bytes on disk of an ONNX model and the external data files it names."""
    path = Path(path)
    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    files = {e.value for init in model.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL
             for e in init.external_data if e.key == "location"}
    return size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def p90(values: Sequence[float]) -> float:
    """The 90th percentile by the nearest-rank rule (a value that was measured, never interpolated)."""
    ordered = sorted(values)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]


def _plan_cost(lat: Sequence[float], samples: Samples, warmup: int, size: int | None, peak: float | None,
               base: float | None, provider: str) -> PlanCost:
    median = statistics.median(lat)
    first = samples.feeds[0] if samples.feeds else {}
    lead = next(iter(first.values()), None)
    batch = int(lead.shape[0]) if lead is not None and np.ndim(lead) >= 1 and lead.shape[0] > 0 else 1
    return PlanCost(latency_ms_median=median, latency_ms_p90=p90(lat), runs=len(lat), warmup=warmup,
                    throughput=batch * 1000.0 / median if median > 0 else None, batch=batch, size_bytes=size,
                    peak_rss_mb=peak, base_rss_mb=base, provider=provider, machine=machine())


@dataclass(frozen=True)
class Timing:
    cost: PlanCost
    node_ms: Mapping[str, float]  # per node of the graph ONNX Runtime ran: median kernel ms per run
    optimized: onnx.ModelProto | None  # that graph (to attribute node times)


def time_model(model: str | Path | bytes, samples: Samples, *, providers: Sequence[str], level: str = "all",
               runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, profile_runs: int = 0,
               what: str = "model") -> Timing:
    """Time `model` (a path, or the bytes of a model layerdiff made) in a process of its own."""
    check_runs(runs, warmup)
    with tempfile.TemporaryDirectory(prefix="layerdiff-bench-") as tmp:
        job = Path(tmp)
        if isinstance(model, bytes):
            (job / "model.onnx").write_bytes(model)
            path, size = job / "model.onnx", len(model)
        else:
            path, size = Path(model), model_size(model)
        result = _run_job(job, samples, {"model": str(path), "providers": list(providers), "level": level,
                                         "warmup": warmup, "runs": runs, "profile_runs": profile_runs}, what)
        optimized = onnx.load(str(job / "optimized.onnx"), load_external_data=False) \
            if (job / "optimized.onnx").is_file() else None
    lat = result["latencies_ms"]
    cost = _plan_cost(lat, samples, warmup, size, result["peak_rss_mb"], result["base_rss_mb"], result["provider"])
    node_ms = {name: statistics.median(t) for name, t in result.get("node_ms", {}).items() if t}
    return Timing(cost, node_ms, optimized)


def _run_job(job: Path, samples: Samples, spec: dict, what: str) -> dict:
    """Run the timing worker on `spec` (its job.json) with the samples, in directory `job`."""
    arrays = {f"{k}/{name}": np.asarray(v) for k, feed in enumerate(samples.feeds) for name, v in feed.items()}
    np.savez(job / "feeds.npz", **arrays)
    (job / "job.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "layerdiff._benchworker", str(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), f"exit {proc.returncode}")
        raise BackendError(f"timing the {what} failed: {last}")
    return json.loads((job / "result.json").read_text())


def race(models: Sequence[bytes], samples: Samples, *, providers: Sequence[str], level: str = "all",
         runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, rounds: int = RACE_ROUNDS) -> list[PlanCost]:
    """Several models (bytes of models layerdiff made) timed in turn, for choosing between plans:
    `rounds` rounds, each timing every model in a process of its own (as compare --bench does) for its
    share of `runs`, the order turning each round, so that a change of load falls on all of them; each
    model's runs of every round pooled. (Not one process holding every session: two ONNX Runtime
    sessions' thread pools in one process slow each other down, 41 ms against 25 ms a run for the
    PP-OCRv4 recogniser here.)"""
    check_runs(runs, warmup)
    share = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    lat: list[list[float]] = [[] for _ in models]
    peak: list[float] = [0.0 for _ in models]
    provider = ""
    with tempfile.TemporaryDirectory(prefix="layerdiff-race-") as tmp:
        paths = []
        for i, blob in enumerate(models):
            (Path(tmp) / f"model{i}.onnx").write_bytes(blob)
            paths.append(Path(tmp) / f"model{i}.onnx")
        for r, n in enumerate(share):
            if n == 0:
                continue
            for i in [(r + d) % len(models) for d in range(len(models))]:
                with tempfile.TemporaryDirectory(prefix="layerdiff-bench-", dir=tmp) as job:
                    result = _run_job(Path(job), samples, {"model": str(paths[i]), "providers": list(providers),
                                                           "level": level, "warmup": warmup, "runs": n,
                                                           "profile_runs": 0}, "plans")
                lat[i] += result["latencies_ms"]
                peak[i] = max(peak[i], result["peak_rss_mb"])
                provider = result["provider"]
    return [_plan_cost(lat[i], samples, warmup, len(blob), peak[i], None, provider) for i, blob in enumerate(models)]


def race_candidates(session, candidates, *, runs: int, warmup: int) -> list[PlanCost]:
    """Candidates of one spec (the same providers and optimization level) timed in turns (race)."""
    from layerdiff.graph import serialize

    return race([serialize(c.model) for c in candidates], session.samples, **_ort_settings(candidates[0]), runs=runs,
                warmup=warmup)


# -- a comparison's cost -----------------------------------------------------------------------------


def _time_trt(engine, samples: Samples, runs: int, warmup: int) -> PlanCost:
    """A TensorRT engine timed in this process with Polygraphy's TrtRunner (host-device copies
    included, as `runner.infer` does them). Never run here: no GPU, no TensorRT (README)."""
    import time

    from polygraphy.backend.trt import TrtRunner

    lat = []
    with TrtRunner(engine) as runner:
        for i in range(warmup):
            runner.infer(samples.feeds[i % len(samples.feeds)])
        for i in range(runs):
            start = time.perf_counter_ns()
            runner.infer(samples.feeds[i % len(samples.feeds)])
            lat.append((time.perf_counter_ns() - start) / 1e6)
    return _plan_cost(lat, samples, warmup, len(bytes(engine.serialize())), None, None, "TensorRT")


def unavailable(why: str) -> PlanCost:
    return PlanCost(None, None, 0, 0, None, 1, None, None, None, "", machine(), unavailable=why)


def time_candidate(session, candidate, *, runs: int, warmup: int, profile_runs: int = 0) -> Timing:
    """The candidate as deployed, timed: its ONNX model in ONNX Runtime with the runner's providers and
    optimization level, or its TensorRT engine; imported results have nothing to run (said in the cost)."""
    from layerdiff.graph import serialize

    runner = candidate.runner
    if candidate.backend == "imported":
        return Timing(unavailable("imported results: there is no candidate here to run"), {}, None)
    if hasattr(runner, "plain_engine"):
        return Timing(_time_trt(runner.plain_engine, session.samples, runs, warmup), {}, None)
    if candidate.model is None or not hasattr(runner, "providers"):
        return Timing(unavailable(f"a {candidate.kind} candidate has no model layerdiff can time"), {}, None)
    return time_model(serialize(candidate.model), session.samples, **_ort_settings(candidate), runs=runs,
                      warmup=warmup, profile_runs=profile_runs, what="candidate")


def _ort_settings(candidate) -> dict:
    """The providers and optimization level the candidate's own ONNX Runtime runner uses."""
    return {"providers": candidate.runner.providers or ["CPUExecutionProvider"], "level": candidate.runner.level}


def time_reference(session, *, runs: int, warmup: int, profile_runs: int = 0) -> Timing:
    return time_model(session.model.path, session.samples, providers=session.reference_providers, level="all",
                      runs=runs, warmup=warmup, profile_runs=profile_runs, what="FP32 model")


def measure(session, candidate, report, *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP,
            profile: bool = True, progress=None):
    """`report` with its cost: the FP32 model and the candidate timed (`runs` after `warmup`), and each
    row's `time_ms` (the candidate's kernels, ONNX Runtime's profiler) with `ref_time_ms` (the FP32
    model's kernels on the same rows)."""
    from dataclasses import replace

    from layerdiff.cost import Cost
    from layerdiff.layertimes import layer_times, with_times

    prof = min(PROFILE_RUNS, runs) if profile else 0
    if progress:
        progress(f"timing the FP32 model ({warmup} warm-up + {runs} runs)", 0, 2)
    ref = time_reference(session, runs=runs, warmup=warmup, profile_runs=prof)
    if progress:
        progress(f"timing the candidate ({warmup} warm-up + {runs} runs)", 1, 2)
    cand = time_candidate(session, candidate, runs=runs, warmup=warmup, profile_runs=prof)
    if progress:
        progress("timed", 2, 2)
    ref_times, ref_lt = layer_times(ref.node_ms, ref.optimized, report.layers, session.model.proto, runs=prof)
    cand_times, layer_info = {}, None
    if cand.node_ms:
        cand_times, layer_info = layer_times(cand.node_ms, cand.optimized, report.layers, candidate.model, runs=prof)
        layer_info = replace(layer_info, reference_total_ms=ref_lt.total_ms)
    layers = with_times(report.layers, cand_times, ref_times, layer_info.total_ms if layer_info else None)
    return replace(report, layers=layers, cost=Cost(ref.cost, cand.cost, layer_info))


def candidate_size(candidate) -> int | None:
    """Bytes of the candidate as deployed: its ONNX model serialized, or its engine."""
    from layerdiff.graph import serialize

    engine = getattr(candidate.runner, "plain_engine", None)
    if engine is not None:
        return len(bytes(engine.serialize()))
    return len(serialize(candidate.model)) if candidate.model is not None else None


def time_recipe(session, recipe_candidate, reduced_candidate, runs: int, warmup: int):
    """The recipe's cost beside the FP32 and the all-reduced plan's, each timed as compare --bench
    times (bisect --bench, apply --bench)."""
    from layerdiff.cost import RecipeCost

    fp32 = time_reference(session, runs=runs, warmup=warmup).cost
    reduced = time_candidate(session, reduced_candidate, runs=runs, warmup=warmup).cost
    recipe = time_candidate(session, recipe_candidate, runs=runs, warmup=warmup).cost
    precision = reduced_candidate.plan.default if reduced_candidate.plan is not None else "reduced"
    return RecipeCost(precision, fp32, reduced, recipe)


def pin_costs(session, reduced_candidate, *, runs: int = PROFILE_RUNS, warmup: int = 3, progress=None):
    """What keeping each node of the model in FP32 is estimated to cost (bisect --objective time): each
    node's kernel time in the FP32 model less its kernel time in the all-reduced plan (its Q/DQ and
    Casts included), both from ONNX Runtime's profiler on this machine."""
    from layerdiff.cost import PinCosts
    from layerdiff.layertimes import node_times

    if progress:
        progress(f"profiling the FP32 model and the all-reduced plan ({runs} runs each) for --objective time", 0, 2)
    ref = time_reference(session, runs=runs, warmup=warmup, profile_runs=runs)
    if progress:
        progress("profiling the all-reduced plan", 1, 2)
    cand = time_candidate(session, reduced_candidate, runs=runs, warmup=warmup, profile_runs=runs)
    if progress:
        progress("profiled", 2, 2)
    if not cand.node_ms or not ref.node_ms:
        raise BadInput("--objective time needs per-node times from ONNX Runtime's profiler, and this candidate "
                       "gave none: use --objective pins")
    names = [n.name for n in session.model.proto.graph.node if n.name]
    fp32 = node_times(ref.node_ms, ref.optimized, session.model.proto, names)
    reduced = node_times(cand.node_ms, cand.optimized, reduced_candidate.model, names)
    added = {n: fp32.get(n, 0.0) - reduced.get(n, 0.0) for n in set(fp32) | set(reduced)}
    return PinCosts(added, sum(ref.node_ms.values()), sum(cand.node_ms.values()), runs)
