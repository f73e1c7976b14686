"""The report viewers must never die on a valid report nor hide their own failure (issue 17): a TUI that
cannot start, or that fails while running, is one line on stderr and exit 3 (a bug or a broken
install), never a Textual traceback and exit 0; reports with no layers, no metrics or names that look
like console markup open, and `g` charts them; `layerdiff plot` ignores a bad MPLBACKEND and keeps
matplotlib's warnings off stderr."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from dataclasses import replace

import pytest

from layerdiff.report import load_report, write_report
from tests.conftest import FIXTURES, ROOT, load_script

bench = load_script("bench_tui")


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    """A small saved report (synthetic: no model run needed)."""
    path = tmp_path_factory.mktemp("tuifail") / "r.json"
    write_report(bench.synthetic_report(30), path)
    return path


def _terminal(monkeypatch):
    """Pretend stdin and stdout are a terminal (the TUI refuses to start otherwise)."""
    from layerdiff import cli_tui

    monkeypatch.setattr(cli_tui.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(cli_tui.sys.stdout, "isatty", lambda: True, raising=False)


def _headless(monkeypatch, *keys):
    """Run the app headless (no terminal driver) when the command runs it, pressing `keys`."""
    from layerdiff.tui.app import LayerdiffApp

    original = LayerdiffApp.run

    async def press(pilot):
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("q")

    monkeypatch.setattr(LayerdiffApp, "run", lambda self, **kw: original(self, headless=True, size=(80, 24),
                                                                         auto_pilot=press))


def _one_internal_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("layerdiff: internal error (") and "Traceback" not in err
    for word in words:
        assert word in lines[0]


# -- a TUI that cannot start, or fails while running ---------------------------------------------------


@pytest.mark.parametrize("css", [None, "#summary { height: ; }\n"], ids=["missing", "broken"])
def test_a_tui_that_cannot_load_its_stylesheet_exits_3_in_one_line(cli, report_path, tmp_path, monkeypatch, css):
    """A new user's install lacked layerdiff/tui/app.tcss: a 60-line StylesheetError traceback, and exit 0."""
    from layerdiff.tui.app import LayerdiffApp

    sheet = tmp_path / "app.tcss"
    if css is not None:
        sheet.write_text(css)
    monkeypatch.setattr(LayerdiffApp, "CSS_PATH", str(sheet))
    _terminal(monkeypatch)
    _headless(monkeypatch)
    code, _, err = cli("tui", report_path)
    assert code == 3
    _one_internal_error(err, "StylesheetError")


def test_compare_tui_that_cannot_start_exits_3_and_keeps_the_report(cli, tmp_path, monkeypatch):
    from layerdiff.tui.app import LayerdiffApp

    monkeypatch.setattr(LayerdiffApp, "CSS_PATH", str(tmp_path / "gone.tcss"))
    import layerdiff.cli as cli_module

    monkeypatch.setattr(cli_module.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(cli_module.sys.stdout, "isatty", lambda: True, raising=False)
    _headless(monkeypatch)
    out = tmp_path / "r.json"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs",
                       FIXTURES / "cnn_inputs", "-o", out, "--tui")
    assert code == 3
    _one_internal_error(err, "StylesheetError", "gone.tcss")
    assert load_report(out).candidate.spec == "ort-int8"


def test_an_error_inside_the_running_tui_is_not_exit_0(cli, report_path, monkeypatch):
    from layerdiff.tui.app import LayerdiffApp

    def broken(self):
        raise ZeroDivisionError("a bug in an action")

    monkeypatch.setattr(LayerdiffApp, "action_worst", broken)
    _terminal(monkeypatch)
    _headless(monkeypatch, "w")
    code, _, err = cli("tui", report_path)
    assert code == 3
    _one_internal_error(err, "ZeroDivisionError: a bug in an action")


def test_a_tui_that_quits_normally_exits_0(cli, report_path, monkeypatch):
    _terminal(monkeypatch)
    _headless(monkeypatch, "w", "g", "s")
    code, _, err = cli("tui", report_path)
    assert code == 0 and err == ""


def test_in_a_real_terminal_a_missing_stylesheet_is_one_line_and_exit_3(report_path, tmp_path):
    """The command as a user runs it, in a pseudo-terminal (the real terminal driver), with the
    stylesheet gone from the install."""
    script = ("import sys; from layerdiff.tui.app import LayerdiffApp; "
              f"LayerdiffApp.CSS_PATH = {str(tmp_path / 'gone.tcss')!r}; "
              f"from layerdiff.cli import main; sys.exit(main(['tui', {str(report_path)!r}]))")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", script], stdin=follower, stdout=follower,
                              stderr=subprocess.PIPE, cwd=ROOT, timeout=120, text=True, check=False,
                              env={**os.environ, "TERM": "xterm-256color"})
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 3, proc.stderr
    _one_internal_error(proc.stderr, "StylesheetError", "gone.tcss")


# -- valid reports the TUI died on -----------------------------------------------------------------------


def _run(app, *keys, size=(80, 24), check=None):
    """Drive `app` headless; Textual re-raises an exception the app died of when run_test ends."""

    async def go():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for key in keys:
                await pilot.press(key)
                await pilot.pause()
            await pilot.pause()
            return check(app) if check else None

    return asyncio.run(go())


def _status(app) -> str:
    from textual.geometry import Region

    status = app.query_one("#status")
    lines = status.render_lines(Region(0, 0, status.outer_size.width, status.outer_size.height))
    return " ".join(" ".join(s.text for s in lines).split())


def test_the_chart_of_a_report_with_no_layers():
    from layerdiff.tui.app import LayerdiffApp

    report = replace(bench.synthetic_report(5), layers=())
    app = LayerdiffApp(report)
    shown, said = _run(app, "g", check=lambda a: (a.has_class("chart"), _status(a)))
    assert shown and "nothing to chart" in said
    app = LayerdiffApp(report)
    said = _run(app, "p", "s", "w", "d", check=_status)
    assert said.startswith("no divergent layer in this report")


def test_the_chart_of_a_report_whose_every_metric_is_null():
    """plotext raised TypeError on a log scale with no data."""
    from layerdiff.diffs import TensorDiff
    from layerdiff.tui.app import LayerdiffApp

    report = bench.synthetic_report(20)
    layers = tuple(replace(lay, outputs=tuple(TensorDiff(o.tensor, o.shape, None, None, None, "not captured")
                                              for o in lay.outputs)) for lay in report.layers)
    report = replace(report, layers=layers)
    assert all(lay.cosine is None and lay.local_cosine is None for lay in report.layers)
    app = LayerdiffApp(report)
    shown, said = _run(app, "g", check=lambda a: (a.has_class("chart"), _status(a)))
    assert shown and "nothing to chart" in said


MARKUP = "[/bold]x"


def test_names_that_look_like_console_markup_are_shown_as_they_are():
    """A layer named `[/bold]x` killed the TUI at start (rich MarkupError): names, the model's file name
    and the filter are text, not markup."""
    from textual.geometry import Region
    from textual.widgets import Input

    from layerdiff.tui.app import LayerdiffApp

    report = bench.synthetic_report(20)
    first = replace(report.layers[0], name=MARKUP, onnx_nodes=(MARKUP,), kernels=("[red]k",),
                    outputs=tuple(replace(o, tensor="[/]t") for o in report.layers[0].outputs))
    report = replace(report, layers=(first, *report.layers[1:]),
                     model=replace(report.model, path="/m/[b]model.onnx"))
    app = LayerdiffApp(report)

    def seen(app):
        detail = app.query_one("#detail-body")
        text = " ".join(s.text for s in detail.render_lines(Region(0, 0, *detail.outer_size)))
        summary = app.query_one("#summary")
        head = summary.render_lines(Region(0, 0, summary.outer_size.width, 1))[0].text
        return text, head, _status(app)

    async def go():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            before = seen(app)
            await pilot.press("slash")
            app.query_one("#filter", Input).value = "[/b"
            await pilot.press("enter")
            await pilot.pause()
            return before, seen(app)

    (detail, head, _), (_, _, status) = asyncio.run(go())
    assert MARKUP in detail and "[red]k" in detail and "[/]t" in detail
    assert "[b]model.onnx" in head
    assert "filter: [/b" in status


# -- layerdiff plot ----------------------------------------------------------------------------------------


def _plot(report, out, **env):
    return subprocess.run([sys.executable, "-m", "layerdiff.cli", "plot", str(report), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                          env={**os.environ, **env})


def test_plot_ignores_a_bad_mplbackend_and_writes_with_agg(report_path, tmp_path):
    """MPLBACKEND=bogus made `import matplotlib` raise: exit 3 (internal error). plot writes a file, for
    which Agg is the backend whatever the environment asks for."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "x.png"
    proc = _plot(report_path, out, MPLBACKEND="bogus")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_warnings_do_not_reach_stderr(tmp_path):
    """A name no font has a glyph for made matplotlib warn on stderr (UserWarning: Glyph ... missing)."""
    pytest.importorskip("matplotlib")
    report = bench.synthetic_report(30)
    odd = "\ue000\ue001 layer"  # private-use characters: in no font
    layers = tuple(replace(lay, name=f"{odd} {lay.index}") for lay in report.layers)
    path = tmp_path / "r.json"
    write_report(replace(report, layers=layers), path)
    out = tmp_path / "x.png"
    proc = _plot(path, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and out.is_file()
    assert "plot written to" in proc.stdout


def test_plot_draws_names_with_dollar_signs_as_they_are(tmp_path, cli):
    """Matplotlib reads $...$ as mathematics: a layer named `a$\\b$` made savefig raise (exit 3)."""
    pytest.importorskip("matplotlib")
    report = bench.synthetic_report(30)
    layers = tuple(replace(lay, name=f"a$\\b$^{lay.index}") for lay in report.layers)
    path = tmp_path / "r.json"
    write_report(replace(report, layers=layers), path)
    out = tmp_path / "x.svg"
    code, _, err = cli("plot", path, "-o", out, "--title", "cost $5 and $\\x$")
    assert code == 0, err
    text = out.read_text()  # the SVG names each text it draws in a comment: as shown, not as mathematics
    assert "<!-- cost $5 and $\\x$ -->" in text and "<!-- most local error: 1 a$\\b$^" in text
