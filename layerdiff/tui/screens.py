"""The TUI's dialogs: the help screen listing every key, and a one-line question (the recipe's file
name, bisect's cosine)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

KEYS = (
    ("arrows, PgUp/PgDn", "move through the layers"),
    ("s / r", "sort by the next column / reverse (or click a header)"),
    ("/", "filter: op:Conv,Gemm prec:int8 and parts of names; Enter keeps it"),
    ("Esc", "clear the filter"),
    ("c", "show or hide Constant rows"),
    ("w", "jump to the worst layer (most local error)"),
    ("d", "jump to the first divergent layer"),
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
    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("layerdiff tui\n\n", style="bold")
        for key, what in KEYS:
            text.append(f"{key:>18}  ", style="bold")
            text.append(what + "\n")
        text.append("\nflags: N new NaN/Inf, R beyond FP16's range, D diverges; prec a>b: asked a, ran b\n",
                    style="dim")
        text.append("any of Esc, q, ? closes", style="dim")
        with Vertical(id="dialog"):
            yield Static(text)

    def on_key(self, event) -> None:
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
            yield Label(self.question)
            yield Input(self.value, id="answer")
            yield Label(Text(self.note + ("\n" if self.note else "") + "Enter: yes   Esc: cancel", style="dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(AskScreen):
    pass
