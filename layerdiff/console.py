"""Terminal output with rich: a progress bar on stderr while models run, and the summary and the
worst-layers table of a report. It renders from the `Report` object alone and imports nothing that runs
models. Every name from a model is shown as text, never read as rich markup (`[b]` in a layer name stays
`[b]`). The table fits the console's width (80 columns too): names are shortened in the middle, numbers
are never cut.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from layerdiff.cost import unsteady
from layerdiff.diffs import output_rel_rms
from layerdiff.progress import Progress as ProgressFn
from layerdiff.report import LayerDiff, Report, amplifiers, error_growth, precision_audit, rank_layers


@contextlib.contextmanager
def progress_bar(console: Console, quiet: bool, delay: float = 1.0) -> Iterator[ProgressFn | None]:
    """A progress bar on `console` (stderr), shown once the work has taken `delay` seconds: a run that
    is over sooner never flickers one. None when quiet or not on a terminal."""
    if quiet or not console.is_terminal:
        yield None
        return
    start = time.monotonic()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task("preparing", total=None)

    def update(what: str, done: int, total: int) -> None:
        if not bar.live.is_started and time.monotonic() - start < delay:
            return
        if not bar.live.is_started:
            bar.start()
        bar.update(task, description=Text(what[:30]).plain, completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich exits 1 (the tolerance code); the CLI says 141, as SIGPIPE would
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """A console for the CLI. On a terminal, its width; piped, tables in the width in COLUMNS, else 80
    columns, and prose lines are never broken (a warning stays one line for grep; a reader wraps them)."""
    console = _Console(stderr=stderr)
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    return _Console(stderr=stderr, width=int(columns) if columns.isdigit() and int(columns) > 0 else 80,
                    soft_wrap=True)


def clean(name: str) -> str:
    """A name as one line of text: control characters (a newline in a node name) shown escaped."""
    return name if name.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def fmt(x: float | None, spec: str = ".6f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def shorten(name: str, width: int) -> str:
    """`name` cut in the middle to `width` characters (the start and the end tell most names apart),
    marked with `..` (ASCII, so byte-counting tools agree with the terminal)."""
    name = clean(name)
    if len(name) <= width or width < 6:
        return name
    head = (width - 2) // 2
    return name[:head] + ".." + name[len(name) - (width - 2 - head):]


# rich's SIMPLE_HEAD in ASCII: only a rule under the header
_ASCII_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


def precision_label(layer: LayerDiff) -> str:
    """The precision column (LayerDiff.precision_label)."""
    return layer.precision_label


def _line(console: Console, *parts: str | Text) -> None:
    console.print(Text.assemble(*parts))


def _amplifying(report: Report, console: Console) -> None:
    """The layers that multiply the error they inherit; with no layer diverging by its own error, the
    layers across which the accumulated error grew most, largest drop first."""
    amp = amplifiers(report.layers)
    if amp:  # one row a line: the summary fits 80 columns, piped too
        # in relative RMS error, the measure amplification is the ratio of (a cosine can rise across a row
        # whose error grows, on an output of two numbers)
        _line(console, "amplifies most (error out over error in; relative RMS error in -> out):")
        for lay in amp:
            out = output_rel_rms(lay)
            carried = math.sqrt(max(out * out - (lay.local_rel_rms or 0.0) ** 2, 0.0))
            _line(console, f"  {shorten(lay.name, 40)} x{lay.amplification:.3g}  "
                           f"{carried / lay.amplification:.3g} -> {out:.3g}")
    if report.first_divergence is None:
        grew = error_growth(report.layers)
        if grew:
            _line(console, "accumulated error grew most across (cosine in -> out):")
            for lay in grew:
                _line(console, f"  {shorten(lay.name, 40)}  {_change(lay.input_cosine, lay.cosine)}")


def _change(before: float, after: float) -> str:
    """'0.971000 -> 0.877000', with the digits it takes for the two to differ (1 - 1e-9 is not 1)."""
    for digits in range(6, 13):
        a, b = f"{before:.{digits}f}", f"{after:.{digits}f}"
        if a != b:
            return f"{a} -> {b}"
    return f"{before!r} -> {after!r}"


def print_summary(report: Report, console: Console, top: int) -> None:
    cand = report.candidate
    _line(console, ("layerdiff compare ", "bold"), clean(report.model.path), "  vs  ", (clean(cand.spec), "bold"),
          f"  ({report.inputs.samples} sample(s) from ", clean(report.inputs.source), ")")
    for w in report.warnings:
        _line(console, ("warning: ", "bold yellow"), clean(w))
    for out in report.outputs:
        if out.accumulated is not None:
            w = out.accumulated.worst
            bad = f"  {w.cand_nonfinite} NaN/Inf in the candidate" if w.cand_nonfinite else ""
            if out.accumulated.mean.count == 1:  # a cosine of one number is its sign: the relative error says more
                first = f": one element, relative error {fmt(w.rel_rms, '.4g')}"
            else:
                first = f": cosine {fmt(w.cosine)}"
            _line(console, "output ", (shorten(out.tensor, 60), "bold"),
                  f"{first}  max_abs {fmt(w.max_abs, '.4g')}  sqnr {fmt(w.sqnr_db, '.1f')} dB"
                  f"  (worst of {out.accumulated.samples})", (bad, "bold red"))
            if out.worst_sample and out.accumulated.samples > 1:
                _line(console, f"  worst sample: {shorten(out.worst_sample, 60)}")
        elif out.match_rate is not None:
            _line(console, "output ", (shorten(out.tensor, 60), "bold"), f": integer, {out.match_rate:.2%} of elements equal "
                  "(worst sample)")
        else:
            _line(console, "output ", (shorten(out.tensor, 60), "bold"), ": not compared (", out.reason, ")")
    if report.tolerance is not None:
        t = report.tolerance
        if t.passed:
            _line(console, f"tolerance: every float final output within cosine {t.min_cosine}")
        else:
            _line(console, ("tolerance failed: ", "bold red"), f"outside cosine {t.min_cosine} for ",
                  ", ".join(t.failed))
    fd = report.first_divergence
    if fd is not None:
        row = next((lay for lay in report.layers if lay.name == fd.layer), None)
        shown = row.converts if row is not None and row.kind == "conversion" else fd.layer  # as the table shows it
        op = "Q/DQ" if fd.op == "QuantizeLinear" else fd.op
        label = precision_label(row) if row is not None else fd.precision
        _line(console, "first divergent layer: ", (shorten(shown, 60), "bold red"),
              f" (#{fd.index} {shorten(op, 40)}, {label}): ", fd.reason)
    elif report.divergence_note:
        _line(console, "first divergent layer: ", report.divergence_note)
    else:
        _line(console, f"first divergent layer: none (every local cosine >= {report.thresholds.divergence_cosine})")
    _amplifying(report, console)
    c = report.counts
    consts = f" and {c.constants} Constant" if c.constants else ""
    imported = report.capture.mode == "imported"
    gone = ("not in the imported results (fused, or not saved)" if imported else "fused away inside kernels")
    fused = f", {c.fused_away} {gone}" if c.fused_away else ""
    conv = f", {c.conversions} conversion rows (Q/DQ, casts)" if c.conversions else ""
    _line(console, f"{c.layers} layers{consts} in {c.rows} rows{conv}")
    _line(console, f"{c.compared} of {c.float_tensors} float tensors compared ({c.unpaired} unpaired{fused}); "
          f"{c.local_errors} local errors")
    kinds = Counter(precision_label(lay) for lay in report.layers if lay.kind == "layer")
    if kinds:
        _line(console, "realised precision of layer rows: ", ", ".join(f"{p} {n}" for p, n in kinds.most_common()))
    audit = precision_audit(report.layers)
    if audit:
        missed = [a for a in audit if a["realised_as_requested"] is False]
        _line(console, f"precision audit: {len(audit)} requested, {len(audit) - len(missed)} realised as requested",
              (f", {len(missed)} not" if missed else "", "bold red"))
    ranked = rank_layers(report)[:top]
    if ranked:
        console.print(worst_table(ranked, console.width))
        legend = []
        if any(lay.precision_emulated for lay in ranked):
            legend.append("* FP16 emulated by rounding (no FP16 kernel on this provider)")
        if any(precision_label(lay) == "fp32q" for lay in ranked):
            legend.append("fp32q: a float kernel on INT8 values read through DequantizeLinear")
        if any(lay.kind == "conversion" for lay in ranked):
            legend.append("Q/DQ, Cast rows: the named tensor's rounding for its readers (# of its "
                          "producer)")
        if any(lay.precision == "unknown" for lay in ranked):
            legend.append("unknown: no engine layer information to say what ran it (give --engine-info)"
                          if report.capture.mode == "imported" else
                          "unknown: no kernel computed it at run time (folded into a constant by the runtime)")
        for note in legend:
            console.print(Text(note, style="dim"))
    print_cost(report, console)


def _worst_output(report: Report):
    worst = [o.accumulated.worst for o in report.outputs if o.accumulated is not None]
    return min(worst, key=lambda w: w.cosine) if worst else None


def cost_table(report: Report) -> Table | None:
    """The table deployment write-ups end in: accuracy, latency, speed-up, size, memory per plan."""
    cost = report.cost
    if cost is None or (cost.reference is None and cost.candidate is None):
        return None
    ref = cost.reference
    timed = ref if ref is not None and not ref.unavailable else cost.candidate
    title, caption = "cost", None
    if timed is not None and not timed.unavailable:
        title = f"cost (median of {timed.runs} runs after {timed.warmup} warm-up, batch {timed.batch})"
        caption = f"measured with {timed.provider.replace('ExecutionProvider', '')} on {timed.machine}"
    table = Table(title=title, caption=caption, box=_ASCII_HEAD, pad_edge=False, collapse_padding=True,
                  title_justify="left", caption_justify="left")
    for col in ("plan", "cosine", "ms median", "ms p90", "speed-up", "size MiB", "peak MiB"):
        table.add_column(col, justify="left" if col == "plan" else "right", no_wrap=True)
    w = _worst_output(report)
    for label, pc, cos in (("FP32 model", ref, None), (shorten(report.candidate.spec, 18), cost.candidate,
                                                        w.cosine if w is not None else None)):
        if pc is None:
            continue
        if pc.unavailable:
            table.add_row(label, fmt(cos) if cos is not None else "ref", "-", "-", "-", "-", "-")
            continue
        speed = (ref.latency_ms_median / pc.latency_ms_median if ref is not None and ref.latency_ms_median
                 and pc.latency_ms_median else None)
        table.add_row(label, fmt(cos) if cos is not None else "ref", fmt(pc.latency_ms_median, ".4g"), fmt(pc.latency_ms_p90, ".4g"),
                      f"{speed:.2f}x" if speed is not None else "-",
                      fmt(pc.size_bytes / 2**20, ".3g") if pc.size_bytes is not None else "-",
                      fmt(pc.peak_rss_mb, ".4g") if pc.peak_rss_mb is not None else "-")
    return table


def print_cost(report: Report, console: Console) -> None:
    if report.cost is None and not report.gate:
        return
    table = cost_table(report)
    if table is not None:
        console.print(table)
    cand = report.cost.candidate if report.cost is not None else None
    if cand is not None and cand.unavailable:
        _line(console, "candidate not timed: ", cand.unavailable)
    timed_plans = {k: v for k, v in (("FP32 model", report.cost.reference if report.cost else None),
                                     ("candidate", cand)) if v is not None}
    noise = unsteady(timed_plans)
    if noise:
        _line(console, ("warning: ", "bold yellow"), noise)
    lt = report.cost.layer_times if report.cost is not None else None
    timed = sorted((lay for lay in report.layers if lay.time_ms is not None), key=lambda lay: -lay.time_ms)
    if lt is not None and timed:
        note = (lt.statistic if not lt.runs else f"total time / {lt.runs} runs" if lt.statistic == "total/count"
                else f"{lt.statistic} of {lt.runs} runs")
        src = "ORT profiler" if lt.source == "onnxruntime profiler" else "TensorRT profile"
        _line(console, f"slowest rows (candidate kernel time; {src}, {note}):")
        for lay in timed[:5]:
            ref = f"  FP32 {lay.ref_time_ms:.3g} ms" if lay.ref_time_ms is not None else ""
            share = f" {lay.time_share:.0%}" if lay.time_share is not None else ""
            _line(console, f"  #{lay.index} ", (shorten(lay.name, 32), "bold"), f" {lay.time_ms:.3g} ms{share}{ref}")
        if lt.unattributed_ms:
            _line(console, f"  {lt.unattributed_ms:.3g} ms of kernels could not be named for a row")
    for g in report.gate:
        _line(console, ("gate: " if g.passed else "gate failed: ", "" if g.passed else "bold red"), g.line())


def worst_table(ranked: list[LayerDiff], width: int) -> Table:
    """The worst rows, one line each; the layer column takes the width the others leave (at least 12)."""
    header = ("#", "layer", "op", "prec", "local cos", "local rel", "cosine", "max_abs")
    cells = []
    for layer in ranked:
        acc = [o.accumulated.worst for o in layer.outputs if o.accumulated is not None]
        op = "Q/DQ" if layer.op == "QuantizeLinear" else layer.op
        local = "NaN/Inf" if layer.local_nonfinite else fmt(layer.local_rel_rms, ".3g")
        cells.append((
            str(layer.index), layer.converts if layer.kind == "conversion" else layer.name,  # the tensor it rounds
            shorten(op, 10), precision_label(layer),
            # with new NaN/Inf, the cosine of the finite values alone would read as agreement
            "-" if layer.local_nonfinite else fmt(layer.local_cosine, ".6f"), local,
            fmt(min((m.cosine for m in acc), default=None), ".6f"),
            fmt(max((m.max_abs for m in acc), default=None), ".3g")))
    others = sum(max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
                 for i, h in enumerate(header) if i != 1)
    name_width = max(12, width - others - 2 * (len(header) - 1) - 3)
    table = Table(title=f"worst {len(ranked)} rows by local error (the error each one introduces)",
                  box=_ASCII_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if col in ("layer", "op", "prec") else "right", no_wrap=True,
                         max_width=name_width if col == "layer" else None)
    for layer, row in zip(ranked, cells, strict=True):
        table.add_row(row[0], Text(shorten(row[1], name_width)), *(Text(c) if i < 2 else c for i, c in
                                                                      enumerate(row[2:])),
                      style="red" if layer.diverges else None)
    return table


def print_engine_info(info, console: Console) -> None:
    counts = Counter(layer.precision for layer in info.layers)
    _line(console, (str(info.path), "bold"), f" ({info.kind}): {len(info.layers)} engine layers; precisions: ",
          ", ".join(f"{p} {n}" for p, n in counts.most_common()))
    table = Table(box=_ASCII_HEAD, pad_edge=False, collapse_padding=True)
    # the short columns keep to one line; the names wrap at their separators and take the room left
    # (folded inside a word only where one word is wider than its column)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("layer", overflow="fold")
    table.add_column("type", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("precision", no_wrap=True)
    table.add_column("ONNX nodes", overflow="fold")
    table.add_column("from", no_wrap=True)
    for layer in info.layers:
        nodes = ", ".join(layer.onnx_nodes[:4]) + (f" (+{len(layer.onnx_nodes) - 4})" if len(layer.onnx_nodes) > 4 else "")
        if layer.serves:
            nodes = f"(serves {layer.serves})"
        table.add_row(str(layer.index), Text(clean(layer.name)), Text(clean(layer.type)), layer.precision,
                      Text(clean(nodes)), layer.origin)
    console.print(table)
