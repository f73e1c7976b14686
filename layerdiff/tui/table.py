"""The layer table: a virtual list that renders only the lines on screen (Textual's line API), so a
report of 10,000 layers opens, sorts and filters at once. Textual's DataTable measures every cell of
every row when rows are added (5 s for 10,000 layers here), which is what this widget avoids.

The first line is the header (fixed; a click on it posts `HeaderClicked`); the cursor row posts
`Highlighted` with its row key when it moves."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from layerdiff.tui.detail import cos_text, num
from layerdiff.tui.state import COLUMNS, RowView

GAP = 1  # spaces between columns


def row_cells(row: RowView, pinned: bool) -> tuple:
    prec = Text(row.precision_text, style="bold yellow" if ">" in row.precision_text else "")
    return (
        Text("●" if pinned else " ", style="bold magenta"),
        str(row.index),
        row.key,
        prec,
        cos_text(row.local_cosine),
        cos_text(row.cosine),
        Text(row.flags, style="bold red" if row.nonfinite else "yellow" if row.flags else ""),
        num(row.max_abs, ".3g"),
        num(row.sqnr, ".1f"),
        num(row.amplification, ".2g"),
        num(row.time_ms, ".3g"),
        row.op,
    )


# table columns in display order: (key, header, width); the numbers first and the op last, so that an
# 80-column terminal shows every metric without scrolling sideways
# (the index column is as wide as the largest index; the layer column takes the width left over)
TABLE = (("pin", "P", 1), ("index", "#", 5), ("name", "layer", 22), ("precision", "prec", 9),
         ("local_cosine", "loc cos", 8), ("cosine", "acc cos", 8), ("flags", "flg", 3),
         ("max_abs", "max abs", 8), ("sqnr", "SQNR", 6), ("amplification", "amp", 4), ("time_ms", "ms", 6),
         ("op", "op", 16))
assert {k for k, _, _ in TABLE} == {k for k, _, _ in COLUMNS}


def table_for(timed: bool):
    """(columns, cells) of the table: the time column only where the report has per-row times."""
    if timed:
        return TABLE, row_cells
    at = [k for k, _, _ in TABLE].index("time_ms")
    return tuple(c for c in TABLE if c[0] != "time_ms"), lambda row, pinned: tuple(
        c for i, c in enumerate(row_cells(row, pinned)) if i != at)


NAME_WIDTH = (12, 48)  # the layer column takes the room left over, within these bounds


class LayerTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
        Binding("pageup", "page(-1)", show=False), Binding("pagedown", "page(1)", show=False),
        Binding("home", "to(0)", show=False), Binding("end", "to(-1)", show=False),
    ]
    DEFAULT_CSS = """
    LayerTable { background: $surface; }
    """
    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class Highlighted(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class HeaderClicked(Message):
        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    def __init__(self, columns: Sequence[tuple[str, str, int]], cells: Callable[[RowView, bool], Sequence[Text]],
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.columns = tuple(columns)
        self.cells = cells
        self.rows: list[RowView] = []
        self.position: dict[str, int] = {}
        self.pins: frozenset[str] = frozenset()
        self.width_total = sum(w for _, _, w in self.columns) + GAP * (len(self.columns) + 1)

    def on_resize(self, event) -> None:
        self._layout()

    def _layout(self) -> None:
        """The index column as wide as the largest index; the layer (name) column takes the width the
        others leave, within NAME_WIDTH."""
        index = max(2, len(str(max((r.index for r in self.rows), default=0))))
        widths = {k: index if k == "index" else w for k, _, w in self.columns}
        others = sum(w for k, w in widths.items() if k != "name") + GAP * (len(self.columns) + 1)
        room = self.size.width - 2 - others  # less the vertical scrollbar
        widths["name"] = max(NAME_WIDTH[0], min(NAME_WIDTH[1], room))
        self.columns = tuple((k, h, widths[k]) for k, h, _ in self.columns)
        self.width_total = others + widths["name"]
        self.virtual_size = Size(self.width_total, len(self.rows) + 1)
        self.refresh()

    # -- content -------------------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[RowView], pins: frozenset[str], keep: str | None = None) -> None:
        """Show `rows` in this order; the cursor stays on `keep` where it is still shown."""
        self.rows = list(rows)
        self.position = {r.key: i for i, r in enumerate(self.rows)}
        self.pins = pins
        self._layout()
        at = self.position.get(keep, 0) if keep is not None else 0
        self.cursor = min(at, max(0, len(self.rows) - 1))
        self.refresh()

    def set_pins(self, pins: frozenset[str]) -> None:
        self.pins = pins
        self.refresh()

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.rows]

    @property
    def current(self) -> str | None:
        return self.rows[self.cursor].key if self.rows else None

    def move_to(self, key: str) -> bool:
        if key not in self.position:
            return False
        self.cursor = self.position[key]
        return True

    # -- the cursor ----------------------------------------------------------------------------------

    def watch_cursor(self, cursor: int) -> None:
        if not self.rows:
            return
        body = max(1, self.scrollable_content_region.height - 1)  # less the header (and a scrollbar)
        top = round(self.scroll_offset.y)
        if cursor < top:
            self.scroll_to(y=cursor, animate=False)
        elif cursor >= top + body:
            self.scroll_to(y=cursor - body + 1, animate=False)
        self.refresh()
        self.post_message(self.Highlighted(self.rows[cursor].key))

    def _clamp(self, i: int) -> int:
        return max(0, min(i, len(self.rows) - 1))

    def action_move(self, step: int) -> None:
        if self.rows:
            self.cursor = self._clamp(self.cursor + step)

    def action_page(self, step: int) -> None:
        if self.rows:
            self.cursor = self._clamp(self.cursor + step * max(1, self.scrollable_content_region.height - 2))

    def action_to(self, where: int) -> None:
        if self.rows:
            self.cursor = self._clamp(where if where >= 0 else len(self.rows) - 1)

    def on_click(self, event) -> None:
        if event.y == 0:
            x = event.x + round(self.scroll_offset.x)
            left = GAP
            for key, _, width in self.columns:
                if left <= x < left + width + GAP:
                    self.post_message(self.HeaderClicked(key))
                    return
                left += width + GAP
            return
        row = round(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self.rows):
            self.cursor = row

    # -- rendering -----------------------------------------------------------------------------------

    def _line(self, texts: Sequence[Text | str], style: Style) -> Strip:
        segments: list[Segment] = [Segment(" " * GAP, style)]
        for (_, _, width), cell in zip(self.columns, texts, strict=True):
            text = cell if isinstance(cell, Text) else Text(str(cell))
            text = text.copy()
            text.truncate(width, overflow="ellipsis", pad=True)
            for seg in text.render(self.app.console):
                segments.append(Segment(seg.text, style + seg.style if seg.style else style))
            segments.append(Segment(" " * GAP, style))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = round(self.scroll_offset.x), round(self.scroll_offset.y)
        width = self.size.width
        base = self.rich_style
        if y == 0:
            strip = self._line([Text(h, style="bold") for _, h, _ in self.columns], base)
        else:
            index = scroll_y + y - 1
            if index >= len(self.rows):
                return Strip.blank(width, base)
            row = self.rows[index]
            style = base
            if index == self.cursor:
                style = base + Style(bgcolor="grey30" if not self.has_focus else "dark_blue", bold=True)
            elif index % 2:
                style = base + Style(bgcolor="grey11")
            strip = self._line(self.cells(row, row.key in self.pins), style)
        return strip.crop_extend(scroll_x, scroll_x + width, base)
