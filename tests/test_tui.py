"""The TUI (layerdiff.tui): its view state on its own, the app driven with Textual's Pilot, the report
viewers' command lines, the Model Explorer export and the plot."""

from __future__ import annotations

import asyncio
import json
import math
import re

import onnx
import pytest
from onnx import TensorProto, helper

from layerdiff.recipe import load_recipe
from layerdiff.report import load_report, rank_layers
from layerdiff.tui.state import Filter, Graph, ViewState, follow, row_view, visible
from tests.conftest import FIXTURES, load_script

bench = load_script("bench_tui")


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory):
    from layerdiff.cli import main

    path = tmp_path_factory.mktemp("tui") / "cnn.json"
    assert main(["compare", str(FIXTURES / "cnn.onnx"), "--candidate", "ort-int8", "--inputs",
                 str(FIXTURES / "cnn_inputs"), "-o", str(path), "-q"]) == 0
    return path


@pytest.fixture(scope="module")
def diverging_report(tmp_path_factory):
    """A report with a first divergence: FakeBackend errors on conv2."""
    import layerdiff
    from layerdiff.backends.fake import FakeBackend
    from layerdiff.plan import PrecisionPlan
    from layerdiff.report import write_report

    session = layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs")
    cand = session.realise(PrecisionPlan.uniform("int8"), FakeBackend(session.model, {"conv2": 0.3}, 0.0))
    report = session.compare(cand)
    assert report.first_divergence is not None
    path = tmp_path_factory.mktemp("tui") / "div.json"
    write_report(report, path)
    return path


def run(app, *keys, size=(100, 30), check=None):
    """Drive `app` headless: press `keys` (a callable among them is called with the app), return what
    `check(app)` returns at the end."""

    async def go():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for key in keys:
                if callable(key):
                    key(app)
                else:
                    await pilot.press(key)
                await pilot.pause()
            return check(app) if check else None

    return asyncio.run(go())


def table_keys(app) -> list[str]:
    from layerdiff.tui.table import LayerTable

    return app.query_one(LayerTable).keys


# -- the view state, without Textual ------------------------------------------------------------------


def test_sorting_filtering_and_constants_on_a_synthetic_report():
    report = bench.synthetic_report(500)
    rows = [row_view(lay) for lay in report.layers]
    shown = visible(rows, ViewState())
    assert all(r.kind != "constant" for r in shown) and len(shown) == 490  # every 50th row is a Constant
    assert len(visible(rows, ViewState(show_constants=True))) == 500
    by_local = visible(rows, ViewState(sort="local_cosine"))
    values = [r.local_cosine for r in by_local]
    assert values == sorted(values)  # the worst (lowest cosine) first
    assert visible(rows, ViewState(sort="local_cosine", reverse=True))[0].local_cosine == max(values)
    convs = visible(rows, ViewState(filter_text="op:Relu prec:int8 layer_001"))
    assert convs == [r for r in rows if r.kind != "constant" and r.op == "Relu" and r.precision == "int8"
                     and "layer_001" in r.name] and len(convs) > 10
    assert Filter.parse("op:").problems  # names nothing


def test_graph_moves_follow_the_worst_error(cnn_report):
    report = load_report(cnn_report)
    graph = Graph.of(report.layers)
    add = report.layer("residual_add")
    assert add is not None and len(add.inputs) == 2
    producers = graph.producers["residual_add"]
    assert len(producers) >= 2  # both branches (each through its own rounding row)
    assert "residual_add" in {c for p in producers for c in graph.consumers[p]}
    rows = {lay.name: row_view(lay) for lay in report.layers}
    up = follow(graph, rows, "residual_add", upstream=True)
    assert up == min(producers, key=lambda k: rows[k].cosine)


# -- the app, driven by Pilot -------------------------------------------------------------------------


def test_keys_sort_filter_and_jump(cnn_report, diverging_report):
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    app = LayerdiffApp(report, cnn_report)
    start = run(app, check=table_keys)
    assert start == [lay.name for lay in report.layers if lay.kind != "constant"]

    def by_local(app):
        app.view = app.view.sorted_by("local_cosine")

    app = LayerdiffApp(report, cnn_report)
    order = run(app, by_local, check=table_keys)
    cos = [app.by_key[k].local_cosine for k in order if app.by_key[k].local_cosine is not None]
    assert cos == sorted(cos) and order != start
    app = LayerdiffApp(report, cnn_report)
    assert run(app, "slash", *"op:Conv", "enter", check=table_keys) == [
        lay.name for lay in report.layers if lay.op == "Conv"]
    app = LayerdiffApp(report, cnn_report)
    assert run(app, "w", check=lambda a: a.selected) == rank_layers(report)[0].name
    div = load_report(diverging_report)
    app = LayerdiffApp(div, diverging_report)
    assert run(app, "d", check=lambda a: a.selected) == div.first_divergence.layer


def test_pins_export_a_recipe_of_exactly_those_layers(cnn_report, tmp_path):
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    copy = tmp_path / "report.json"
    copy.write_text(cnn_report.read_text())
    app = LayerdiffApp(report, copy)

    def select(name):
        return lambda a: a._select(name)

    run(app, select("conv2"), "p", select("fc"), "p", select("conv4"), "p", "p", "e", "enter")
    recipe = load_recipe(tmp_path / "report.recipe.json", report.model.sha256)
    assert set(recipe.nodes) == {"conv2", "fc"}  # conv4 pinned and unpinned
    assert recipe.precision == "int8" and recipe.candidate["spec"] == "ort-int8"


def test_a_conversion_row_cannot_be_pinned(cnn_report):
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    conversion = next(lay.name for lay in report.layers if lay.kind == "conversion")
    app = LayerdiffApp(report, cnn_report)
    pins = run(app, lambda a: a._select(conversion), "p", check=lambda a: a.view.pins)
    assert pins == frozenset()


def _bisect_in_app(app, threshold, *, cancel_after=None):
    """Press b and answer `threshold`; return the status lines the app showed. With
    `cancel_after`, press x once the status line shows that many evaluations."""
    said: list[str] = []

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            original = app._say

            def say(message):
                said.append(message)
                original(message)
                if cancel_after and message.startswith(f"bisect {cancel_after}/"):
                    app.action_cancel_bisect()

            app._say = say
            await pilot.press("b")
            await pilot.pause()
            from textual.widgets import Input

            app.screen.query_one(Input).value = str(threshold)
            await pilot.press("enter")
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert not app._bisecting
            return said

    return asyncio.run(go())


def test_bisect_runs_in_a_worker_and_pins_what_bisect_finds(cnn_report):
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.target import Target
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    app = LayerdiffApp(report, cnn_report)
    worst = min(o.accumulated.worst.cosine for o in report.outputs)
    threshold = 1 - (1 - worst) / 10  # tighter than the INT8 model on every sample: pins are needed
    said = _bisect_in_app(app, threshold)
    assert said[0].startswith("bisect: preparing")
    progress = [m for m in said if re.match(r"bisect \d+/\d+: ", m)]
    assert len(progress) >= 2  # one line per evaluation
    final = said[-1]
    # the oracle: the library's bisect, called directly at the same threshold on the same samples
    session, held = prepare_split(report.model.path, inputs=str(FIXTURES / "cnn_inputs"))
    target = Target.parse("cosine", threshold, (), session.model.outputs)
    expected = bisect(session, "ort-int8", target, holdout=held, evidence=False)
    assert final.startswith(f"bisect {expected.status}: {len(expected.pins)} pin(s)")
    nodes = {p.node for p in expected.pins}
    assert app.view.pins == {lay.name for lay in report.layers if lay.kind == "layer" and nodes & set(lay.onnx_nodes)}
    assert app.view.pins and expected.status in ("met", "found")


def test_bisect_in_the_tui_can_be_cancelled(cnn_report):
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    app = LayerdiffApp(report, cnn_report)
    worst = min(o.accumulated.worst.cosine for o in report.outputs)
    said = _bisect_in_app(app, 1 - (1 - worst) / 10, cancel_after=2)
    assert "cancelling bisect (the best plan so far is kept)" in said
    assert said[-1].startswith("bisect interrupted: ")
    assert "(2 evaluations" in said[-1] or "(3 evaluations" in said[-1]  # one may be under way when x lands


def test_ten_thousand_layers_load_and_sort():
    from layerdiff.tui.app import LayerdiffApp

    report = bench.synthetic_report(10_000)
    app = LayerdiffApp(report)

    def by_cos(app):
        app.view = app.view.sorted_by("cosine")

    order = run(app, by_cos, check=table_keys)
    assert len(order) == 9_800
    cos = [app.by_key[k].cosine for k in order]
    assert cos == sorted(cos)


def test_a_report_without_optional_fields_opens(cnn_report, tmp_path):
    from layerdiff.tui.app import LayerdiffApp

    data = json.loads(cnn_report.read_text())
    for lay in data["layers"]:
        for key in ("inputs", "kernels", "engine_layers", "requested_precision", "kind", "onnx_nodes"):
            lay.pop(key, None)
        for out in lay["outputs"]:
            out["local"] = None
            for key in ("cand_absmax", "ref_rms", "cand_rms"):
                out.pop(key, None)
    data["tolerance"] = None
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    report = load_report(path)
    app = LayerdiffApp(report, path)
    selected = run(app, "w", "d", "bracketleft", "bracketright", "g", "question_mark", "escape", "s", "p",
                   check=lambda a: a.selected)
    assert selected is not None


# -- the command lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (None, "report not found"),
    ("{not json", "is not a layerdiff report"),
    ('{"schema": "layerdiff.report/9"}', "has schema 'layerdiff.report/9'"),
])
def test_tui_refuses_broken_reports_in_one_line(cli, tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    code, out, err = cli("tui", path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_tui_needs_a_terminal(cli, cnn_report):
    code, _, err = cli("tui", cnn_report)  # the test runner's stdin is no terminal
    assert code == 2 and "needs a terminal" in err


def test_compare_tui_refuses_without_a_terminal_before_running(cli, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs",
                       FIXTURES / "cnn_inputs", "-o", out, "--tui")
    assert code == 2 and "--tui needs a terminal" in err and not out.exists()


def test_compare_tui_opens_the_report_it_wrote(cli, tmp_path, monkeypatch):
    import layerdiff.cli as cli_module

    opened = []
    monkeypatch.setattr(cli_module.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(cli_module.sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(cli_module, "open_tui", lambda report, path, inputs: opened.append((report, path)))
    out = tmp_path / "r.json"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs",
                       FIXTURES / "cnn_inputs", "-o", out, "--tui")
    assert code == 0, err
    (report, path), = opened
    assert str(path) == str(out) and report.to_dict() == load_report(out).to_dict()


def test_plot_writes_a_picture_with_the_worst_and_the_first_divergent(cli, diverging_report, tmp_path):
    pytest.importorskip("matplotlib")
    report = load_report(diverging_report)
    svg = tmp_path / "error.svg"
    code, out, err = cli("plot", diverging_report, "-o", svg)
    assert code == 0, err
    text = svg.read_text()
    assert f"first divergent: {report.first_divergence.layer}" in text
    assert rank_layers(report)[0].name in text
    code, _, err = cli("plot", diverging_report, "-o", tmp_path / "error.gif")
    assert code == 2 and "by the suffix of -o" in err and not (tmp_path / "error.gif").exists()


def test_the_charts_points_skip_constants_and_keep_every_spike():
    from layerdiff.plot import envelope, error_series

    report = bench.synthetic_report(500)
    at, series = error_series(report.layers)
    shown = [lay for lay in report.layers if lay.kind != "constant"]
    assert set(at) == {lay.name for lay in shown}  # no Constant is drawn
    assert all(at[lay.name] == lay.index for lay in shown)  # each row at its # as the table numbers it
    points = series["local_cosine"]
    spike = max(points, key=lambda p: p[1])
    lo, hi = min(at.values()), max(at.values())
    binned = envelope(points, lo, hi, 37)
    assert len(binned) <= 37 and max(y for _, y in binned) == spike[1]
    width = (hi - lo + 1) / 37
    for x, y in binned:  # each bin shows the worst of the points that fall in it
        inside = [q for p, q in points if min(int((p - lo) / width), 36) == int((x - lo) / width)]
        assert y == max(inside)


def test_the_plot_breaks_its_line_at_rows_not_compared_and_leaves_zero_states_out(tmp_path):
    import math

    from layerdiff.plot import error_series, line_points

    import layerdiff

    report = layerdiff.compare(FIXTURES / "lstm_state.onnx", "ort-int8", reference_provider="cpu")
    at, series = error_series(report.layers)
    zeros = [lay for lay in report.layers if lay.name in ("h0_zeros", "c0_zeros")]
    assert zeros and all(lay.cosine == 1.0 for lay in zeros)  # exact zeros: the defined cosine of 0 and 0
    assert not {at[lay.name] for lay in zeros} & {x for x, _ in series["cosine"]}  # not drawn as no error
    xs, ys = line_points(at, series["cosine"])
    assert math.isnan(ys[xs.index(at["h0_zeros"])])  # the line breaks there


# -- Model Explorer ------------------------------------------------------------------------------------


def _unnamed_model(path):
    """x -> Relu (unnamed) -> Mul 'dup' -> Add 'dup' -> Relu 'node' -> y: the adapter renames these."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.5, -1.0, 2.0, 0.25])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["a", "w"], ["b"], name="dup"),
             helper.make_node("Add", ["b", "w"], ["c"], name="dup"), helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"], name="node")]
    graph = helper.make_graph(nodes, "odd_names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)


@pytest.mark.parametrize("which", ["cnn", "odd"])
def test_model_explorer_node_data_is_keyed_by_the_adapters_ids(cli, tmp_path, which):
    model = FIXTURES / "cnn.onnx"
    if which == "odd":
        model = tmp_path / "odd.onnx"
        _unnamed_model(model)
    report = tmp_path / "r.json"
    assert cli("compare", model, "--candidate", "fake", "-o", report, "-q")[0] == 0
    out = tmp_path / "nodedata.json"
    code, text, err = cli("export", report, "--format", "model-explorer", "-o", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    (graph_id, graph), = data.items()
    proto = onnx.load(model)
    assert graph_id == proto.graph.name and graph["results"]
    assert all(0.0 <= r["value"] <= 2.0 for r in graph["results"].values())
    adapter = pytest.importorskip("model_explorer_onnx.main")
    converted = adapter.ONNXAdapter().convert(str(model), {})["graphs"]
    ids = {n.id for g in converted for n in g.nodes if g.id == graph_id}
    assert set(graph["results"]) <= ids and ids  # every key names one of the adapter's nodes
    if which == "odd":
        assert {"node", "dup", "dup_1", "node_1", "node_2"} <= ids


def test_model_explorer_node_data_is_what_the_builder_writes(cli, diverging_report, tmp_path):
    ndb = pytest.importorskip("model_explorer.node_data_builder")
    out = tmp_path / "nd.json"
    code, _, err = cli("export", diverging_report, "--format", "model-explorer", "--metric", "accumulated", "-o", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    (gid, g), = data.items()
    built = ndb.ModelNodeData(graphsData={gid: ndb.GraphNodeData(
        results={k: ndb.NodeDataResult(value=v["value"]) for k, v in g["results"].items()}, name=g["name"],
        thresholds=[ndb.ThresholdItem(value=t["value"], bgColor=t["bgColor"]) for t in g["thresholds"]])})
    assert json.loads(built.to_json_string()) == data
    report = load_report(diverging_report)
    fc = report.layer("fc")
    assert math.isclose(g["results"]["fc"]["value"], 1 - fc.cosine, abs_tol=1e-12)


def test_model_explorer_export_refuses_another_model(cli, cnn_report, tmp_path):
    other = tmp_path / "odd.onnx"
    _unnamed_model(other)
    code, _, err = cli("export", cnn_report, "--format", "model-explorer", "--model", other, "-o", tmp_path / "n.json")
    assert code == 2 and "not the model the report was made on" in err
    assert not (tmp_path / "n.json").exists()


# -- the look (pytest-textual-snapshot; a synthetic report, so the numbers are the same on every machine) --


def test_snapshot_main_screen(snap_compare):
    from layerdiff.tui.app import LayerdiffApp

    assert snap_compare(LayerdiffApp(bench.synthetic_report(60)), terminal_size=(80, 24))


def test_snapshot_detail_of_the_worst_layer_wide(snap_compare):
    from layerdiff.tui.app import LayerdiffApp

    assert snap_compare(LayerdiffApp(bench.synthetic_report(60)), press=["w"], terminal_size=(160, 40))


def test_the_precision_column_says_what_the_console_says(cnn_report):
    """A new user saw `fp32` in the TUI where the console said `fp32q` for the same row (a float kernel
    reading INT8 through DequantizeLinear): both show LayerDiff.precision_label."""
    from layerdiff.console import precision_label
    from layerdiff.tui.state import row_view

    from layerdiff.report import load_report

    report = load_report(cnn_report)
    for layer in report.layers:
        text = row_view(layer).precision_text
        assert text.split(">")[-1] == precision_label(layer), layer.name
    if any(lay.dequantized_inputs and lay.precision == "fp32" for lay in report.layers):
        assert any(row_view(lay).precision_text.endswith("fp32q") for lay in report.layers)


def test_help_scrolls_where_the_terminal_is_short(cnn_report):
    """At 80x24 the help did not fit (b, x and q were cut off, and any key closed it): arrows and
    PgUp/PgDn scroll it, its last key can be brought into view, and another key closes it."""
    from textual.containers import VerticalScroll

    from layerdiff.tui.app import LayerdiffApp
    from layerdiff.tui.screens import HelpScreen

    app = LayerdiffApp(load_report(cnn_report), cnn_report)

    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            view = app.screen.query_one(VerticalScroll)
            assert view.max_scroll_y > 0  # it does not fit at 24 rows
            await pilot.press("pagedown", "end")
            await pilot.pause()
            scrolled = (isinstance(app.screen, HelpScreen), view.scroll_y)
            await pilot.press("x")
            await pilot.pause()
            return scrolled, isinstance(app.screen, HelpScreen)

    (still_open, y), open_after = asyncio.run(go())
    assert still_open and y > 0 and not open_after


# -- at 80x24, as a new user saw it (issue 17) ---------------------------------------------------------


def _rendered(widget) -> str:
    """What `widget` shows on screen, its lines joined (whitespace left out: see _flat)."""
    from textual.geometry import Region

    lines = widget.render_lines(Region(0, 0, widget.outer_size.width, widget.outer_size.height))
    return _flat(" ".join(s.text for s in lines))


def _flat(text: str) -> str:
    """Text without its whitespace: a path too long for a line is folded inside a word."""
    return "".join(text.split())


def test_messages_wrap_rather_than_being_cut_at_80_columns(cnn_report, tmp_path):
    """The pin refusal and "recipe written to ..." were cut mid-sentence on the one status line."""
    from layerdiff.tui.app import LayerdiffApp

    report = load_report(cnn_report)
    copy = tmp_path / "a-report-saved-under-a-rather-long-directory-name" / "report.json"
    copy.parent.mkdir()
    copy.write_text(cnn_report.read_text())
    conversion = next(lay.name for lay in report.layers if lay.kind == "conversion")
    said: list[str] = []

    def status(app):
        return _rendered(app.query_one("#status"))

    app = LayerdiffApp(report, copy)
    original = app._say
    app._say = lambda message: (said.append(message), original(message))
    refusal = run(app, lambda a: a._select(conversion), "p", check=status, size=(80, 24))
    assert len(said[-1]) > 80 and refusal == _flat(said[-1])
    app = LayerdiffApp(report, copy)
    original2 = app._say
    app._say = lambda message: (said.append(message), original2(message))
    written = run(app, lambda a: a._select("conv2"), "p", "e", "enter", check=status, size=(80, 24))
    assert said[-1].startswith("recipe written to ") and len(said[-1]) > 80 and written == _flat(said[-1])


@pytest.mark.parametrize("width", [40, 80, 120])
def test_the_bisect_question_is_shown_whole_at_any_width(cnn_report, width):
    from textual.widgets import Static

    from layerdiff.tui.app import LayerdiffApp
    from layerdiff.tui.screens import AskScreen

    app = LayerdiffApp(load_report(cnn_report), cnn_report)

    def dialog(app):
        assert isinstance(app.screen, AskScreen)
        room = app.screen.query_one("#dialog").content_region
        texts = list(app.screen.query(Static))
        assert all(room.contains_region(s.region) for s in texts)  # a Label wider than the dialog was cut
        return [_rendered(s) for s in texts]

    shown = run(app, "b", check=dialog, size=(width, 30))
    assert shown[0] == _flat("Bisect: the lowest cosine of the final outputs to accept (worst sample)")
    assert shown[-1].endswith(_flat("Enter: yes Esc: cancel")) and _flat("x cancels") in shown[-1]


def test_the_footer_shows_every_key_it_names_within_80_columns(cnn_report):
    """The footer was cut after "e exp" (no g, no b) with the command palette's ^p beside it: it now
    names "? keys" first, and every key it shows fits."""
    from layerdiff.tui.app import LayerdiffApp

    app = LayerdiffApp(load_report(cnn_report), cnn_report)

    def keys(app):
        return [(k.key_display or k.key, k.description, k.region) for k in app.screen.query("FooterKey")]

    shown = run(app, check=keys, size=(80, 24))
    assert shown[0][:2] == ("?", "keys")
    assert all(region.width and region.right <= 80 for _, _, region in shown), shown
    footer_actions = {b.action for b in LayerdiffApp.BINDINGS if b.show}
    assert {"help", "chart", "bisect", "export", "filter"} <= footer_actions
    assert len(shown) == len(footer_actions)


def test_w_and_d_keep_the_filter_and_other_jumps_say_what_they_cleared(cnn_report, diverging_report):
    """w and d cleared an active filter without a word: they now take the worst (first divergent) row of
    those the filter keeps; [ and ] still show a row the filter hides, and say they cleared it."""
    from layerdiff.tui.app import LayerdiffApp
    from layerdiff.tui.state import row_view

    report = load_report(cnn_report)
    said: list[str] = []

    def filtered(text):
        def set_filter(app):
            app._say = lambda message: (said.append(message), type(app)._say(app, message))
            app.view = ViewState(filter_text=text)
        return set_filter

    app = LayerdiffApp(report, cnn_report)
    selected, kept = run(app, filtered("op:Conv"), "w", check=lambda a: (a.selected, a.view.filter_text))
    assert kept == "op:Conv"
    assert selected == next(lay.name for lay in rank_layers(report) if lay.op == "Conv")
    assert selected != rank_layers(report)[0].name  # the report's worst row is no Conv: w used to leave the filter

    div = load_report(diverging_report)
    relu_divergent = [lay.name for lay in div.layers if lay.diverges and lay.op == "Relu"]
    app = LayerdiffApp(div, diverging_report)
    said.clear()
    selected, kept = run(app, filtered("op:Relu"), "d", check=lambda a: (a.selected, a.view.filter_text))
    assert kept == "op:Relu" and div.first_divergence.layer not in relu_divergent
    if relu_divergent:
        assert selected == relu_divergent[0]
    else:
        assert said[-1] == "no divergent layer among the rows the filter 'op:Relu' keeps (Esc clears it)"

    graph = Graph.of(report.layers)
    rows = {lay.name: row_view(lay) for lay in report.layers}
    up = follow(graph, rows, "conv2", upstream=True)
    assert report.layer(up).op != "Conv"
    app = LayerdiffApp(report, cnn_report)
    said.clear()
    selected, kept = run(app, filtered("conv2"), lambda a: a._select("conv2"), "left_square_bracket",
                         check=lambda a: (a.selected, a.view.filter_text))
    assert selected == up and kept == ""
    assert said[-1] == f"filter 'conv2' cleared to show {up}"


def _with_output_cosine(report, cosine, min_cosine=None):
    from dataclasses import replace

    from layerdiff.report import Tolerance

    outputs = tuple(replace(o, accumulated=replace(o.accumulated, worst=replace(o.accumulated.worst, cosine=cosine)))
                    for o in report.outputs)
    tol = Tolerance(min_cosine, True, ()) if min_cosine is not None else None
    return replace(report, outputs=outputs, tolerance=tol)


@pytest.mark.parametrize("cosine, min_cosine", [
    (0.9999999, None),  # halfway is 0.99999995: 6 digits printed it as 1, which bisect found unreachable
    (0.999999999, None),
    (0.99, None),
    (0.9999999, 0.999),  # the report's --min-cosine is below the candidate's: met with no pin, not proposed
    (0.9999999, 1.0),
])
def test_bisect_proposes_a_tolerance_it_can_reach(cnn_report, cosine, min_cosine):
    from textual.widgets import Input

    from layerdiff.tui.app import LayerdiffApp

    report = _with_output_cosine(load_report(cnn_report), cosine, min_cosine)
    app = LayerdiffApp(report, cnn_report)
    proposed = run(app, "b", check=lambda a: a.screen.query_one(Input).value)
    assert cosine < float(proposed) < 1.0, proposed
    assert math.isclose(float(proposed), (cosine + 1) / 2, rel_tol=0, abs_tol=(1 - cosine) / 20)


def test_bisect_proposes_the_reports_tolerance_where_pins_can_reach_it(cnn_report):
    from textual.widgets import Input

    from layerdiff.tui.app import LayerdiffApp

    report = _with_output_cosine(load_report(cnn_report), 0.9999, 0.99999987)
    app = LayerdiffApp(report, cnn_report)
    assert float(run(app, "b", check=lambda a: a.screen.query_one(Input).value)) == 0.99999987


def test_a_cosine_under_1_is_never_printed_as_1():
    from layerdiff.tui.state import cosine_text

    assert cosine_text(0.999922074413636) == "0.999922"
    for v in (0.99999995, 0.9999999996, 1 - 2 ** -52):
        assert float(cosine_text(v)) < 1.0 and cosine_text(v).startswith("0.99999")
    assert cosine_text(1.0) == "1.000000"


def test_the_summary_line_leads_with_the_output_cosine():
    """A new user's header cut the output cosine off at 80 columns behind a long model name."""
    from layerdiff.tui.app import LayerdiffApp

    app = LayerdiffApp(bench.synthetic_report(60))
    assert str(app._summary()).startswith("output cos ")
