"""Terminal output with rich: a progress bar on stderr while models run, and the summary and worst-layers
table of a report."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from layerdiff.compare import Progress as ProgressFn
from layerdiff.report import Report, rank_layers


@contextlib.contextmanager
def progress_bar(console: Console, quiet: bool) -> Iterator[ProgressFn | None]:
    if quiet or not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("building the candidate", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"running models: {what}", completed=done, total=total)

        yield update


def _fmt(x: float | None, spec: str = ".6f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def print_summary(report: Report, console: Console, top: int) -> None:
    d = report.to_dict()
    cand = d["candidate"]
    console.print(f"[bold]layerdiff compare[/] {d['model']['path']}  vs  [bold]{cand['spec']}[/] "
                  f"({d['inputs']['samples']} sample(s) from {d['inputs']['source']})")
    for w in report.warnings:
        console.print(f"[bold yellow]warning:[/] {w}")
    for out in d["outputs"]:
        if out["paired"]:
            bad = out["nonfinite"]["candidate"]
            console.print(f"output [bold]{out['tensor']}[/]: cosine {_fmt(out['cosine'])}  max_abs "
                          f"{_fmt(out['max_abs'], '.4g')}  rel_rms {_fmt(out['rel_rms'], '.4g')}  "
                          f"sqnr {_fmt(out['sqnr_db'], '.1f')} dB  (worst of {out['samples']} sample(s))"
                          + (f"  [bold red]{bad} NaN/Inf in the candidate[/]" if bad else ""))
        else:
            console.print(f"output [bold]{out['tensor']}[/]: not paired with the candidate")
    fd = report.first_divergence
    if fd:
        console.print(f"first divergent layer: [bold red]{fd['layer']}[/] (#{fd['index']} {fd['op']}, "
                      f"{fd['precision']}): {fd['reason']}")
    else:
        console.print(f"first divergent layer: none (every local cosine >= {report.thresholds['divergence_cosine']})")
    c = report.counts
    rows = f" in {c['rows']} rows (fused engine layers are one row)" if c["rows"] != c["layers"] else ""
    fused = f", {c['fused_away']} fused away inside engine layers" if c["fused_away"] else ""
    console.print(f"{c['layers']} layers{rows}, {c['compared']} of {c['float_tensors']} float tensors compared "
                  f"({c['unpaired']} unpaired{fused}), {c['non_float_tensors']} integer/bool tensors not "
                  f"compared, {c['local_errors']} local errors")
    audit = d["precision_audit"]
    if audit:
        missed = [a for a in audit if a["realised_as_requested"] is False]
        console.print(f"precision audit: {len(audit)} requested, {len(audit) - len(missed)} realised as requested"
                      + (f", [bold red]{len(missed)} not[/]" if missed else ""))
    ranked = rank_layers(report)[:top]
    if not ranked:
        return
    table = Table(title=f"worst {len(ranked)} layers by local error (the error each layer introduces)")
    for col, just in [("#", "right"), ("layer", "left"), ("op", "left"), ("prec", "left"),
                      ("local rel_rms", "right"), ("local cosine", "right"), ("cosine", "right"),
                      ("max_abs", "right"), ("rel_rms", "right")]:
        table.add_column(col, justify=just)
    for layer in ranked:
        acc = [o.accumulated.worst for o in layer.outputs if o.accumulated is not None]
        prec = layer.precision + ("*" if layer.precision_emulated else "")
        local = "NaN/Inf" if layer.local_nonfinite else _fmt(layer.local_rel_rms, ".3g")
        table.add_row(
            str(layer.index), layer.name, layer.op, prec, local,
            _fmt(layer.local_cosine), _fmt(min((m.cosine for m in acc), default=None)),
            _fmt(max((m.max_abs for m in acc), default=None), ".3g"),
            _fmt(max((m.rel_rms for m in acc), default=None), ".3g"),
            style="red" if layer.diverges else None,
        )
    console.print(table)
    if any(layer.precision_emulated for layer in ranked):
        console.print("* FP16 emulated by rounding through float16 (no FP16 kernel on this provider)")


def print_engine_info(info, console: Console) -> None:
    from collections import Counter

    counts = Counter(layer.precision for layer in info.layers)
    console.print(f"[bold]{info.path}[/] ({info.kind}): {len(info.layers)} engine layers; precisions: "
                  + ", ".join(f"{p} {n}" for p, n in counts.most_common()))
    table = Table()
    for col, just in [("#", "right"), ("layer", "left"), ("type", "left"), ("precision", "left"),
                      ("ONNX nodes", "left"), ("from", "left")]:
        table.add_column(col, justify=just, overflow="fold")
    for layer in info.layers:
        nodes = ", ".join(layer.onnx_nodes[:4]) + (f" (+{len(layer.onnx_nodes) - 4})" if len(layer.onnx_nodes) > 4 else "")
        if layer.serves:
            nodes = f"(serves {layer.serves})"
        table.add_row(str(layer.index), layer.name, layer.type, layer.precision, nodes, layer.origin)
    console.print(table)
