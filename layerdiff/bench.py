"""Measuring what a plan costs (`layerdiff compare --bench N`, `apply --bench`): each model is timed in
its own plain session (nothing exposed, the deployed optimization level), in its own process
(`_benchworker`), so the peak memory is that model's; per-layer kernel times come from ONNX Runtime's
profiler on a second session of the same model (put on the report's rows by layertimes.py)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from layerdiff.cost import PlanCost
from layerdiff.errors import BackendError, BadInput
from layerdiff.inputs import Samples

DEFAULT_RUNS, DEFAULT_WARMUP = 50, 10
BENCH_ROUNDS = 3  # compare, apply and bisect --bench: the plans compared are timed in this many turns each
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
               base: float | None, provider: str, turns: Sequence[float] = ()) -> PlanCost:
    median = statistics.median(lat)
    first = samples.feeds[0] if samples.feeds else {}
    lead = next(iter(first.values()), None)
    batch = int(lead.shape[0]) if lead is not None and np.ndim(lead) >= 1 and lead.shape[0] > 0 else 1
    return PlanCost(latency_ms_median=median, latency_ms_p90=p90(lat), runs=len(lat), warmup=warmup,
                    throughput=batch * 1000.0 / median if median > 0 else None, batch=batch, size_bytes=size,
                    peak_rss_mb=peak, base_rss_mb=base, provider=provider, machine=machine(),
                    round_medians_ms=tuple(turns) if len(turns) > 1 else ())


@dataclass(frozen=True)
class Timing:
    cost: PlanCost
    node_ms: Mapping[str, float]  # per node of the graph ONNX Runtime ran: median kernel ms per run
    optimized: onnx.ModelProto | None  # that graph (to attribute node times)


@dataclass(frozen=True)
class Job:
    """One model to time: a path, or the bytes of a model layerdiff made, with the providers and the
    ONNX Runtime optimization level it is deployed with."""

    model: str | Path | bytes
    providers: Sequence[str]
    level: str = "all"
    what: str = "model"  # for messages: "FP32 model", "candidate", ...


def time_model(model: str | Path | bytes, samples: Samples, *, providers: Sequence[str], level: str = "all",
               runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, profile_runs: int = 0,
               what: str = "model") -> Timing:
    """Time `model` (a path, or the bytes of a model layerdiff made) in a process of its own."""
    return time_in_turns([Job(model, providers, level, what)], samples, runs=runs, warmup=warmup, rounds=1,
                         profile_runs=profile_runs)[0]


def time_in_turns(jobs: Sequence[Job], samples: Samples, *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP,
                  rounds: int = BENCH_ROUNDS, profile_runs: int = 0) -> list[Timing]:
    """Models timed in turns, for comparing them: `rounds` rounds, each timing every model in a process
    of its own (warm-up, then its share of `runs`), the order turning each round, so that a change of
    load falls on all of them; each model's runs of every round pooled, and each round's median kept
    (PlanCost.round_medians_ms, to tell how steady the machine was). Per-node kernel times (ONNX
    Runtime's profiler, `profile_runs` runs of a second session) are taken in the first round. (Not one
    process holding every session: two ONNX Runtime sessions' thread pools in one process slow each
    other down, 41 ms against 25 ms a run for the PP-OCRv4 recogniser here.)"""
    check_runs(runs, warmup)
    rounds = max(1, min(rounds, runs))
    share = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    lat: list[list[float]] = [[] for _ in jobs]
    turns: list[list[float]] = [[] for _ in jobs]
    peak: list[float | None] = [None for _ in jobs]
    base: list[float | None] = [None for _ in jobs]
    provider = ["" for _ in jobs]
    node_ms: list[dict[str, float]] = [{} for _ in jobs]
    optimized: list[onnx.ModelProto | None] = [None for _ in jobs]
    with _scratch() as tmp:
        paths, sizes = [], []
        for i, job in enumerate(jobs):
            if isinstance(job.model, bytes):
                (Path(tmp) / f"model{i}.onnx").write_bytes(job.model)
                paths.append(Path(tmp) / f"model{i}.onnx")
                sizes.append(len(job.model))
            else:
                paths.append(Path(job.model))
                sizes.append(model_size(job.model))
        for r, n in enumerate(share):
            prof = profile_runs if r == 0 else 0
            for i in [(r + d) % len(jobs) for d in range(len(jobs))]:
                with tempfile.TemporaryDirectory(prefix="job-", dir=tmp) as job_dir:
                    jd = Path(job_dir)
                    result = _run_job(jd, samples, {"model": str(paths[i]), "providers": list(jobs[i].providers),
                                                    "level": jobs[i].level, "warmup": warmup, "runs": n,
                                                    "profile_runs": prof}, jobs[i].what)
                    if prof and (jd / "optimized.onnx").is_file():
                        optimized[i] = onnx.load(str(jd / "optimized.onnx"), load_external_data=False)
                lat[i] += result["latencies_ms"]
                turns[i].append(statistics.median(result["latencies_ms"]))
                peak[i] = max(peak[i] or 0.0, result["peak_rss_mb"])
                base[i] = result["base_rss_mb"] if base[i] is None else min(base[i], result["base_rss_mb"])
                provider[i] = result["provider"]
                if prof:
                    node_ms[i] = {name: statistics.median(t) for name, t in result.get("node_ms", {}).items() if t}
    return [Timing(_plan_cost(lat[i], samples, warmup, sizes[i], peak[i], base[i], provider[i], turns[i]),
                   node_ms[i], optimized[i]) for i in range(len(jobs))]


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    """A scratch directory for the timing workers' files, removed on every exit path: here when the block
    ends, and by a janitor process (`_benchworker --janitor`) when this process is killed outright."""
    tmp = tempfile.mkdtemp(prefix="layerdiff-bench-")
    janitor = subprocess.Popen([sys.executable, "-m", "layerdiff._benchworker", "--janitor", tmp],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        janitor.stdin.close()  # type: ignore[union-attr]
        janitor.wait()


def _run_job(job: Path, samples: Samples, spec: dict, what: str) -> dict:
    """Run the timing worker on `spec` (its job.json) with the samples, in directory `job`."""
    arrays = {f"{k}/{name}": np.asarray(v) for k, feed in enumerate(samples.feeds) for name, v in feed.items()}
    np.savez(job / "feeds.npz", **arrays)
    (job / "job.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "layerdiff._benchworker", str(job), str(os.getpid())],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), f"exit {proc.returncode}")
        raise BackendError(f"timing the {what} failed: {last}")
    return json.loads((job / "result.json").read_text())


def race(models: Sequence[bytes], samples: Samples, *, providers: Sequence[str], level: str = "all",
         runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, rounds: int = RACE_ROUNDS) -> list[PlanCost]:
    """Several models (bytes of models layerdiff made, one provider and level) timed in turns
    (time_in_turns), for choosing between plans."""
    timed = time_in_turns([Job(blob, providers, level, "plans") for blob in models], samples, runs=runs,
                          warmup=warmup, rounds=rounds)
    return [t.cost for t in timed]


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
    if not _ort_timed(candidate):
        return Timing(unavailable(f"a {candidate.kind} candidate has no model layerdiff can time"), {}, None)
    return time_model(serialize(candidate.model), session.samples, **_ort_settings(candidate), runs=runs,
                      warmup=warmup, profile_runs=profile_runs, what="candidate")


def _ort_timed(candidate) -> bool:
    """Whether the candidate is timed as an ONNX Runtime model (its own, with its runner's settings)."""
    return (candidate.backend != "imported" and not hasattr(candidate.runner, "plain_engine")
            and candidate.model is not None and hasattr(candidate.runner, "providers"))


def _ort_settings(candidate) -> dict:
    """The providers and optimization level the candidate's own ONNX Runtime runner uses."""
    return {"providers": candidate.runner.providers or ["CPUExecutionProvider"], "level": candidate.runner.level}


def time_plans(session, candidates, *, runs: int, warmup: int, profile_runs: int = 0,
               rounds: int = BENCH_ROUNDS) -> list[Timing]:
    """The FP32 model (a None in `candidates`) and candidates, timed as deployed: those ONNX Runtime runs
    in turns (time_in_turns, each with its own providers and level); a TensorRT engine, or imported
    results (nothing to run, said in the cost), as time_candidate times them."""
    from layerdiff.graph import serialize

    jobs: dict[int, Job] = {}
    out: dict[int, Timing] = {}
    for i, c in enumerate(candidates):
        if c is None:
            jobs[i] = Job(session.model.path, session.reference_providers, "all", "FP32 model")
        elif _ort_timed(c):
            jobs[i] = Job(serialize(c.model), **_ort_settings(c), what="candidate")
        else:
            out[i] = time_candidate(session, c, runs=runs, warmup=warmup, profile_runs=profile_runs)
    timed = time_in_turns(list(jobs.values()), session.samples, runs=runs, warmup=warmup, rounds=rounds,
                          profile_runs=profile_runs) if jobs else []
    out.update(zip(jobs, timed, strict=True))
    return [out[i] for i in range(len(candidates))]


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
        progress(f"timing the FP32 model and the candidate in turns ({warmup} warm-up + {runs} runs each)", 0, 1)
    ref, cand = time_plans(session, [None, candidate], runs=runs, warmup=warmup, profile_runs=prof)
    if progress:
        progress("timed", 1, 1)
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

    fp32, reduced, recipe = (t.cost for t in time_plans(session, [None, reduced_candidate, recipe_candidate],
                                                         runs=runs, warmup=warmup))
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
