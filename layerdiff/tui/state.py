"""What the TUI shows, as plain values and functions (no Textual here, so it is tested and timed on its
own): one `RowView` per report row, computed once; the `ViewState` (sort, filters, pins) as an
immutable value; `visible` gives the rows to show in order. The app (layerdiff.tui.app) only renders.

The filter is one line of words: `op:Conv,Gemm` keeps those op types, `prec:int8` those realised
precisions, any other word is a case-insensitive part of the row's name (all words must hold).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace

from layerdiff.diffs import LayerDiff
from layerdiff.report import Report, amplifiers, rank_layers

# (column key, header, width): the table's columns, in order
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("index", "#", 5), ("name", "layer", 24), ("op", "op", 14), ("precision", "prec", 10),
    ("local_cosine", "local cos", 10), ("cosine", "acc cos", 10), ("max_abs", "max abs", 9),
    ("sqnr", "SQNR dB", 8), ("amplification", "amp", 5), ("time_ms", "ms", 7), ("flags", "flags", 6),
    ("pin", "pin", 3),
)
SORTABLE = tuple(key for key, _, _ in COLUMNS)


@dataclass(frozen=True)
class RowView:
    """One row of the table, with the values it is sorted and coloured by."""

    key: str  # the report row's name (unique)
    index: int
    name: str
    op: str
    kind: str  # layer | conversion | constant
    precision: str  # realised
    requested: str | None
    local_cosine: float | None
    cosine: float | None
    max_abs: float | None
    sqnr: float | None
    nonfinite: bool  # the candidate has NaN/Inf the reference does not
    beyond_fp16: bool  # a reference value leaves FP16's range
    diverges: bool
    local_rel_rms: float | None
    pinnable: tuple[str, ...]  # the ONNX nodes a pin keeps in FP32 (none for conversions and constants)
    time_ms: float | None = None  # the candidate's kernel time (compare --bench, --trt-profile)
    time_share: float | None = None
    ref_time_ms: float | None = None
    label: str = ""  # the realised precision as the console's table shows it (fp32q, fp16*): LayerDiff.precision_label
    amplification: float | None = None  # how much it multiplies the error it reads (LayerDiff.amplification)

    @property
    def precision_text(self) -> str:
        """The realised precision as the console shows it, with the requested one where they differ
        ('fp32>fp16')."""
        shown = self.label or self.precision
        if self.requested and self.requested != self.precision and self.precision != "unknown":
            return f"{self.requested}>{shown}"
        return shown

    @property
    def flags(self) -> str:
        return ("N" if self.nonfinite else "") + ("R" if self.beyond_fp16 else "") + ("D" if self.diverges else "")


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _worst(values: Iterable[float | None], pick) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return pick(vals) if vals else None


def row_view(layer: LayerDiff) -> RowView:
    acc = [o.accumulated.worst for o in layer.outputs if o.accumulated is not None]
    return RowView(
        key=layer.name, index=layer.index, name=layer.name, op=layer.op, kind=layer.kind,
        precision=layer.precision, requested=layer.requested_precision,
        local_cosine=_finite(layer.local_cosine), cosine=_finite(layer.cosine),
        max_abs=_worst((m.max_abs for m in acc), max), sqnr=_worst((m.sqnr_db for m in acc), min),
        nonfinite=any(m.cand_nonfinite > m.ref_nonfinite for m in acc) or layer.local_nonfinite,
        beyond_fp16=any(m.exceeds_fp16 for m in acc), diverges=layer.diverges,
        local_rel_rms=_finite(layer.local_rel_rms),
        pinnable=layer.onnx_nodes if layer.kind == "layer" else (),
        time_ms=getattr(layer, "time_ms", None), time_share=getattr(layer, "time_share", None),
        ref_time_ms=getattr(layer, "ref_time_ms", None), label=layer.precision_label,
        amplification=_finite(layer.amplification))


@dataclass(frozen=True)
class Graph:
    """Producers and consumers of every row, by the tensors rows read (`LayerDiff.inputs`) and write."""

    producers: dict[str, tuple[str, ...]]
    consumers: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, layers: Sequence[LayerDiff]) -> Graph:
        writers: dict[str, list[str]] = {}
        for lay in layers:
            for o in lay.outputs:
                writers.setdefault(o.tensor, []).append(lay.name)
        producers: dict[str, tuple[str, ...]] = {}
        consumers: dict[str, list[str]] = {lay.name: [] for lay in layers}
        for lay in layers:
            found: dict[str, None] = {}
            for t in lay.inputs:
                for w in writers.get(t, ()):
                    if w != lay.name:
                        found[w] = None
            producers[lay.name] = tuple(found)
            for w in found:
                consumers[w].append(lay.name)
        return cls(producers, {k: tuple(dict.fromkeys(v)) for k, v in consumers.items()})


@dataclass(frozen=True)
class ViewState:
    sort: str = "index"
    reverse: bool = False
    filter_text: str = ""
    show_constants: bool = False
    pins: frozenset[str] = frozenset()  # row keys

    def sorted_by(self, column: str) -> ViewState:
        """Sort by `column`; the same column again reverses the order."""
        if column not in SORTABLE:
            raise ValueError(f"unknown column {column}")
        return replace(self, sort=column, reverse=not self.reverse if column == self.sort else False)

    def toggled_pin(self, key: str) -> ViewState:
        return replace(self, pins=self.pins ^ {key})


@dataclass(frozen=True)
class Filter:
    ops: frozenset[str] = frozenset()
    precisions: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> Filter:
        ops: set[str] = set()
        precs: set[str] = set()
        words: list[str] = []
        problems: list[str] = []
        for word in text.split():
            head, sep, rest = word.partition(":")
            if sep and head.lower() in ("op", "prec", "precision"):
                values = {v for v in rest.split(",") if v}
                if not values:
                    problems.append(f"'{word}' names nothing")
                (ops if head.lower() == "op" else precs).update(
                    v.lower() for v in values)
            else:
                words.append(word.lower())
        return cls(frozenset(ops), frozenset(precs), tuple(words), tuple(problems))

    def keeps(self, row: RowView) -> bool:
        if self.ops and row.op.lower() not in self.ops:
            return False
        if self.precisions and row.precision.lower() not in self.precisions:
            return False
        name = row.name.lower()
        return all(w in name for w in self.words)


def _sort_value(row: RowView, column: str, pins: frozenset[str]):
    """A key that sorts unknown values (None) last in either direction is made by the caller; here the
    value itself."""
    if column == "pin":
        return row.key in pins
    if column == "flags":
        return (row.nonfinite, row.beyond_fp16, row.diverges)
    if column == "precision":
        return row.precision_text
    if column == "time_ms":  # the slowest first, as the worst error comes first
        return -row.time_ms if row.time_ms is not None else None
    if column == "amplification":  # the strongest amplifier first
        return -row.amplification if row.amplification is not None else None
    return getattr(row, column)


def visible(rows: Sequence[RowView], state: ViewState) -> list[RowView]:
    """The rows to show, filtered and sorted; rows with no value in the sort column come last."""
    filt = Filter.parse(state.filter_text)
    kept = [r for r in rows if (state.show_constants or r.kind != "constant") and filt.keeps(r)]
    if state.sort == "index":
        return sorted(kept, key=lambda r: r.index, reverse=state.reverse) if state.reverse else kept
    known = [r for r in kept if _sort_value(r, state.sort, state.pins) is not None]
    unknown = [r for r in kept if _sort_value(r, state.sort, state.pins) is None]
    known.sort(key=lambda r: (_sort_value(r, state.sort, state.pins), r.index), reverse=state.reverse)
    return known + unknown


def worst_row(report: Report, keep: Collection[str] | None = None) -> str | None:
    """The row that introduces the most error (layerdiff.report.rank_layers' first); with `keep`, the
    worst of the rows it names (those a filter keeps)."""
    return next((lay.name for lay in rank_layers(report) if keep is None or lay.name in keep), None)


def top_amplifier(report: Report, keep: Collection[str] | None = None) -> str | None:
    """The row that multiplies the error it inherits most (layerdiff.report.amplifiers' first); with
    `keep`, among the rows it names."""
    return next((lay.name for lay in amplifiers(report.layers, n=len(report.layers))
                 if keep is None or lay.name in keep), None)


def first_divergent(report: Report, keep: Collection[str] | None = None) -> str | None:
    """The first divergent row; with `keep`, the first of the rows it names."""
    fd = report.first_divergence
    if fd is not None and (keep is None or fd.layer in keep):
        return fd.layer
    return next((lay.name for lay in report.layers if lay.diverges and (keep is None or lay.name in keep)), None)


def follow(graph: Graph, rows: dict[str, RowView], key: str, upstream: bool) -> str | None:
    """The producer (upstream) or consumer of `key` with the worst accumulated cosine: pressed again
    and again, it walks the path the error took."""
    nexts = (graph.producers if upstream else graph.consumers).get(key, ())
    if not nexts:
        return None
    return min(nexts, key=lambda k: (rows[k].cosine if k in rows and rows[k].cosine is not None else 2.0,
                                     rows[k].index if k in rows else 0))


def severity(cosine: float | None) -> str:
    """A colour class from a cosine: ok, warn, bad (1 - cosine over 1e-4, 1e-2), unknown."""
    if cosine is None:
        return "unknown"
    gap = 1.0 - cosine
    return "ok" if gap < 1e-4 else "warn" if gap < 1e-2 else "bad"


def cosine_text(v: float) -> str:
    """A cosine with 6 decimals, or as many more as it takes not to print a cosine under 1 as 1.000000
    (a bisect's threshold and its outcomes differ in the 7th decimal on a good INT8 model)."""
    for digits in range(6, 17):
        text = f"{v:.{digits}f}"
        if v >= 1.0 or float(text) < 1.0:
            return text
    return repr(v)


def proposed_cosine(worst: float | None, tolerance: float | None = None) -> str | None:
    """The threshold the TUI's bisect proposes, as text: the report's tolerance (`--min-cosine`) where it
    lies strictly between the candidate's worst output cosine and 1, else halfway between the two (the
    README's rule), with as few significant digits as keep it strictly between them (0.999999952 is
    not 1, which the whole FP32 model alone may reach). None: the outputs already agree (cosine 1),
    so there is nothing to bisect."""
    if worst is None or math.isnan(worst):
        return f"{tolerance:.6g}" if tolerance is not None and tolerance < 1.0 else "0.999"
    if tolerance is not None and worst < tolerance < 1.0:
        return repr(tolerance)
    half = (worst + 1.0) / 2
    if not worst < half < 1.0:
        return None
    for digits in range(6, 18):
        text = f"{half:.{digits}g}"
        if worst < float(text) < 1.0:
            return text
    return repr(half)
