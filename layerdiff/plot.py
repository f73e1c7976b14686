"""`layerdiff plot REPORT.json -o error.png|svg|pdf`: the error along the network for bug reports and
notebooks (matplotlib, the optional `plot` extra). Local and accumulated error (1 - cosine, worst
sample, log scale) against the row index, the first divergent row and the five worst rows (most
local error) annotated."""

from __future__ import annotations

from pathlib import Path

from layerdiff.errors import BadInput
from layerdiff.report import Report, rank_layers

FLOOR = 1e-9  # 1 - cosine is drawn at least this high (an exact match has no logarithm)
FORMATS = (".png", ".svg", ".pdf")


def _gap(cos: float | None) -> float | None:
    return None if cos is None else max(1.0 - cos, FLOOR)


def error_series(rows) -> tuple[dict[str, int], dict[str, list[tuple[int, float]]]]:
    """The points of both pictures (this one and the TUI's chart), from report rows or the TUI's row
    views: x, each row's position among the non-Constant rows (a conversion row shares its producer's
    layer index), by name; and per metric ("cosine", "local_cosine") the (x, 1 - cosine) points."""
    rows = [r for r in rows if r.kind != "constant"]
    at = {r.name: i for i, r in enumerate(rows)}
    return at, {attr: [(at[r.name], g) for r in rows if (g := _gap(getattr(r, attr))) is not None]
                for attr in ("cosine", "local_cosine")}


def plot_report(report: Report, path: str | Path, *, title: str | None = None):
    """Draw the figure and save it to `path` (its suffix picks the format). Returns the figure."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise BadInput(f"plot writes {', '.join(FORMATS)} files (by the suffix of -o), not '{path.suffix or path.name}'")
    try:
        import matplotlib
    except ImportError:
        raise BadInput("layerdiff plot needs matplotlib: pip install 'layerdiff[plot]'") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    at, series = error_series(report.layers)
    if not at:
        raise BadInput("the report has no layer rows to plot")
    fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
    for label, attr, color in (("accumulated (vs FP32 model)", "cosine", "#1f77b4"),
                               ("local (this layer alone)", "local_cosine", "#d62728")):
        pts = series[attr]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, color=color,
                    lw=1.2 if attr == "cosine" else 0.9, marker="." if len(pts) < 200 else None, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("row (topological order)")
    ax.set_ylabel(f"1 - cosine (worst sample; exact: {FLOOR:g})")
    ax.grid(True, which="major", alpha=0.3)
    worst = [r for r in rank_layers(report) if r.local_cosine is not None][:5]
    for r in worst:
        ax.annotate(r.name, (at[r.name], _gap(r.local_cosine)), textcoords="offset points", xytext=(4, 6),
                    fontsize=7, color="#d62728", rotation=20)
    fd = report.first_divergence
    if fd is not None and fd.layer in at:
        ax.axvline(at[fd.layer], color="#9467bd", ls="--", lw=1)
        ax.annotate(f"first divergent: {fd.layer}", (at[fd.layer], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", fontsize=8, color="#9467bd")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"{Path(report.model.path).name}: {report.candidate.spec} against FP32 "
                          f"({report.inputs.samples} sample(s){', random' if report.inputs.random else ''})",
                 fontsize=10)
    import io

    from layerdiff.files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower()[1:], dpi=150)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return fig
