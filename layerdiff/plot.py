"""`layerdiff plot REPORT.json -o error.png|svg|pdf`: the error along the network for bug reports and
notebooks (matplotlib, the optional `plot` extra). Local and accumulated error (1 - cosine, worst
sample, log scale) along the network in topological order, the first divergent row and the five worst rows (most
local error) annotated."""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import warnings
from pathlib import Path

from layerdiff.errors import BadInput
from layerdiff.report import Report, amplifiers, rank_layers

FLOOR = 1e-9  # 1 - cosine is drawn at least this high (an exact match has no logarithm)
FORMATS = (".png", ".svg", ".pdf")


def _gap(cos: float | None) -> float | None:
    return None if cos is None else max(1.0 - cos, FLOOR)


def error_series(rows) -> tuple[dict[str, int], dict[str, list[tuple[int, float]]]]:
    """The points of both pictures (this one and the TUI's chart), from report rows or the TUI's row
    views: x, each row's `#` as the table numbers it (a conversion row shares its producer's), by name;
    and per metric ("cosine", "local_cosine") the (x, 1 - cosine) points. Constants are left out, and so
    is a row whose reference is exactly zero (an initial state: its cosine says nothing, and drawn at
    the floor it would read as the error vanishing)."""
    rows = [r for r in rows if r.kind != "constant"]
    at = {r.name: r.index for r in rows}
    kept = [r for r in rows if not _zero_state(r)]
    return at, {attr: [(at[r.name], g) for r in kept if (g := _gap(getattr(r, attr))) is not None]
                for attr in ("cosine", "local_cosine")}


def _zero_state(row) -> bool:
    """A report row whose every output is exactly zero in the FP32 model and in the candidate."""
    outs = [o for o in getattr(row, "outputs", ()) if getattr(o, "accumulated", None) is not None]
    return bool(outs) and all(o.accumulated.worst.ref_rms == 0 and o.accumulated.worst.max_abs == 0 for o in outs)


def line_points(at: dict[str, int], points: list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    """The accumulated error as a line that breaks (NaN) at every row of `at` with no value: no line is
    drawn across rows that were not compared."""
    have = dict(points)
    xs = sorted(set(at.values()))
    return xs, [have.get(x, math.nan) for x in xs]


def envelope(points: list[tuple[int, float]], lo: int, hi: int, bins: int) -> list[tuple[float, float]]:
    """The worst (largest) value in each of `bins` equal spans of x in [lo, hi], at the span's middle:
    what a chart narrower than the network can honestly show (a spike is never averaged away)."""
    if not points:
        return []
    width = max(hi - lo + 1, 1) / bins
    worst: dict[int, float] = {}
    for x, y in points:
        b = min(int((x - lo) / width), bins - 1)
        worst[b] = max(worst.get(b, 0.0), y)
    return [(lo + (b + 0.5) * width, worst[b]) for b in sorted(worst)]


def plot_report(report: Report, path: str | Path, *, title: str | None = None):
    """Draw the figure and save it to `path` (its suffix picks the format). Returns the figure."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise BadInput(f"plot writes {', '.join(FORMATS)} files (by the suffix of -o), not '{path.suffix or path.name}'")
    Figure = _figure_class()
    at, series = error_series(report.layers)
    if not at:
        raise BadInput("the report has no layer rows to plot")
    with warnings.catch_warnings():  # matplotlib's own (a glyph no font has) are not the user's business
        warnings.simplefilter("ignore")
        fig, data = _draw(Figure, report, at, series, path.suffix.lower()[1:], title)
    from layerdiff.files import write_atomic

    write_atomic(path, data)
    return fig


def _figure_class():
    """matplotlib's Figure, used without pyplot: no window, no backend chosen for the whole process (a
    notebook's stays as it was), and savefig draws with the file format's own (Agg for PNG). MPLBACKEND
    names a backend for windows, which a file does not need: a name matplotlib does not know made its
    import fail (exit 3), so matplotlib is imported without it, and then given it as its own import
    would have where it names a backend."""
    try:
        if "matplotlib" not in sys.modules and os.environ.get("MPLBACKEND"):
            wanted = os.environ.pop("MPLBACKEND")
            try:
                import matplotlib
            finally:
                os.environ["MPLBACKEND"] = wanted
            with contextlib.suppress(ValueError):  # "'bogus' is not a valid value for backend"
                matplotlib.rcParams["backend"] = wanted
        from matplotlib.figure import Figure
    except ImportError:
        raise BadInput("layerdiff plot needs matplotlib: pip install 'layerdiff[plot]'") from None
    return Figure


def _plain(text: str) -> str:
    """`text` shown as it is: matplotlib reads $...$ as mathematics (a layer named `a$\\b$` made savefig
    raise), and an escaped dollar is a dollar (Text(parse_math=False) is lost where text wraps)."""
    return text.replace("$", r"\$")


def _draw(Figure, report: Report, at, series, fmt: str, title: str | None):
    """(the figure, its file as `fmt`: png, svg, pdf)."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax = fig.subplots()
    acc, local = series["cosine"], series["local_cosine"]
    if acc:  # the error each tensor carries: a path through the network, drawn as a line, broken at gaps
        xs, ys = line_points(at, acc)
        ax.plot(xs, ys, label="accumulated (vs FP32 model)", color="#1f77b4",
                lw=1.1, marker="." if len(acc) < 200 else None, ms=3)
    if local:  # each layer's own error: one dot per row, not a path; exact rows (FP32 layers) faint
        exact = [p for p in local if p[1] <= FLOOR]
        off = [p for p in local if p[1] > FLOOR]
        size = 9 if len(local) < 200 else 4
        ax.scatter([p[0] for p in off], [p[1] for p in off], label="local (this layer alone)", color="#d62728",
                   s=size, zorder=3)
        if exact:
            ax.scatter([p[0] for p in exact], [p[1] for p in exact], color="#d62728", alpha=0.25, s=size,
                       label="local, exact")
    ax.set_yscale("log")
    ax.set_xlabel("row # (as the table numbers it; Constants left out)")
    ax.set_xlim(min(at.values()) - 0.5, max(at.values()) + 0.5)
    ax.set_ylabel(f"1 - cosine (worst sample; exact: {FLOOR:g})")
    ax.grid(True, which="major", alpha=0.3)
    worst = [r for r in rank_layers(report) if r.local_cosine is not None][:5]
    lines = []
    for k, r in enumerate(worst, 1):  # numbered on the chart, named in the caption: names never overlap
        x, y = at[r.name], _gap(r.local_cosine)
        ax.scatter([x], [y], s=70, facecolors="none", edgecolors="black", lw=0.8, zorder=4)
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, weight="bold")
        lines.append(f"{k} {r.name} (#{r.index}, local cos {r.local_cosine:.6g})")
    amp = [r for r in amplifiers(report.layers) if r.name in at and r.cosine is not None]
    for k, r in enumerate(amp, 1):  # the rows that multiply the error they read: on the accumulated line
        x, y = at[r.name], _gap(r.cosine)
        ax.scatter([x], [y], s=60, marker="^", facecolors="none", edgecolors="#ff7f0e", lw=1.0, zorder=4)
        ax.annotate(f"A{k}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8, color="#ff7f0e")
    if amp:
        lines.append("   amplifies most: " + "   ".join(f"A{k} {r.name} (#{r.index}, x{r.amplification:.3g})"
                                                        for k, r in enumerate(amp, 1)))
    if lines:
        caption = "most local error: " + "   ".join(lines)
        fig.text(0.01, 0.005, _plain(caption), fontsize=7, va="bottom", wrap=True)
        fig.get_layout_engine().set(h_pad=0.25 + 0.12 * (len(caption) // 200))  # room for its wrapped lines
    fd = report.first_divergence
    if fd is not None and fd.layer in at:
        ax.axvline(at[fd.layer], color="#9467bd", ls="--", lw=1)
        ax.annotate(_plain(f"first divergent: {fd.layer}"), (at[fd.layer], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", fontsize=8, color="#9467bd")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.set_title(_plain(title or f"{Path(report.model.path).name}: {report.candidate.spec} against FP32 "
                               f"({report.inputs.samples} sample(s){', random' if report.inputs.random else ''})"),
                 fontsize=10, loc="left")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    return fig, buf.getvalue()
