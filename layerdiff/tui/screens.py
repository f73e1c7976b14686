"""The TUI's dialogs: the help screen listing every key, and a one-line question (the recipe's file
name, bisect's cosine)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

KEYS = (
    ("arrows, PgUp/PgDn", "move through the layers"),
    ("s / r", "sort by the next column / reverse (or click a header)"),
    ("/", "filter: op:Conv,Gemm prec:int8 and parts of names; Enter keeps it"),
    ("Esc", "clear the filter"),
    ("c", "show or hide Constant rows"),
    ("w", "jump to the worst layer (most local error)"),
    ("d", "jump to the first divergent layer"),
    ("a", "jump to the layer that multiplies the error it reads most (amp column)"),
    ("[ / ]", "go to the producer / consumer with the worst error"),
    ("g", "show the error chart (1 - cosine along the network)"),
    ("p or space", "pin the layer's ONNX nodes to FP32, or unpin"),
    ("e", "export the pinned layers as a recipe (layerdiff.recipe/1)"),
    ("b", "bisect: search the fewest pins for a cosine (runs the models)"),
    ("x", "cancel a running bisect"),
    ("?", "this help"),
    ("q", "quit"),
)


class HelpScreen(ModalScreen[None]):
    """Every key, in a grid whose descriptions wrap beside their keys; it scrolls where the terminal is
    too short for all of it (arrows, PgUp/PgDn), and any other key closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]
    SCROLL_KEYS = frozenset({"up", "down", "pageup", "pagedown", "home", "end"})

    def compose(self) -> ComposeResult:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold", no_wrap=True)
        grid.add_column()
        for key, what in KEYS:
            grid.add_row(key, what)
        foot = Text("\nflags: N new NaN/Inf, R beyond FP16's range, D diverges; prec a>b: asked a, ran b; "
                    "fp32q a float kernel on INT8 values\narrows scroll; any of Esc, q, ? closes", style="dim")
        with VerticalScroll(id="dialog"):
            yield Static(Text("layerdiff tui", style="bold"))
            yield Static(grid)
            yield Static(foot)

    def on_key(self, event) -> None:
        if event.key in self.SCROLL_KEYS:
            return  # the scroll view's own bindings move it
        if event.key not in ("escape", "q", "question_mark"):
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class AskScreen(ModalScreen[str | None]):
    """One question, one answer line (Enter answers, Esc cancels)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, question: str, value: str, note: str = "") -> None:
        super().__init__()
        self.question, self.value, self.note = question, value, note

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.question))  # a Static wraps at any width (a Label was cut); text, not markup
            yield Input(self.value, id="answer")
            yield Static(Text(self.note + ("\n" if self.note else "") + "Enter: yes   Esc: cancel", style="dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(AskScreen):
    pass
