"""What a plan costs (layerdiff.bench, compare --bench and the deployment gate): sizes against the
files, per-row kernel times against ONNX Runtime's own profile of the same model, the gate's max abs
against plain sessions, and the bad input that must give one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import layerdiff
from layerdiff.bench import p90, time_model
from layerdiff.graph import serialize
from layerdiff.layertimes import attribute, row_of_nodes
from tests.conftest import FIXTURES, run_plain

CNN = FIXTURES / "cnn.onnx"


@pytest.fixture(scope="module")
def int8():
    session = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs")
    cand = session.candidate("ort-int8")
    return session, cand, session.compare(cand)


def test_p90_is_a_measured_value():
    assert p90([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == 9.0
    assert p90([2.0]) == 2.0
    values = list(np.random.default_rng(0).random(37))
    assert p90(values) in values and sum(v <= p90(values) for v in values) >= 0.9 * len(values)


def test_a_timed_model_reports_what_it_ran(int8):
    session, cand, _ = int8
    blob = serialize(cand.model)
    t = time_model(blob, session.samples, providers=["CPUExecutionProvider"], runs=7, warmup=2, profile_runs=3)
    c = t.cost
    assert (c.runs, c.warmup, c.batch, c.size_bytes) == (7, 2, 1, len(blob))
    assert 0 < c.latency_ms_median <= c.latency_ms_p90
    assert c.throughput == pytest.approx(1000.0 / c.latency_ms_median)
    assert c.provider == "CPUExecutionProvider" and "cores" in c.machine
    assert c.peak_rss_mb >= c.base_rss_mb > 0
    ref = time_model(CNN, session.samples, providers=["CPUExecutionProvider"], runs=3, warmup=0)
    assert ref.cost.size_bytes == CNN.stat().st_size and not ref.node_ms  # no profile asked for


def test_the_peak_memory_is_the_timing_process_own(int8):
    """Linux carries getrusage's ru_maxrss across fork and exec: a worker reading it would report the
    size of the process that started it. Here that process holds 400 MB more than the model needs."""
    session, _, _ = int8
    ballast = np.ones(50_000_000)  # 400 MB, touched
    t = time_model(CNN, session.samples, providers=["CPUExecutionProvider"], runs=2, warmup=0)
    assert ballast[-1] == 1.0 and t.cost.peak_rss_mb < 300


def test_bench_zero_runs_is_refused(int8):
    session, _, _ = int8
    with pytest.raises(layerdiff.BadInput, match="at least 1"):
        time_model(CNN, session.samples, providers=["CPUExecutionProvider"], runs=0)


def _profile(model_bytes, feed, runs):
    """ONNX Runtime's own profile of a plain session: {node name: median kernel µs -> ms} (the oracle)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = f"{tmp}/p"
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        trace = json.load(open(sess.end_profiling()))
    names = {e["name"][:-len("_kernel_time")] for e in trace if e.get("cat") == "Node"
             and e["name"].endswith("_kernel_time")}
    return names


def test_every_kernel_of_the_candidate_is_timed_and_named_for_a_row(int8):
    session, cand, report = int8
    blob = serialize(cand.model)
    t = time_model(blob, session.samples, providers=["CPUExecutionProvider"], runs=2, warmup=1, profile_runs=5)
    feed = session.samples.feeds[0]
    assert set(t.node_ms) == _profile(blob, feed, 2)  # the profiler's own node list, nothing left out
    owner = row_of_nodes(report.layers, cand.model)
    times, lost = attribute(t.node_ms, t.optimized, cand.model, owner)
    assert lost == 0.0 and sum(times.values()) == pytest.approx(sum(t.node_ms.values()))
    rows = {lay.name: lay for lay in report.layers}
    assert set(times) <= set(rows)
    # a Conv's kernel counts in the conv's row; a QuantizeLinear's in its conversion row
    assert times["conv2"] == pytest.approx(t.node_ms["conv2"] + sum(
        ms for n, ms in t.node_ms.items() if n.startswith("conv2.weight_") or n.startswith("conv2.bias_")))
    q = next(lay.name for lay in report.layers if lay.kind == "conversion")
    assert times[q] >= t.node_ms[q]


def test_fused_fp32_kernels_count_in_the_row_of_the_node_they_start_from(int8):
    """ONNX Runtime runs the FP32 CNN as NCHWc Convs with BN and ReLU fused in, named after the ReLU's
    output ("relu1_nchwc"): the time is the Conv's row's."""
    session, _, report = int8
    t = time_model(CNN, session.samples, providers=["CPUExecutionProvider"], runs=2, warmup=1, profile_runs=3)
    kinds = {n.name: n.op_type for n in t.optimized.graph.node}
    fused = [n for n in t.node_ms if n.endswith("_nchwc") and kinds[n] == "Conv"]
    if not fused:
        pytest.skip("this CPU's ONNX Runtime did not use the NCHWc layout")
    times, lost = attribute(t.node_ms, t.optimized, session.model.proto,
                            row_of_nodes(report.layers, session.model.proto))
    assert lost == 0.0
    assert {"conv1", "conv2", "conv4"} <= set(times) and "relu1" not in times


def test_compare_bench_report_and_gate(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                            "--bench", "5", "--warmup", "1", "--min-speedup", "1000", "--max-size-ratio", "2",
                            "--max-abs", "1e-9", "-o", out)
    assert code == 1, err
    report = layerdiff.load_report(out)
    c = report.cost
    assert c.reference.runs == c.candidate.runs == 5 and c.reference.warmup == 1
    assert c.speedup == pytest.approx(c.reference.latency_ms_median / c.candidate.latency_ms_median)
    assert c.size_ratio == pytest.approx(c.candidate.size_bytes / CNN.stat().st_size)
    gate = {g.bound: g for g in report.gate}
    assert not gate["--min-speedup"].passed and gate["--max-size-ratio"].passed and not gate["--max-abs"].passed
    assert "gate failed: --min-speedup 1000: speed-up (medians)" in stdout
    timed = [lay for lay in report.layers if lay.time_ms is not None]
    assert timed and sum(lay.time_share for lay in timed) == pytest.approx(1.0)
    assert all(lay.ref_time_ms is None or lay.ref_time_ms > 0 for lay in report.layers)
    for line in stdout.splitlines():
        assert len(line) <= 80 or line.startswith(("layerdiff compare", "18 layers", "report written")), line


def test_gate_max_abs_is_the_plain_sessions_worst_error(cli, tmp_path, int8):
    session, cand, _ = int8
    worst = 0.0
    blob = serialize(cand.model)
    for feed in session.samples.feeds:
        ref = run_plain(CNN.read_bytes(), feed)["probs"]
        got = run_plain(blob, feed)["probs"]
        worst = max(worst, float(np.max(np.abs(ref.astype(np.float64) - got))))
    out = tmp_path / "r.json"
    for limit, code_expected in ((worst * 1.01, 0), (worst * 0.99, 1)):
        code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                           "--max-abs", limit, "-o", out, "-q")
        assert code == code_expected, err
        (check,) = layerdiff.load_report(out).gate
        assert check.value == pytest.approx(worst, rel=1e-6)
    assert "gate failed: --max-abs" in err


@pytest.mark.parametrize("args, message", [
    (["--bench", "0"], "--bench takes the number of timed runs, at least 1"),
    (["--min-speedup", "fast"], "'fast' is not a number"),
    (["--max-size-ratio", "-1"], "is not a finite number of at least 0"),
    (["--max-abs", "nan"], "is not a finite number"),
    (["--min-speedup", "1.2"], "--min-speedup compares measured latencies: add --bench"),
    (["--trt-profile", "missing.json"], "TensorRT profile not found"),
    (["--warmup", "-1", "--bench"], "--warmup is 0 or more"),
])
def test_bad_cost_flags_give_one_line_and_exit_2(cli, tmp_path, args, message):
    out = tmp_path / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs", *args,
                       "-o", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_tui_shows_and_sorts_by_kernel_time(cli, tmp_path):
    import asyncio

    from layerdiff.tui.app import LayerdiffApp
    from layerdiff.tui.table import LayerTable

    out = tmp_path / "r.json"
    assert cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs", "--bench", "3",
               "--warmup", "0", "-o", out, "-q")[0] == 0
    report = layerdiff.load_report(out)

    async def go(report, sort):
        app = LayerdiffApp(report, out)
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause()
            if sort:
                app.view = app.view.sorted_by("time_ms")
                await pilot.pause()
            table = app.query_one(LayerTable)
            return [k for k, _, _ in table.columns], table.keys

    columns, order = asyncio.run(go(report, True))
    assert "time_ms" in columns
    times = {lay.name: lay.time_ms for lay in report.layers}
    known = [times[k] for k in order if times[k] is not None]
    assert known == sorted(known, reverse=True) and len(known) >= 10  # the slowest first
    assert all(times[k] is None for k in order[len(known):])  # untimed rows last
    from dataclasses import replace

    untimed = replace(report, layers=tuple(replace(lay, time_ms=None, time_share=None, ref_time_ms=None)
                                           for lay in report.layers), cost=None)
    columns, _ = asyncio.run(go(untimed, False))
    assert "time_ms" not in columns


def test_speedup_kept():
    from layerdiff.bench import speedup_kept

    assert speedup_kept(10.0, 4.0, 4.6) == pytest.approx(0.9)  # keeps 90% of a 6 ms gain
    assert speedup_kept(10.0, 4.0, 4.0) == 1.0 and speedup_kept(10.0, 4.0, 10.0) == 0.0
    assert speedup_kept(10.0, 4.0, 12.0) < 0  # slower than FP32
    assert speedup_kept(4.0, 10.0, 6.0) is None  # the reduced plan gains nothing to keep


def test_apply_bench_times_the_recipe_against_fp32_and_the_reduced_plan(cli, tmp_path):
    import re

    recipe = tmp_path / "r.recipe.json"
    code, _, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                       "--min-cosine", "0.99999", "-o", recipe, "-q")
    assert code == 0, err
    code, out, err = cli("apply", recipe, CNN, "--inputs", FIXTURES / "cnn_inputs", "--bench", "5", "-q")
    assert code == 0, err
    m = re.search(r"FP32 ([\d.e+-]+) ms, all-INT8 ([\d.e+-]+) ms, recipe ([\d.e+-]+) ms\n  (.*)", out)
    assert m, out
    fp32, reduced, rec = (float(m.group(i)) for i in (1, 2, 3))
    if reduced < fp32:
        kept = (fp32 - rec) / (fp32 - reduced)  # from the printed (rounded) medians: within a point
        said = re.fullmatch(r"the recipe keeps (-?\d+)% of the INT8 speed-up", m.group(4))
        assert said and abs(int(said.group(1)) - 100 * kept) <= 1.5
    else:
        assert m.group(4) == "the all-INT8 plan is not faster than FP32 here: no speed-up to keep"
    code, _, err = cli("apply", recipe, CNN, "--bench", "0")
    assert code == 2 and "at least 1" in err
