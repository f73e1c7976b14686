"""What bisect may pin and what each pin is: the pinnable nodes of a candidate, the nodes an FP16 plan
must keep in FP32 (values beyond FP16's range), and per pin of an answer the conversions (Q/DQ, Cast)
it removes or adds, its engine layers and the evidence of one layer-wise comparison."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from layerdiff.backends.base import Candidate
from layerdiff.errors import Cancelled
from layerdiff.metrics import FP16_MAX
from layerdiff.session import Session


@dataclass(frozen=True)
class PinInfo:
    """One pinned node: what the pin changes in the candidate and the evidence for it."""

    node: str
    op: str
    covers: tuple[str, ...] = ()  # the conversions (Q/DQ, Casts) the pin removes or adds
    engine_layers: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)


def pinnable_nodes(session: Session, base: Candidate, candidate: str) -> list[str]:
    """The nodes whose pin changes the candidate, in topological order: for ort-int8 the nodes that
    read through Q/DQ; otherwise every node that computes a float value."""
    model = session.model
    if candidate in ("ort-int8",):
        quantized = session.quantizer.quantized
        return [lay.name for lay in model.layers if lay.name in quantized]
    return [lay.name for lay in model.layers if lay.name not in model.weight_layers
            and any(model.is_float(t) for t in lay.outputs)]


def beyond_fp16(session: Session, pinnable: list[str], cancel) -> tuple[str, ...]:
    """Nodes whose FP32 reference values leave FP16's range (they are pinned in every FP16 plan)."""
    model = session.model
    outputs = {t: lay.name for lay in model.layers if lay.name in set(pinnable) for t in lay.outputs
               if model.is_float(t)}
    absmax = session.reference_absmax(sorted(outputs), cancel)
    beyond = {outputs[t] for t, v in absmax.items() if v > FP16_MAX}
    return tuple(n for n in pinnable if n in beyond)


def pin_infos(session: Session, base: Candidate, make, pins: frozenset[str], ordered: list[str], evidence: bool,
               progress, cancel) -> tuple[PinInfo, ...]:
    if not pins:
        return ()
    rows: dict[str, Any] = {}
    if evidence:
        report = session.compare(base, progress=progress, cancel=cancel)
        if report.capture.interrupted:  # compare keeps what finished; evidence is all of it or none
            raise Cancelled("the pins' evidence was interrupted")
        for row in report.layers:
            for node in row.onnx_nodes or (row.name,):
                if node in pins and row.kind == "layer":
                    rows[node] = row
    engine: dict[str, tuple[str, ...]] = {}
    for group, layer in base.deployment().groups():
        if layer:
            for node in group:
                engine[node] = engine.get(node, ()) + (layer[0],)
    before = _conversions(base)
    adjacent = None
    if base.kind != "ort-int8" and len(pins) > 1:
        # one candidate with every pin, each changed conversion given to the pins it touches: building one
        # FP16 candidate per pin took minutes on a recogniser with 400 pins
        adjacent = _adjacent_conversions(base, make(pins), pins)
    infos = []
    for node in ordered:
        if adjacent is not None:
            covers = tuple(sorted(adjacent.get(node, ())))
        else:
            covers = tuple(sorted(before ^ _conversions(make(frozenset({node})))))
        row = rows.get(node)
        facts: dict[str, Any] = {}
        if row is not None:
            facts = {"realised_precision": row.precision, "local_cosine": row.local_cosine,
                     "local_rel_rms": row.local_rel_rms, "accumulated_cosine": row.cosine}
        infos.append(PinInfo(node, session.model.nodes[node].op_type, covers, engine.get(node, ()), facts))
    return tuple(infos)


def _adjacent_conversions(base: Candidate, full: Candidate, pins: frozenset[str]) -> dict[str, set[str]]:
    """The conversions (Q/DQ, Cast) that differ between `base` and `full`, each given to the pinned
    nodes that read from it or write into it (through chains of conversions)."""
    out: dict[str, set[str]] = {}
    changed = _conversions(base) ^ _conversions(full)
    for cand in (base, full):
        graph = cand.model.graph if cand.model is not None else None
        if graph is None:
            continue
        nodes = {n.name: n for n in graph.node}
        producer = {o: n for n in graph.node for o in n.output}
        readers: dict[str, list] = {}
        for n in graph.node:
            for t in n.input:
                readers.setdefault(t, []).append(n)
        for name in changed & set(nodes):
            seen, todo = set(), [nodes[name]]
            while todo:  # walk through conversions to the nodes on both sides
                n = todo.pop()
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.name in pins:
                    out.setdefault(n.name, set()).add(name)
                    continue
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast") and n.name != name:
                    continue
                todo += [producer[t] for t in n.input if t in producer]
                todo += [r for t in n.output for r in readers.get(t, ())]
    return out


def _conversions(candidate: Candidate) -> set[str]:
    graph = candidate.model.graph if candidate.model is not None else None
    if graph is None:
        return set()
    return {n.name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast")}
