"""The detail of one report row as a Rich renderable (no Textual here): its ONNX nodes and engine
layers, kernels, precision requested and realised, the tensors it reads (with their producers) and
writes (with shapes), and per output the reference and candidate statistics side by side, the local
and the accumulated metrics, and why a tensor is unpaired or a local error unavailable."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from layerdiff.console import fmt
from layerdiff.diffs import LayerDiff, TensorDiff
from layerdiff.tui.state import Graph, severity

STYLE = {"ok": "green", "warn": "yellow", "bad": "bold red", "unknown": "dim"}


def num(v: float | None, spec: str = ".4g") -> str:
    return fmt(v, spec)


def cos_text(v: float | None) -> Text:
    v = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return Text(num(v, ".6f"), style=STYLE[severity(v)])


def _names(items, limit: int = 6) -> Text:
    """Names as text, never as console markup (a layer may be named `[/bold]x`)."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return Text(shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "") if items else "-")


def _tensor_table(out: TensorDiff) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold", expand=False)
    table.add_column(Text(out.tensor + (f" {list(out.shape)}" if out.shape is not None else "")), no_wrap=True)
    table.add_column("reference", justify="right")
    table.add_column("candidate", justify="right")
    acc = out.accumulated.worst if out.accumulated is not None else None
    if acc is None:
        table.add_row(Text("not compared", style="yellow"), Text(out.unpaired_reason or "-"), "")
        return table
    table.add_row("max |x|", num(acc.ref_absmax), num(acc.cand_absmax))
    table.add_row("RMS", num(acc.ref_rms), num(acc.cand_rms))
    table.add_row("NaN/Inf", str(acc.ref_nonfinite), Text(str(acc.cand_nonfinite),
                                                           style="bold red" if acc.cand_nonfinite > acc.ref_nonfinite
                                                           else ""))
    loc = out.local.worst if out.local is not None else None
    metrics = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    metrics.add_column("worst sample", no_wrap=True)
    metrics.add_column("local", justify="right")
    metrics.add_column("accumulated", justify="right")
    metrics.add_row("cosine", cos_text(loc.cosine) if loc else Text("-", style="dim"), cos_text(acc.cosine))
    metrics.add_row("rel RMS", num(loc.rel_rms) if loc else "-", num(acc.rel_rms))
    metrics.add_row("max abs", num(loc.max_abs) if loc else "-", num(acc.max_abs))
    metrics.add_row("SQNR dB", num(loc.sqnr_db, ".1f") if loc else "-", num(acc.sqnr_db, ".1f"))
    outer = Table.grid(padding=(0, 3))
    outer.add_row(table, metrics)
    if acc.exceeds_fp16:
        outer.add_row(Text("reference values leave FP16's range (65504)", style="bold yellow"), "")
    if out.view == "quantized":
        outer.add_row(Text("the candidate holds this tensor only rounded to INT8", style="dim"), "")
    return outer


def render_detail(layer: LayerDiff, graph: Graph) -> Group:
    head = Text()
    head.append(layer.name, style="bold")
    head.append(f"  {layer.op}  ({layer.kind}, row {layer.index})")
    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column()
    realised = layer.precision + (" (emulated by rounding)" if layer.precision_emulated else "")
    if layer.requested_precision and layer.request_realised is False:
        facts.add_row("precision", Text(f"requested {layer.requested_precision}, ran {realised}", style="bold yellow"))
    else:
        facts.add_row("precision", Text(realised + (" (reads dequantized INT8)" if layer.dequantized_inputs else "")))
    facts.add_row("ONNX nodes", _names(layer.onnx_nodes) if layer.kind != "conversion"
                  else Text(f"none (rounds {layer.converts or '?'})"))
    if layer.engine_layers:
        facts.add_row("engine layers", _names(layer.engine_layers))
    if layer.kernels:
        facts.add_row("kernels", _names(layer.kernels))
    facts.add_row("reads", _names(layer.inputs))
    facts.add_row("from", _names(graph.producers.get(layer.name, ())) + Text("   ([ goes up the worst)"))
    facts.add_row("to", _names(graph.consumers.get(layer.name, ())) + Text("   (] goes down the worst)"))
    if layer.time_ms is not None:
        share = f" ({layer.time_share:.0%} of the candidate's kernel time)" if layer.time_share is not None else ""
        ref = f"; FP32 {layer.ref_time_ms:.3g} ms" if layer.ref_time_ms is not None else ""
        facts.add_row("time", f"{layer.time_ms:.3g} ms{share}{ref}")
    if layer.local_unavailable:
        facts.add_row("local error", Text(f"unavailable: {layer.local_unavailable}", style="yellow"))
    if layer.diverges:
        facts.add_row("", Text("diverges (local cosine under the threshold)", style="bold red"))
    parts = [head, facts]
    parts += [_tensor_table(o) for o in layer.outputs]
    return Group(*parts)
