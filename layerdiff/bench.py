"""Measuring what a plan costs (`layerdiff compare --bench N`, bisect and apply): each model is timed in
its own plain session (nothing exposed, the deployed optimization level), in its own process
(`_benchworker`), so the peak memory is that model's; per-layer kernel times come from ONNX Runtime's
profiler on a second session of the same model, attributed to the report's rows through the graph ONNX
Runtime really ran (fused kernels keep their first node's name; kernels it inserted, a layout reorder
or a duplicated DequantizeLinear, are named for the node they serve)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from layerdiff.cost import LayerTimes, PlanCost
from layerdiff.errors import BackendError, BadInput
from layerdiff.inputs import Samples

DEFAULT_RUNS, DEFAULT_WARMUP = 50, 10
PROFILE_RUNS = 20  # per-layer times: the median of this many profiled runs (or of --bench N, if fewer)


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


@dataclass(frozen=True)
class Timing:
    cost: PlanCost
    node_ms: Mapping[str, float]  # per node of the graph ONNX Runtime ran: median kernel ms per run
    optimized: onnx.ModelProto | None  # that graph (to attribute node times)


def time_model(model: str | Path | bytes, samples: Samples, *, providers: Sequence[str], level: str = "all",
               runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, profile_runs: int = 0,
               what: str = "model") -> Timing:
    """Time `model` (a path, or the bytes of a model layerdiff made) in a process of its own."""
    if runs < 1:
        raise BadInput(f"--bench takes the number of timed runs, at least 1 (not {runs})")
    with tempfile.TemporaryDirectory(prefix="layerdiff-bench-") as tmp:
        job = Path(tmp)
        if isinstance(model, bytes):
            (job / "model.onnx").write_bytes(model)
            path, size = job / "model.onnx", len(model)
        else:
            path, size = Path(model), model_size(model)
        arrays = {f"{k}/{name}": np.asarray(v) for k, feed in enumerate(samples.feeds) for name, v in feed.items()}
        np.savez(job / "feeds.npz", **arrays)
        (job / "job.json").write_text(json.dumps({"model": str(path), "providers": list(providers), "level": level,
                                                  "warmup": warmup, "runs": runs, "profile_runs": profile_runs}))
        proc = subprocess.run([sys.executable, "-m", "layerdiff._benchworker", str(job)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), f"exit {proc.returncode}")
            raise BackendError(f"timing the {what} failed: {last}")
        result = json.loads((job / "result.json").read_text())
        optimized = onnx.load(str(job / "optimized.onnx"), load_external_data=False) \
            if (job / "optimized.onnx").is_file() else None
    lat = result["latencies_ms"]
    median = statistics.median(lat)
    first = samples.feeds[0] if samples.feeds else {}
    lead = next(iter(first.values()), None)
    batch = int(lead.shape[0]) if lead is not None and np.ndim(lead) >= 1 and lead.shape[0] > 0 else 1
    cost = PlanCost(latency_ms_median=median, latency_ms_p90=p90(lat), runs=runs, warmup=warmup,
                    throughput=batch * 1000.0 / median if median > 0 else None, batch=batch, size_bytes=size,
                    peak_rss_mb=result["peak_rss_mb"], base_rss_mb=result["base_rss_mb"],
                    provider=result["provider"], machine=machine())
    node_ms = {name: statistics.median(t) for name, t in result.get("node_ms", {}).items() if t}
    return Timing(cost, node_ms, optimized)


# -- attributing kernel times to rows ------------------------------------------------------------------


def row_of_nodes(rows, model: onnx.ModelProto) -> dict[str, str]:
    """{node of `model`: the report row it belongs to}. A row's ONNX nodes are its own; a conversion
    row is named by its QuantizeLinear, and the DequantizeLinear reading it rounds with it; any other
    node (a weight's DequantizeLinear, a Cast an FP16 converter added) belongs to the nearest row it
    feeds, else to the nearest row feeding it."""
    owner: dict[str, str] = {}
    for row in rows:
        if row.kind == "constant":
            continue
        for n in row.onnx_nodes:
            owner.setdefault(n, row.name)
        if row.kind == "conversion":
            owner.setdefault(row.name, row.name)
    nodes = [n for n in model.graph.node if n.name]
    producer = {o: n.name for n in nodes for o in n.output}
    for n in nodes:  # the DequantizeLinear of a Q/DQ pair
        if n.name not in owner and n.op_type == "DequantizeLinear" and n.input:
            q = producer.get(n.input[0])
            if q in owner and q in {r.name for r in rows if r.kind == "conversion"}:
                owner[n.name] = owner[q]
    return _nearest(nodes, owner)


def _nearest(nodes: Sequence[onnx.NodeProto], owner: dict[str, str]) -> dict[str, str]:
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n.name)
        for t in n.output:
            producer[t] = n.name
    by_name = {n.name: n for n in nodes}
    out = dict(owner)
    for n in nodes:
        if n.name in out:
            continue
        for step in (lambda m: [c for t in m.output for c in consumers.get(t, ())],
                     lambda m: [producer[t] for t in m.input if t in producer]):
            seen, queue = {n.name}, deque(step(n))
            found = None
            while queue and found is None:
                name = queue.popleft()
                if name in seen:
                    continue
                seen.add(name)
                if name in owner:
                    found = owner[name]
                elif name in by_name:
                    queue.extend(step(by_name[name]))
            if found is not None:
                out[n.name] = found
                break
    return out


def attribute(node_ms: Mapping[str, float], optimized: onnx.ModelProto | None, model: onnx.ModelProto,
              owner: Mapping[str, str]) -> tuple[dict[str, float], float]:
    """({row: ms}, ms no row could be named for) from per-node kernel times of the graph ONNX Runtime
    ran for `model`. A kernel is named for a node of `model` when it kept that node's name, when it was
    added for one ("X/duplicated"), or when it computes one of that node's output tensors (by name, or
    as "TENSOR_nchwc", the NCHWc layout pass's naming); else it is attributed through the graph to the
    nearest row it feeds or reads. A kernel that fused several rows counts in the row it is named for."""
    produced = {t: n for n in model.graph.node for t in n.output}
    known = dict(owner)

    def head(node: onnx.NodeProto, op: str) -> str:
        """The node a fused kernel of type `op` that computes `node`'s output started from: back along
        first inputs (Conv <- BatchNormalization <- Relu) to a node of the kernel's own op type."""
        base = op.removeprefix("Fused").removeprefix("QLinear").removeprefix("Nhwc")
        at = node
        for _ in range(6):
            if at.op_type == base:
                return at.name
            if not at.input or at.input[0] not in produced:
                break
            at = produced[at.input[0]]
        return node.name

    graph_nodes = [n for n in optimized.graph.node if n.name] if optimized is not None else []
    for n in graph_nodes:
        if n.name in known:
            continue
        base = n.name.split("/", 1)[0]
        tensors = [n.name[: -len("_nchwc")]] if n.name.endswith("_nchwc") else []
        tensors += list(n.output)
        by = [base] + [head(produced[t], n.op_type) for t in tensors if t in produced]
        row = next((owner[b] for b in by if b in owner), None)
        if row is not None:
            known[n.name] = row
    known = _nearest(graph_nodes, known) if graph_nodes else known
    times: dict[str, float] = {}
    lost = 0.0
    for name, ms in node_ms.items():
        row = known.get(name) or known.get(name.split("/", 1)[0])
        if row is None:
            lost += ms
        else:
            times[row] = times.get(row, 0.0) + ms
    return times, lost


def layer_times(timing: Timing, rows, model: onnx.ModelProto, source: str = "onnxruntime profiler",
                runs: int | None = None) -> tuple[dict[str, float], LayerTimes]:
    times, lost = attribute(timing.node_ms, timing.optimized, model, row_of_nodes(rows, model))
    total = sum(times.values()) + lost
    return times, LayerTimes(source=source, runs=runs, statistic="median", total_ms=total, unattributed_ms=lost)


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
    median = statistics.median(lat)
    lead = next(iter(samples.feeds[0].values()))
    batch = int(lead.shape[0]) if np.ndim(lead) >= 1 and lead.shape[0] > 0 else 1
    return PlanCost(median, p90(lat), runs, warmup, batch * 1000.0 / median, batch, len(bytes(engine.serialize())),
                    None, None, "TensorRT", machine())


def unavailable(why: str) -> PlanCost:
    return PlanCost(None, None, 0, 0, None, 1, None, None, None, "", machine(), unavailable=why)


def measure(session, candidate, report, *, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP,
            profile: bool = True, progress=None):
    """`report` with its cost: the FP32 model and the candidate timed (`runs` after `warmup`), and each
    row's `time_ms` (the candidate's kernels, ONNX Runtime's profiler) with `ref_time_ms` (the FP32
    model's kernels on the same rows)."""
    from dataclasses import replace

    from layerdiff.cost import Cost
    from layerdiff.graph import serialize

    if runs < 1:
        raise BadInput(f"--bench takes the number of timed runs, at least 1 (not {runs})")
    if warmup < 0:
        raise BadInput(f"--warmup is 0 or more (not {warmup})")
    prof = min(PROFILE_RUNS, runs) if profile else 0
    if progress:
        progress(f"timing the FP32 model ({warmup} warm-up + {runs} runs)", 0, 2)
    ref = time_model(session.model.path, session.samples, providers=session.reference_providers, level="all",
                     runs=runs, warmup=warmup, profile_runs=prof, what="FP32 model")
    if progress:
        progress(f"timing the candidate ({warmup} warm-up + {runs} runs)", 1, 2)
    runner = candidate.runner
    cand_times: dict[str, float] = {}
    ref_times, ref_lt = layer_times(ref, report.layers, session.model.proto, runs=prof)
    layer_info = None
    if candidate.backend == "imported":
        cand = unavailable("imported results: there is no candidate here to run")
    elif hasattr(runner, "plain_engine"):
        cand = _time_trt(runner.plain_engine, session.samples, runs, warmup)
    elif candidate.model is not None and hasattr(runner, "providers"):
        timing = time_model(serialize(candidate.model), session.samples, providers=runner.providers or
                            ["CPUExecutionProvider"], level=runner.level, runs=runs, warmup=warmup, profile_runs=prof,
                            what="candidate")
        cand = timing.cost
        if prof:
            cand_times, layer_info = layer_times(timing, report.layers, candidate.model, runs=prof)
    else:
        cand = unavailable(f"a {candidate.kind} candidate has no model layerdiff can time")
    if progress:
        progress("timed", 2, 2)
    if layer_info is not None:
        layer_info = replace(layer_info, reference_total_ms=ref_lt.total_ms)
    layers = with_times(report.layers, cand_times, ref_times if prof else {})
    return replace(report, layers=layers, cost=Cost(ref.cost, cand, layer_info))


def with_times(layers, cand_times: Mapping[str, float], ref_times: Mapping[str, float]):
    """The rows with `time_ms` (and its share of the candidate's total) and `ref_time_ms` set; rows no
    kernel time was attributed to keep None where nothing of theirs ran."""
    from dataclasses import replace

    total = sum(cand_times.values())
    out = []
    for row in layers:
        t = cand_times.get(row.name)
        out.append(replace(row, time_ms=t if t is not None else row.time_ms,
                           time_share=(t / total if t is not None and total > 0 else row.time_share),
                           ref_time_ms=ref_times.get(row.name, row.ref_time_ms)))
    return tuple(out)


def candidate_size(candidate) -> int | None:
    """Bytes of the candidate as deployed: its ONNX model serialized, or its engine."""
    from layerdiff.graph import serialize

    engine = getattr(candidate.runner, "plain_engine", None)
    if engine is not None:
        return len(bytes(engine.serialize()))
    return len(serialize(candidate.model)) if candidate.model is not None else None


def gate_checks(session, candidate, report, *, max_abs: float | None = None, min_speedup: float | None = None,
                max_size_ratio: float | None = None, outputs=()) -> tuple:
    """compare's deployment bounds, each measured: --max-abs on the final outputs (worst sample, the
    --outputs specs where given), --min-speedup from the timed medians, --max-size-ratio from the sizes
    on disk."""
    from layerdiff.cost import GateCheck
    from layerdiff.target import Target

    checks = []
    if max_abs is not None:
        target = Target.parse("max-abs", max_abs, tuple(outputs), session.model.outputs)
        reference = session.reference_outputs()
        target.check(reference[0])
        got = session.outputs_on(candidate)
        value = target.worst([target.score(r, g) for r, g in zip(reference, got, strict=True)])
        where = f" of {', '.join(s.text for s in target.outputs)}" if outputs else ""
        checks.append(GateCheck("--max-abs", max_abs, value, target.passes(value), f"max abs error{where}"))
    if min_speedup is not None:
        speed = report.cost.speedup if report.cost is not None else None
        checks.append(GateCheck("--min-speedup", min_speedup, speed, speed is not None and speed >= min_speedup,
                                "speed-up (medians)"))
    if max_size_ratio is not None:
        ratio = report.cost.size_ratio if report.cost is not None else None
        if ratio is None:
            size = candidate_size(candidate)
            ratio = size / model_size(session.model.path) if size is not None else None
        checks.append(GateCheck("--max-size-ratio", max_size_ratio, ratio,
                                ratio is not None and ratio <= max_size_ratio, "size ratio"))
    return tuple(checks)


def profile_times(report, profile_path: str | Path, engine_info: str | Path | None):
    """`report` with each row's `time_ms` from a TensorRT profile (trtexec --exportProfile): profile
    layers are engine layers (checked against the engine's layer information), and a row holds the
    engine layers it was compared as (a fused group is one engine layer, one row)."""
    from dataclasses import replace

    from layerdiff.cost import Cost
    from layerdiff.engine_info import parse_engine_info
    from layerdiff.engine_info.profile import match_profile, read_trt_profile

    if engine_info is None:
        raise BadInput("--trt-profile needs the engine's layer information (--engine-info)")
    profile = read_trt_profile(profile_path)
    if isinstance(engine_info, str) and engine_info.lstrip().startswith(("{", "[")):
        with tempfile.TemporaryDirectory(prefix="layerdiff-") as tmp:  # a trt-* candidate's own, as text
            (Path(tmp) / "engine_info.json").write_text(engine_info)
            info = parse_engine_info(Path(tmp) / "engine_info.json")
    else:
        info = parse_engine_info(engine_info)
    per_layer = match_profile(profile, info)
    times: dict[str, float] = {}
    claimed: set[str] = set()
    for row in report.layers:
        mine = [per_layer[e] for e in row.engine_layers if e in per_layer]
        if mine:
            times[row.name] = sum(mine)
            claimed.update(e for e in row.engine_layers if e in per_layer)
    total = sum(per_layer.values())
    lost = total - sum(per_layer[e] for e in claimed)
    lt = LayerTimes(source=f"trtexec profile {Path(profile_path).name}", runs=profile.runs,
                    statistic=profile.statistic, total_ms=total, unattributed_ms=lost)
    cost = report.cost or Cost()
    layers = with_times(report.layers, times, {})
    return replace(report, layers=layers, cost=replace(cost, layer_times=lt))


def speedup_kept(fp32_ms: float, reduced_ms: float, recipe_ms: float) -> float | None:
    """The share of the all-reduced plan's gain over FP32 that the recipe keeps (1: all of it, 0: none,
    below 0: slower than FP32); None where the reduced plan gains nothing to keep."""
    gain = fp32_ms - reduced_ms
    return (fp32_ms - recipe_ms) / gain if gain > 0 else None


def recipe_cost(session, recipe_candidate, reduced_candidate, runs: int, warmup: int) -> str:
    """One line for bisect and apply: the recipe's median latency against the FP32 and the all-reduced
    plan's, each timed as compare --bench times."""
    from layerdiff.graph import serialize

    def timed(cand, what):
        runner = cand.runner
        return time_model(serialize(cand.model), session.samples, providers=getattr(runner, "providers", None)
                          or ["CPUExecutionProvider"], level=getattr(runner, "level", "all"), runs=runs,
                          warmup=warmup, what=what).cost.latency_ms_median

    fp32 = time_model(session.model.path, session.samples, providers=session.reference_providers, runs=runs,
                      warmup=warmup, what="FP32 model").cost.latency_ms_median
    reduced = timed(reduced_candidate, "all-reduced plan")
    recipe = timed(recipe_candidate, "recipe")
    prec = (reduced_candidate.plan.default if reduced_candidate.plan is not None else "reduced").upper()
    head = (f"cost (median of {runs} runs after {warmup} warm-up; {machine()}):\n  FP32 {fp32:.4g} ms, "
            f"all-{prec} {reduced:.4g} ms, recipe {recipe:.4g} ms")
    kept = speedup_kept(fp32, reduced, recipe)
    if kept is None:
        return head + f"\n  the all-{prec} plan is not faster than FP32 here: no speed-up to keep"
    return head + f"\n  the recipe keeps {kept:.0%} of the {prec} speed-up"
