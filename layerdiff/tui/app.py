"""`layerdiff tui REPORT.json`: the Textual application. It renders what layerdiff.tui.state computes
(rows, sorting, filters, pins, graph moves) and runs blocking work (bisect) in a worker thread; the
report itself is an immutable value read once."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Input, Static
from textual_plotext import PlotextPlot

from layerdiff.plot import envelope, error_series
from layerdiff.report import Report
from layerdiff.tui.detail import render_detail
from layerdiff.tui.recipes import RecipeActions
from layerdiff.tui.screens import HelpScreen
from layerdiff.tui.state import (
    SORTABLE,
    Filter,
    Graph,
    RowView,
    ViewState,
    cosine_text,
    first_divergent,
    follow,
    row_view,
    top_amplifier,
    visible,
    worst_row,
)
from layerdiff.tui.table import LayerTable, table_for

WIDE = 150  # columns from which the detail and the chart show side by side

class LayerdiffApp(RecipeActions, App[None]):
    """Browse a report. `report_path` (where it was read from) is only shown and protected from being
    overwritten by an export."""

    CSS_PATH = "app.tcss"
    TITLE = "layerdiff"
    # the footer shows these in this order, "? keys" first: at 80 columns every shown one fits (the
    # command palette's ^p is left out of it); ? lists all of them
    BINDINGS = [
        Binding("question_mark", "help", "keys"),
        Binding("q", "quit", "quit"),
        Binding("slash", "filter", "filter"),
        Binding("s", "sort_next", "sort"),
        Binding("w", "worst", "worst"),
        Binding("d", "divergent", "diverges"),
        Binding("a", "amplifier", "amplifies", show=False),
        Binding("g", "chart", "chart"),
        Binding("p,space", "pin", "pin"),
        Binding("e", "export", "export"),
        Binding("b", "bisect", "bisect"),
        Binding("r", "reverse", "reverse", show=False),
        Binding("c", "constants", "constants", show=False),
        Binding("left_square_bracket", "producer", "producer", show=False),
        Binding("right_square_bracket", "consumer", "consumer", show=False),
        Binding("x", "cancel_bisect", "cancel", show=False),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]
    view: reactive[ViewState] = reactive(ViewState, always_update=False, init=False)

    def __init__(self, report: Report, report_path: str | Path | None = None, *, bisect_inputs: str | None = None):
        super().__init__()
        self.report = report
        self.report_path = str(report_path) if report_path else None
        self.rows = [row_view(lay) for lay in report.layers]
        self.by_key = {r.key: r for r in self.rows}
        self.layers = {lay.name: lay for lay in report.layers}
        self.graph = Graph.of(report.layers)
        self.shown: list[RowView] = []
        self.selected: str | None = None
        self.bisect_inputs = bisect_inputs
        self._cancel = threading.Event()
        self._bisecting = False
        self.failure: Exception | None = None  # what the app died of, if it did (see _handle_exception)

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook for an exception the app dies of (an unreadable stylesheet, a bug in a handler).
        Textual prints its own traceback and leaves the exit code to the caller: the error is kept so that
        layerdiff.cli_tui.open_tui raises it once the terminal is restored (one line, exit 3)."""
        if self.failure is None:
            self.failure = error
        super()._handle_exception(error)

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(self._summary(), id="summary")
        yield Input(placeholder="op:Conv,Gemm prec:int8 name-part   (Enter keeps, Esc clears)", id="filter")
        yield LayerTable(*table_for(any(r.time_ms is not None for r in self.rows)), id="layers")
        with Horizontal(id="lower"):
            with VerticalScroll(id="detail"):
                yield Static(id="detail-body")
            yield PlotextPlot(id="chart")
        yield Static("", id="status")
        yield Footer(compact=True, show_command_palette=False)

    def _worst_output(self) -> float | None:
        """The candidate's worst-sample cosine over the final outputs (None where none has one)."""
        worst = [o.accumulated.worst.cosine for o in self.report.outputs if o.accumulated is not None]
        return None if not worst or any(math.isnan(w) for w in worst) else min(worst)

    def _summary(self) -> Text:
        r = self.report
        worst = self._worst_output()
        out = f"output cos {cosine_text(worst)}" if worst is not None else "output -"
        consts = sum(1 for lay in r.layers if lay.kind == "constant")
        rows = f"{len(r.layers) - consts} rows" + (f" +{consts} const" if consts else "")  # as compare counts them
        # the verdict first: a long model name cut at 80 columns must not take the output's cosine with it
        return Text(f"{out} · {r.candidate.spec} · {Path(r.model.path).name} · {rows} · "  # text: a name is not markup
                    f"{r.inputs.samples} sample(s){' (random)' if r.inputs.random else ''}")

    def on_mount(self) -> None:
        self._fill()
        self.query_one(LayerTable).focus()
        self._set_wide(self.size.width)

    def on_resize(self, event) -> None:
        self._set_wide(event.size.width)

    def _set_wide(self, width: int) -> None:
        self.set_class(width >= WIDE, "wide")

    # -- the table ---------------------------------------------------------------------------------

    def _fill(self, keep: str | None = None) -> None:
        """Show the rows the view keeps, in its order (the cursor stays on `keep` where shown)."""
        table = self.query_one(LayerTable)
        self.shown = visible(self.rows, self.view)
        table.set_rows(self.shown, self.view.pins, keep)
        self.query_one("#status", Static).update(self._status_line())

    def _status_line(self, extra: str = "") -> Text:
        v = self.view
        parts = [f"{len(self.shown)} of {len(self.rows)} rows", f"sorted by {v.sort}{' (reversed)' if v.reverse else ''}"]
        if v.filter_text:
            parts.append(f"filter: {v.filter_text}")
        if not v.show_constants and any(r.kind == "constant" for r in self.rows):
            parts.append("constants hidden (c)")
        if v.pins:
            parts.append(f"{len(v.pins)} pinned (e exports)")
        return Text(" · ".join(parts + ([extra] if extra else [])))  # the filter as typed, not markup

    def watch_view(self, old: ViewState, new: ViewState) -> None:
        table = self.query_one(LayerTable)
        if (old.filter_text, old.show_constants, old.sort, old.reverse) != \
                (new.filter_text, new.show_constants, new.sort, new.reverse) or \
                (new.sort == "pin" and old.pins != new.pins):
            self._fill(self.selected)
        elif old.pins != new.pins:
            table.set_pins(new.pins)
            self.query_one("#status", Static).update(self._status_line())

    def _select(self, key: str) -> None:
        self.query_one(LayerTable).move_to(key)

    def on_layer_table_highlighted(self, event: LayerTable.Highlighted) -> None:
        self._show(event.key)

    def on_layer_table_header_clicked(self, event: LayerTable.HeaderClicked) -> None:
        self.view = self.view.sorted_by(event.column)

    def _show(self, key: str) -> None:
        if key == self.selected:
            return
        self.selected = key
        self.query_one("#detail-body", Static).update(render_detail(self.layers[key], self.graph))
        if self.has_class("chart") or self.has_class("wide"):
            self._draw_chart()

    # -- the chart ---------------------------------------------------------------------------------

    def _draw_chart(self) -> bool:
        """Draw the chart; False where no row has a cosine to draw (the chart says so)."""
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        at, series = error_series(self.rows)
        if not any(series.values()):  # plotext fails on a log scale with no data
            plt.title("nothing to chart: no row of this report has a cosine")
            plot.refresh()
            return False
        lo, hi = min(at.values(), default=0), max(at.values(), default=0)
        bins = max(8, 2 * (plot.size.width - 12))  # braille: two points per cell, less the y axis
        # no legend box (plotext draws it over the data): the title says which is which
        for attr, color in (("cosine", "blue"), ("local_cosine", "red")):
            pts = envelope(series[attr], lo, hi, bins) if len(series[attr]) > bins else series[attr]
            if not pts:
                continue
            draw = plt.plot if attr == "cosine" else plt.scatter  # a path; one dot per layer
            draw([p[0] for p in pts], [p[1] for p in pts], color=color, marker="braille")
        plt.yscale("log")
        if hi > lo:
            plt.xticks(sorted({round(lo + (hi - lo) * k / 4) for k in range(5)}))
        lows = [g for pts in series.values() for _, g in pts]
        if lows:
            low, high = math.floor(math.log10(min(lows))), math.ceil(math.log10(max(lows)))
            room = max(1, min(4, (plot.size.height - 6) // 2))  # labels a row or more apart
            step = max(1, -(-(high - low) // room))
            ticks = [10.0 ** k for k in range(low, high + 1, step)]
            plt.yticks(ticks, [f"1e{round(math.log10(t))}" for t in ticks])
        where = f", selected #{self.by_key[self.selected].index}" if self.selected in at else ""
        plt.title(f"1 - cosine: accumulated (blue line), local (red dots){where}")
        plt.xlabel("row # (as the table numbers it)")
        if self.selected in at:
            plt.vline(at[self.selected], "magenta")
        plot.refresh()
        return True

    def action_chart(self) -> None:
        self.toggle_class("chart")
        if self.has_class("chart"):
            self.call_after_refresh(self._draw_chart_or_say)  # once laid out: the chart fits its size

    def _draw_chart_or_say(self) -> None:
        if not self._draw_chart():
            self._say("nothing to chart: no row of this report has a cosine (g goes back to the detail)")

    # -- moving ------------------------------------------------------------------------------------

    def _kept(self) -> set[str] | None:
        """The rows the filter keeps (Constants too, whatever c says); None without a filter."""
        if not self.view.filter_text:
            return None
        filt = Filter.parse(self.view.filter_text)
        return {r.key for r in self.rows if filt.keeps(r)}

    def _jump(self, key: str | None, what: str) -> None:
        """Select `key`. A row the view hides is shown, and the status line says what was changed for it
        (the filter cleared, the Constants shown)."""
        if key is None:
            where = (f"among the rows the filter '{self.view.filter_text}' keeps (Esc clears it)"
                     if self.view.filter_text else "in this report")
            self._say(f"no {what} {where}")
            return
        if key in {r.key for r in self.shown}:
            self._select(key)
            return
        row, view, changed = self.by_key[key], self.view, []
        if not Filter.parse(view.filter_text).keeps(row):
            changed.append(f"filter '{view.filter_text}' cleared")
            view = replace(view, filter_text="")
        if row.kind == "constant" and not view.show_constants:
            changed.append("Constants shown (c hides them)")
            view = replace(view, show_constants=True)
        self.view = view
        self._select(key)
        self._say(f"{' and '.join(changed)} to show {row.name}")

    def action_worst(self) -> None:  # the worst of the rows the filter keeps: the filter stays
        self._jump(worst_row(self.report, self._kept()), "layer with a local error")

    def action_divergent(self) -> None:
        self._jump(first_divergent(self.report, self._kept()), "divergent layer")

    def action_amplifier(self) -> None:  # the strongest amplifier of the rows the filter keeps
        self._jump(top_amplifier(self.report, self._kept()), "layer that amplifies the error it reads")

    def action_producer(self) -> None:
        if self.selected:
            self._jump(follow(self.graph, self.by_key, self.selected, upstream=True), "producer")

    def action_consumer(self) -> None:
        if self.selected:
            self._jump(follow(self.graph, self.by_key, self.selected, upstream=False), "consumer")

    def action_sort_next(self) -> None:
        order = [k for k, _, _ in self.query_one(LayerTable).columns if k in SORTABLE]
        nxt = order[(order.index(self.view.sort) + 1) % len(order)]
        self.view = self.view.sorted_by(nxt)

    def action_reverse(self) -> None:
        self.view = self.view.sorted_by(self.view.sort)

    def action_constants(self) -> None:
        self.view = replace(self.view, show_constants=not self.view.show_constants)

    # -- filtering ---------------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.add_class("filtering")
        box = self.query_one("#filter", Input)
        box.value = self.view.filter_text
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.view = replace(self.view, filter_text=event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            problems = Filter.parse(event.value).problems
            self.remove_class("filtering")
            self.query_one(LayerTable).focus()
            if problems:
                self._say("; ".join(problems))

    def action_clear_filter(self) -> None:
        self.remove_class("filtering")
        self.query_one(LayerTable).focus()
        if self.view.filter_text:
            self.view = replace(self.view, filter_text="")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

