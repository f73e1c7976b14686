"""What a plan costs (layerdiff.bench, compare --bench and the deployment gate): sizes against the
files, per-row kernel times against ONNX Runtime's own profile of the same model, the gate's max abs
against plain sessions, and the bad input that must give one line and exit 2."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import layerdiff
from layerdiff.bench import p90, time_model
from layerdiff.graph import serialize
from layerdiff.layertimes import attribute, row_of_nodes
from tests.conftest import FIXTURES, run_plain

@pytest.fixture(autouse=True)
def _every_gemm_quantized(monkeypatch):
    """These tests exercise INT8 kernels on the CNN's Gemm head, which the default `trt` placement leaves
    in float as ModelOpt does (a GEMV, N=10): they run on `ort-all`, which quantizes it
    (test_placement.py tests `trt`)."""
    monkeypatch.setattr("layerdiff.backends.placement.DEFAULT", "ort-all")


CNN = FIXTURES / "cnn.onnx"


@pytest.fixture(scope="module")
def int8():
    session = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", int8_placement="ort-all")
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
    # the reorder back to NCHW after the fused conv1 (it writes relu1's tensor) is conv1's time too
    written = {o: n.name for n in t.optimized.graph.node for o in n.output}
    back = [n for n in t.optimized.graph.node if n.op_type == "ReorderOutput" and n.output[0] == "relu1"]
    if back and back[0].name in t.node_ms:
        assert times["conv1"] == pytest.approx(t.node_ms[back[0].name] + t.node_ms[written[back[0].input[0]]])


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
    for line in stdout.splitlines():  # prose lines are not broken when piped (a terminal wraps them)
        assert len(line) <= 80 or line.startswith(("layerdiff compare", "18 layers", "report written",
                                                   "warning: unsteady timings")), line
    c = report.cost
    assert len(c.reference.round_medians_ms) == len(c.candidate.round_medians_ms) == 3  # 5 runs in 3 turns


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
                           "--int8-placement", "ort-all", "--max-abs", limit, "-o", out, "-q")
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


@pytest.mark.parametrize("bound", ["--min-speedup", "--max-size-ratio"])
def test_imported_results_refuse_bounds_on_what_only_a_run_here_measures(cli, tmp_path, bound):
    results = tmp_path / "results.json"
    results.write_text("{}")
    for bench in (["--bench", "3"], []):  # said first: adding --bench would not help
        code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs",
                           FIXTURES / "cnn_inputs", *bench, bound, "0.5", "-o", tmp_path / "r.json")
        assert code == 2 and err.startswith(f"layerdiff: error: {bound}: imported results have no candidate")
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


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

    async def screen_at_80(report):
        app = LayerdiffApp(report, out)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            table = app.query_one(LayerTable)
            return table.columns, [table.render_line(y).text for y in range(3)]

    columns, lines = asyncio.run(screen_at_80(report))
    shown = 78  # 80 columns less the table's scrollbar
    end = sum(w for _, _, w in columns[:[k for k, _, _ in columns].index("time_ms") + 1]) + \
        (1 + [k for k, _, _ in columns].index("time_ms")) * 1
    assert end <= shown, columns  # every metric, the time too, without scrolling sideways
    first = report.layers[0]
    assert " ms " in lines[0][:shown] and f"{first.time_ms:.3g}" in lines[1][:shown]


def test_speedup_kept():
    from layerdiff.bench import unavailable
    from layerdiff.cost import PlanCost, RecipeCost

    def kept(fp32, reduced, recipe):
        plan = lambda ms: PlanCost(ms, ms, 5, 1, None, 1, None, None, None, "cpu", "here")  # noqa: E731
        return RecipeCost("int8", plan(fp32), plan(reduced), plan(recipe)).kept

    assert kept(10.0, 4.0, 4.6) == pytest.approx(0.9)  # keeps 90% of a 6 ms gain
    assert kept(10.0, 4.0, 4.0) == 1.0 and kept(10.0, 4.0, 10.0) == 0.0
    assert kept(10.0, 4.0, 12.0) < 0  # slower than FP32
    assert kept(4.0, 10.0, 6.0) is None  # the reduced plan gains nothing to keep
    plan = PlanCost(1.0, 1.0, 5, 1, None, 1, None, None, None, "cpu", "here")
    long_name = PlanCost(1.0, 1.0, 5, 1, None, 1, None, None, None, "CPUExecutionProvider",
                         "x86_64 Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz with a long name, 224 cores")
    assert all(len(line) <= 80 for line in RecipeCost("int8", long_name, long_name, long_name).lines())
    untimed = RecipeCost("int8", plan, unavailable("imported results"), plan)
    assert untimed.kept is None and untimed.lines() == ["cost: this candidate cannot be timed here: imported results"]


def two_convs(path, relu_between: bool):
    """x -> Conv c1 [-> Relu r1] -> Conv c2 -> Relu r2, saved at `path`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.normal(size=(16, 8, 3, 3)) * 0.2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.normal(size=(16, 16, 3, 3)) * 0.1).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["t1"], name="c1", pads=[1, 1, 1, 1])]
    if relu_between:
        nodes.append(helper.make_node("Relu", ["t1"], ["t2"], name="r1"))
    nodes += [helper.make_node("Conv", ["t2" if relu_between else "t1", "w2"], ["t3"], name="c2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["t3"], ["y"], name="r2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.mark.parametrize("spec, relu_between, kernel", [
    # DQ -> Conv -> Q fused into QLinearConv, which the NHWC pass rebuilds as "c1_token_K" writing a tensor
    # renamed "c1"
    ("ort-int8", False, r"c1_token_\d+"),
    # an FP16 Conv on a CPU without FP16 kernels: ONNX Runtime casts to FP32 and its NCHWc pass names the
    # Conv after the tensor it writes, "InsertedPrecisionFreeCast_t2_nchwc" (the ReLU fused in)
    ("ort-fp16", True, r"InsertedPrecisionFreeCast_.*"),
])
def test_kernels_onnx_runtime_renamed_keep_their_time(tmp_path, spec, relu_between, kernel):
    """A kernel an ONNX Runtime transformer rebuilt under another name counts in its node's row, not in
    the row of the next node it feeds."""
    import re

    from layerdiff.bench import time_candidate
    from layerdiff.layertimes import layer_times

    session = layerdiff.prepare(two_convs(tmp_path / "convs.onnx", relu_between))
    cand = session.candidate(spec)
    report = session.compare(cand)
    timing = time_candidate(session, cand, runs=3, warmup=1, profile_runs=3)
    kinds = {n.name: n.op_type for n in timing.optimized.graph.node}
    renamed = [n for n in timing.node_ms if re.fullmatch(kernel, n) and "Conv" in kinds[n]]
    assert renamed, sorted(timing.node_ms)  # the kernels ONNX Runtime 1.31 runs on this CPU
    times, info = layer_times(timing.node_ms, timing.optimized, report.layers, cand.model)
    assert info.unattributed_ms == 0
    convs = sum(timing.node_ms[n] for n in renamed)
    assert times["c1"] + times["c2"] >= convs  # every renamed Conv kernel in a Conv row
    others = sum(t for row, t in times.items() if row not in ("c1", "c2"))
    assert others <= sum(timing.node_ms.values()) - convs + 1e-9


def test_node_times_put_added_nodes_on_the_node_they_serve():
    """A candidate's Q/DQ pair and weight DequantizeLinear count in the FP32 node they feed; a node of
    its own keeps its time; a Cast after the last node counts in the node it reads."""
    from onnx import TensorProto, helper

    from layerdiff.layertimes import node_times

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_DQ"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="w_DQ"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["y"], name="y_cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph)
    ms = {"x_Q": 1.0, "x_DQ": 2.0, "w_DQ": 4.0, "conv": 8.0, "relu": 16.0, "y_cast": 32.0}
    assert node_times(ms, None, model, ["conv", "relu"]) == {"conv": 15.0, "relu": 48.0}


@pytest.fixture(scope="module")
def costs(int8):
    from layerdiff.bench import pin_costs

    session, cand, _ = int8
    return pin_costs(session, cand, runs=5, warmup=1)


def test_pin_costs_account_for_every_kernel(int8, costs):
    """Each FP32 node's cost is its FP32 kernel time less its all-INT8 time (Q/DQ included): added up
    they are the two profiled totals' difference, so no kernel of either model was lost."""
    session = int8[0]
    names = {n.name for n in session.model.proto.graph.node}
    assert set(costs.added_ms) <= names and costs.runs == 5
    assert costs.fp32_total_ms > 0 and costs.reduced_total_ms > 0
    assert sum(costs.added_ms.values()) == pytest.approx(costs.fp32_total_ms - costs.reduced_total_ms, abs=1e-9)
    assert costs.estimate_ms(names) == pytest.approx(costs.fp32_total_ms, abs=1e-9)  # all pinned: FP32
    assert costs.estimate_ms(()) == costs.reduced_total_ms


def test_objective_time_is_as_small_and_times_its_finalists(int8, costs, monkeypatch):
    """bisect --objective time on the real profile: as many pins as --objective pins; the plans it
    timed side by side include objective pins' answer, and the answer is the fastest of them."""
    import layerdiff.bench
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.cost import PinCosts
    from layerdiff.target import Target

    session, held = prepare_split(CNN, inputs=FIXTURES / "cnn_inputs")
    target = Target.parse("cosine", 0.99999, (), session.model.outputs)
    plain = bisect(session, "ort-int8", target, holdout=held, evidence=False)
    # costs that make objective pins' answer dear: on this model another pair passes, and is a finalist
    dear = PinCosts({n: 10.0 for n in plain.outcome.pins}, 1.0, 1.0, 1)
    for pin_costs in (costs, dear):
        monkeypatch.setattr(layerdiff.bench, "pin_costs", lambda *a, c=pin_costs, **k: c)
        timed = bisect(session, "ort-int8", target, holdout=held, evidence=False, objective="time", bench=20,
                       warmup=2)
        assert plain.status == timed.status == "found" and timed.outcome.passed
        assert timed.objective == "time" and timed.pin_costs is pin_costs
        assert len(timed.pins) == len(plain.pins)
        finalists = {frozenset(f.pins): f for f in timed.finalists}
        assert frozenset(timed.finalists[0].pins) == plain.outcome.pins  # objective pins' answer, first
        chosen = [f for f in timed.finalists if f.chosen]
        assert len(chosen) == 1 and frozenset(chosen[0].pins) == timed.outcome.pins
        if len(finalists) > 1:
            assert timed.race_runs == 20
            first = timed.finalists[0]
            assert chosen[0] is first or (chosen[0].latency_ms_median < 0.95 * first.latency_ms_median and
                                          chosen[0].latency_ms_p90 < first.latency_ms_median)
        for f in timed.finalists:
            assert f.estimated_kernel_ms == pytest.approx(pin_costs.estimate_ms(f.pins))
    assert len(finalists) > 1 and any(frozenset(f.pins) != plain.outcome.pins for f in timed.finalists)
    assert timed.holdout is not None and timed.holdout.holds


@pytest.mark.parametrize("other, p90, chosen", [(0.97, 0.99, 0), (0.80, 0.90, 1), (0.80, 1.05, 0)])
def test_objective_time_leaves_objective_pins_answer_only_for_a_clearly_faster_plan(monkeypatch, other, p90, chosen):
    """Given the finalists' timings (1.0 ms, p90 1.1, for objective pins' answer): another plan is the
    answer only when 5% faster with its p90 under 1.0 ms; a gap within the noise keeps the answer."""
    import layerdiff.bench
    from layerdiff.bench import unavailable
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.cost import PinCosts
    from layerdiff.target import Target

    session, held = prepare_split(CNN, inputs=FIXTURES / "cnn_inputs")
    target = Target.parse("cosine", 0.99999, (), session.model.outputs)
    plain = bisect(session, "ort-int8", target, holdout=held, evidence=False)
    monkeypatch.setattr(layerdiff.bench, "pin_costs",
                        lambda *a, **k: PinCosts({n: 10.0 for n in plain.outcome.pins}, 1.0, 1.0, 1))
    given = [(1.0, 1.1), (other, p90)]

    def timings(session, candidates, runs, warmup):  # the decision under test, on given figures
        return [replace(unavailable(""), latency_ms_median=m, latency_ms_p90=q, runs=runs)
                for m, q in (given + [(2.0, 2.0)] * 4)[:len(candidates)]]

    monkeypatch.setattr(layerdiff.bench, "race_candidates", timings)
    timed = bisect(session, "ort-int8", target, holdout=held, evidence=False, objective="time")
    assert len(timed.finalists) >= 2 and frozenset(timed.finalists[0].pins) == plain.outcome.pins
    assert [f.chosen for f in timed.finalists][chosen] and timed.outcome.pins == frozenset(timed.finalists[chosen].pins)


def test_ctrl_c_while_timing_the_finalists_keeps_the_search_answer_and_runs_nothing_more(monkeypatch):
    import layerdiff.bench
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.cost import PinCosts
    from layerdiff.target import Target

    session, held = prepare_split(CNN, inputs=FIXTURES / "cnn_inputs")
    target = Target.parse("cosine", 0.99999, (), session.model.outputs)
    plain = bisect(session, "ort-int8", target, holdout=held, evidence=False)
    monkeypatch.setattr(layerdiff.bench, "pin_costs",
                        lambda *a, **k: PinCosts({n: 10.0 for n in plain.outcome.pins}, 1.0, 1.0, 1))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    later = []
    monkeypatch.setattr(layerdiff.bench, "race_candidates", interrupted)
    monkeypatch.setattr(layerdiff.bench, "time_recipe", lambda *a, **k: later.append(a))
    result = bisect(session, "ort-int8", target, holdout=held, objective="time", bench=5)
    assert result.status == "interrupted" and result.outcome.passed and result.cost is None
    assert result.holdout is None and later == []
    assert len(result.pins) == len(plain.pins) and any("interrupted" in w for w in result.warnings)


def test_race_times_models_side_by_side():
    """A model doing 40 matrix products against one doing one, timed in turns: the first is the
    slower, each got every run, and sizes are the bytes given."""
    from onnx import TensorProto, helper, numpy_helper

    from layerdiff.bench import race
    from layerdiff.inputs import Samples

    def chain(n):
        w = numpy_helper.from_array(np.eye(256, dtype=np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"t{i}", "w"], [f"t{i + 1}" if i < n - 1 else "y"])
                 for i in range(n)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])], [w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()

    heavy, light = chain(40), chain(1)
    samples = Samples((({"x": np.ones((256, 256), np.float32)}),), "ones")
    slow, fast = race([heavy, light], samples, providers=["CPUExecutionProvider"], level="disabled", runs=7, warmup=1)
    assert slow.runs == fast.runs == 7 and slow.peak_rss_mb > 0
    assert slow.size_bytes == len(heavy) and fast.size_bytes == len(light)
    assert slow.latency_ms_median > 5 * fast.latency_ms_median


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


def test_bisect_objective_time_and_bench_write_the_cost_in_the_recipe(cli, tmp_path):
    recipe = tmp_path / "r.recipe.json"
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                         "--min-cosine", "0.99999", "--objective", "time", "--bench", "5", "--warmup", "2",
                         "-o", recipe)
    assert code == 0, err
    r = json.loads(recipe.read_text())
    assert r["objective"] == "time"
    est = r["objective_time"]
    pins = [p["node"] for p in r["pins"]]
    assert sorted(est["per_pin_ms"]) == sorted(pins)
    assert est["recipe_kernel_ms"] == pytest.approx(est["reduced_kernel_ms"] + sum(est["per_pin_ms"].values()))
    cost = r["cost"]
    assert cost["precision"] == "int8"
    for plan in ("fp32", "reduced", "recipe"):
        assert cost[plan]["runs"] == 5 and cost[plan]["warmup"] == 2 and cost[plan]["latency_ms_median"] > 0
    f, red, rec = (cost[p]["latency_ms_median"] for p in ("fp32", "reduced", "recipe"))
    assert cost["speedup_kept"] == (pytest.approx((f - rec) / (f - red)) if red < f else None)
    assert f"FP32 {f:.4g} ms, all-INT8 {red:.4g} ms, recipe {rec:.4g} ms" in out
    assert f"recipe {est['recipe_kernel_ms']:.4g} ms" in out
    chosen = [f for f in est["finalists"] if f["chosen"]]
    assert len(chosen) == 1 and sorted(chosen[0]["pins"]) == sorted(pins)
    if len(est["finalists"]) > 1:
        assert est["finalist_runs"] == 5
        first = est["finalists"][0]
        assert chosen[0] is first or chosen[0]["latency_ms_median"] < 0.95 * first["latency_ms_median"]
    cost_lines = out[out.index("estimated kernel time"):out.index("recipe written")].splitlines()
    assert "measured with CPU on" in out and all(len(line) <= 80 for line in cost_lines if "warning" not in line)
    code, out, err = cli("apply", recipe, CNN, "--inputs", FIXTURES / "cnn_inputs")
    assert code == 0, err


@pytest.mark.parametrize("extra, message", [
    (["--objective", "time", "--candidate", "fake"], "--objective time estimates what each pin costs"),
    (["--bench", "0", "--candidate", "ort-int8"], "at least 1"),
    (["--bench", "3", "--warmup", "-1", "--candidate", "ort-int8"], "--warmup is 0 or more"),
])
def test_bisect_cost_flags_refuse_bad_input(cli, extra, message):
    code, _, err = cli("bisect", CNN, "--inputs", FIXTURES / "cnn_inputs", "--min-cosine", "0.99999", *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_objective_time_says_when_the_budget_left_no_room(cli, tmp_path):
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                         "--min-cosine", "0.99999", "--objective", "time", "--max-evals", "6", "-q")
    assert "budget" in out and "--objective time: the budget of 6 evaluations ended" in err


def test_ctrl_c_while_timing_the_answer_ends_interrupted_with_the_answer_checked(monkeypatch):
    import layerdiff.bench
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.target import Target

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    session, held = prepare_split(CNN, inputs=FIXTURES / "cnn_inputs")
    target = Target.parse("cosine", 0.99999, (), session.model.outputs)
    monkeypatch.setattr(layerdiff.bench, "time_recipe", interrupted)
    result = bisect(session, "ort-int8", target, holdout=held, evidence=False, bench=5)
    # the search finished: its status stands, and the step that did not is named
    assert result.interrupted_at == "timing" and result.status != "interrupted"
    assert result.cost is None and result.outcome.passed
    assert result.holdout is not None and result.holdout.holds  # what finished before is kept


def _plan(median, p90, turns=(), runs=30):
    from layerdiff.cost import PlanCost

    return PlanCost(median, p90, runs, 5, None, 1, None, None, None, "CPUExecutionProvider", "m",
                    round_medians_ms=turns)


def test_unsteady_timings_are_said_and_steady_ones_are_not():
    from layerdiff.cost import RecipeCost, unsteady

    steady = {"FP32 model": _plan(1.0, 1.3, (0.98, 1.0, 1.05)), "candidate": _plan(2.0, 2.2, (2.0, 2.1, 1.9))}
    assert unsteady(steady) == ""
    moved = dict(steady, candidate=_plan(2.0, 2.2, (1.5, 2.0, 2.4)))  # one turn 60% slower than another
    said = unsteady(moved)
    assert said.startswith("unsteady timings (candidate: medians of 1.5 to 2.4 ms in its turns)")
    assert unsteady(dict(steady, candidate=_plan(2.0, 2.2, (1.5, 2.0, 2.4), runs=6))) == ""  # 2 runs a turn
    tail = dict(steady, **{"FP32 model": _plan(1.0, 9.8)})  # untimed in turns, a p90 far from the median
    assert "FP32 model: p90 9.8x its median" in unsteady(tail)
    lines = RecipeCost("int8", _plan(1.0, 1.1, (1.0, 1.0)), _plan(2.0, 2.1, (1.0, 3.0)), _plan(1.5, 1.6)).lines()
    assert any("unsteady timings (all-INT8: medians of 1 to 3 ms" in line for line in lines)
    assert all(len(line) <= 80 for line in lines)


def test_plans_are_timed_in_turns_and_pooled(int8):
    from layerdiff.bench import Job, time_in_turns

    cnn_samples = int8[0].samples
    jobs = [Job(CNN, ["CPUExecutionProvider"], "all", "a"), Job(CNN, ["CPUExecutionProvider"], "disabled", "b")]
    a, b = time_in_turns(jobs, cnn_samples, runs=7, warmup=1, rounds=3, profile_runs=2)
    for t in (a, b):
        assert t.cost.runs == 7 and len(t.cost.round_medians_ms) == 3
        assert min(t.cost.round_medians_ms) <= t.cost.latency_ms_median <= max(t.cost.round_medians_ms)
        assert t.node_ms and t.optimized is not None  # profiled once, in the first turn
        assert t.cost.size_bytes == CNN.stat().st_size


def test_a_kernel_named_after_a_renamed_value_counts_in_its_nodes_row(tmp_path):
    """ONNX Runtime names the NCHWc Conv after the tensor it writes, which QDQ propagation renamed
    y_pre_q: "y_pre_q_nchwc" is the Conv's time, not the Slice's."""
    from layerdiff.bench import time_model
    from layerdiff.layertimes import attribute, row_of_nodes
    from tests.test_kernels import _conv_slice

    fp32, qdq = _conv_slice(tmp_path)
    session = layerdiff.prepare(fp32, seed=3, reference_provider="cpu")
    cand = session.candidate(str(qdq))
    report = session.compare(cand)
    t = time_model(qdq, session.samples, providers=["CPUExecutionProvider"], runs=2, warmup=1, profile_runs=3)
    named = [n for n in t.node_ms if n.startswith("y_pre_q")]
    if not named:
        pytest.skip("this CPU's ONNX Runtime did not rename the Conv's output")
    times, lost = attribute(t.node_ms, t.optimized, cand.model, row_of_nodes(report.layers, cand.model))
    assert lost == 0.0
    assert times["conv"] >= sum(t.node_ms[n] for n in named)
    assert times["slice"] >= t.node_ms["slice"]  # and the moved QuantizeLinear that feeds it
    assert sum(times.values()) == pytest.approx(sum(t.node_ms.values()))
