"""The rows of a report: what is compared, and on which values each local error is computed.

A *layer row* is one layer of the model, or the layers the deployed candidate computes in one kernel
(a Conv with its activation in ONNX Runtime's FusedConv, a TensorRT engine layer). Layers are grouped
exactly where the deployed candidate has no value of a tensor between them: such a tensor exists in
neither run, so it cannot be compared, and the layers on both sides of it are one computation.

A row's *local error* is its layers recomputed in FP32 (the model's own weights) on the values the
candidate's kernel really reads: after the DequantizeLinear or Cast in front of it, never before. So
the rounding of a Q/DQ pair (or of a Cast to FP16) is not charged to the layer that reads it; it is a
*conversion row* of its own, placed after the layer that produced the tensor: its local error is the
rounding alone (the candidate's value before the QuantizeLinear against after the DequantizeLinear), and
its accumulated error is what the readers of the tensor see. Where the deployed candidate quantizes a
layer's output inside the kernel (a QLinearConv writing INT8), that rounding is part of the layer's
row, as it is part of its kernel.

Integer tensors (shapes, indices) are never compared; where a layer's recomputation needs one the
candidate does not expose, the reference's value is used (shapes do not depend on precision).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from layerdiff.backends.base import Deployment, Kernel
from layerdiff.graph import Layer, LoadedModel, Unit, proto_tensor_types
from layerdiff.match import Pairing

REFERENCE = "reference:"  # a read key prefix: take this tensor from the reference run
_RANK = {"int4": 0, "fp4": 0, "fp8": 1, "int8": 2, "uint8": 2, "int16": 3, "fp16": 3, "bf16": 3, "tf32": 4, "fp32": 5}
_NARROW = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
_QUANTIZED = {TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.INT16: "int16",
              TensorProto.UINT16: "int16", TensorProto.INT4: "int4", TensorProto.UINT4: "int4",
              TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.FLOAT8E5M2: "fp8"}
_WIDER = {TensorProto.FLOAT16: (TensorProto.FLOAT, TensorProto.DOUBLE),
          TensorProto.BFLOAT16: (TensorProto.FLOAT, TensorProto.DOUBLE), TensorProto.FLOAT: (TensorProto.DOUBLE,)}


@dataclass(frozen=True)
class RowOutput:
    tensor: str  # the reference tensor
    candidate: str | None  # the candidate tensor compared with it (None: not compared)
    reason: str = ""  # why not compared
    view: str = ""  # "quantized": the candidate never computes the float value, only its INT8 rounding


@dataclass(frozen=True)
class Row:
    name: str  # unique: the first layer's name, or the conversion node's
    kind: str  # "layer" | "conversion" | "constant"
    op: str
    index: int  # topological index of the (first) layer that produced it
    layers: Unit  # the model's layers in this row (none for a conversion row)
    outputs: tuple[RowOutput, ...]
    precision: str
    kernels: tuple[str, ...] = ()
    dequantized_inputs: bool = False
    emulated: bool = False
    requested: str | None = None
    reads: tuple[tuple[Layer, int, str, str], ...] = ()  # (layer, slot, reference tensor, read key)
    local_from: str | None = None  # conversion rows: the candidate tensor before the rounding
    no_local: str = ""  # why no local error is computed
    engine_layers: tuple[str, ...] = ()
    converts: str = ""  # conversion rows: the reference tensor being rounded

    @property
    def read_keys(self) -> set[str]:
        return {key for _, _, _, key in self.reads}


class _Groups:
    def __init__(self, names):
        self.parent = {n: n for n in names}

    def find(self, n: str) -> str:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def plan_rows(model: LoadedModel, pairing: Pairing, deployment: Deployment, *,
              executed: onnx.ModelProto | None = None, groups: list[tuple[str, ...]] = (),
              engine_of: dict[str, tuple[str, str, str]] | None = None, emulated: frozenset[str] = frozenset(),
              requested: dict[str, str] | None = None) -> list[Row]:
    """Rows in topological order (see the module doc). `groups`: layer names the candidate is known to
    fuse (TensorRT engine layers); `engine_of`: {first layer of a group: (engine layer, type, precision)}."""
    graph = _CandidateGraph(executed) if executed is not None else None
    seen: dict[str, tuple[str | None, str]] = {}
    # the float inputs of the QuantizeLinears that do an absorbed Relu or Clip: an integer kernel's INT8
    # output holds them rounded AND clipped, which is the absorbed activation's value, not theirs
    absorbing = set(pairing.absorbed.values())
    clipped = {n.input[0] for n in executed.graph.node if n.name in absorbing} if executed is not None else set()

    def value(t: str) -> tuple[str | None, str]:
        """(the candidate tensor holding reference tensor t as deployed, view) or (None, reason)."""
        if t not in seen:
            c = pairing.candidate(t)
            if t in pairing.folded:
                seen[t] = (None, "folded")
            elif c is None:
                seen[t] = (None, pairing.tensors[t].reason if t in pairing.tensors else "not matched")
            elif c in clipped and t not in pairing.absorbed and (not deployment.available(c)
                                                                 or deployment.view(c) == "quantized"):
                seen[t] = (None, "fused")
            elif deployment.available(c):
                seen[t] = (c, "quantized" if t in pairing.absorbed else deployment.view(c))
            else:
                views = graph.views(c) if graph else []
                seen[t] = next(((v, kind) for v, kind in views if deployment.available(v)), (None, "fused"))
        return seen[t]

    names = [lay.name for lay in model.layers]
    merged = _Groups(names)
    by_name = model.by_name
    for group in groups:
        members = [n for n in group if n in by_name]
        for n in members[1:]:
            merged.union(members[0], n)
    for layer in model.layers:
        for t in layer.outputs:
            if not _is_float(model, t) or layer.name in model.weight_layers:
                continue
            cand, why = value(t)
            if cand is None and why in ("fused", "folded"):
                for reader in model.consumers.get(t, ()):
                    merged.union(layer.name, reader.name)
    units: dict[str, list[Layer]] = defaultdict(list)
    for layer in model.layers:
        units[merged.find(layer.name)].append(layer)

    rows: list[Row] = []
    inputs: list[Row] = []
    if graph is not None:  # the rounding of graph inputs: right before, and numbered as, the first layer reading one
        readers = [lay.index for i in model.inputs for lay in model.consumers.get(i.name, ())
                   if lay.name not in model.weight_layers]
        inputs = _conversion_rows(model, [i.name for i in model.inputs], min(readers, default=0), pairing,
                                  deployment, graph, value)
    for unit in sorted(units.values(), key=lambda u: u[0].index):
        if inputs and unit[0].index >= inputs[0].index:
            rows.extend(inputs)
            inputs = []
        rows.append(_layer_row(model, tuple(unit), value, pairing, deployment, engine_of or {}, emulated,
                               requested or {}))
        if graph is not None:
            tensors = [t for lay in unit for t in lay.outputs]
            rows.extend(_conversion_rows(model, tensors, unit[0].index, pairing, deployment, graph, value))
    return rows + inputs


def _is_float(model: LoadedModel, t: str) -> bool:
    return model.is_float(t) or t not in model.tensor_types


def _layer_row(model, unit: Unit, value, pairing, deployment, engine_of, emulated, requested) -> Row:
    first = unit[0]
    if all(lay.name in model.weight_layers for lay in unit):
        return Row(first.name, "constant", first.op, first.index, unit,
                   tuple(RowOutput(t, None, pairing.tensors.get(t).reason if t in pairing.tensors else "")
                         for t in first.outputs if _is_float(model, t)), "fp32", no_local="a weight")
    inside = {t for lay in unit for t in lay.outputs}
    outputs, kernels = [], []
    for lay in unit:
        for t in lay.outputs:
            if not _is_float(model, t):
                continue
            cand, why = value(t)
            if cand is None:
                reason = {"fused": deployment.missing, "folded": pairing.tensors[t].reason}.get(why, why)
                outputs.append(RowOutput(t, None, reason))
                continue
            outputs.append(RowOutput(t, cand, "", why))
            kernel = deployment.kernel(cand)
            if kernel is not None:
                kernels.append(kernel)
    reads, no_local = [], ""
    for lay in unit:
        for slot, t in model.reads(lay):
            if t in inside or t in model.fixed:
                continue
            key = pairing.read(lay.name, slot, t)
            if not _is_float(model, t):
                key = key if deployment.available(key) else REFERENCE + t
            elif not deployment.available(key):
                no_local = no_local or (f"the value it reads in place of '{t}' ({key}) is not exposed by the candidate"
                                        if key != t else f"the value it reads, '{t}', is not exposed by the candidate")
            reads.append((lay, slot, t, key))
    if not any(o.candidate for o in outputs):
        no_local = no_local or "no output of it is compared"
    engine = next((engine_of[lay.name] for lay in unit if lay.name in engine_of), None)
    precision = _lowest([k.precision for k in kernels]) if kernels else "unknown"
    is_emulated = any(lay.name in emulated or pairing.nodes.get(lay.name) in emulated for lay in unit)
    absorbed = [t for lay in unit for t in lay.outputs if t in pairing.absorbed]
    if engine is not None:
        precision = engine[2]
    elif is_emulated:
        precision = "fp16"
    elif absorbed and (len(unit) == 1 or not kernels):  # a Relu or Clip that the QuantizeLinear does as it
        # rounds (in a row with the op before it, the kernel that computes both is that row's)
        precision, kernels = "int8", [Kernel("QuantizeLinear", "int8")]
    asked = next((requested[lay.name] for lay in unit if lay.name in requested), None)
    return Row(first.name, "layer", first.op if len(unit) == 1 else "+".join(dict.fromkeys(lay.op for lay in unit)),
               first.index, unit, tuple(outputs), precision,
               kernels=tuple(dict.fromkeys(k.op for k in kernels)) if engine is None else (engine[1],),
               dequantized_inputs=any(k.dequantized_inputs for k in kernels), emulated=is_emulated,
               requested=asked, reads=tuple(reads), no_local=no_local,
               engine_layers=(engine[0],) if engine else ())


def _lowest(precisions: list[str]) -> str:
    return min(precisions, key=lambda p: _RANK.get(p, 9))


def _conversion_rows(model, tensors: list[str], index: int, pairing, deployment, graph: _CandidateGraph, value
                     ) -> list[Row]:
    """A row for each rounding step (Q/DQ pair, Cast to a narrower float) applied to one of `tensors`
    before other layers read it."""
    rows = []
    absorbed = set(pairing.absorbed.values())
    for t in tensors:
        c = pairing.candidate(t)
        if c is None or not _is_float(model, t) or value(t)[1] == "quantized" or deployment.view(c):
            continue  # rounded inside the kernel that made it: part of that kernel's row
        for node, out, precision in graph.roundings(c):
            if not (deployment.available(c) and deployment.available(out)) or node.name in absorbed:
                continue  # (a QuantizeLinear that absorbed a Relu or Clip is that layer's row)
            rows.append(Row(node.name or f"{node.op_type}({t})", "conversion", node.op_type, index, (),
                            (RowOutput(t, out),), precision, kernels=(node.op_type,), local_from=c, converts=t))
    return rows


class _CandidateGraph:
    """Rounding steps of a candidate model: Q/DQ pairs and Casts to a narrower float."""

    def __init__(self, proto: onnx.ModelProto):
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in proto.graph.node:
            for t in dict.fromkeys(n.input):
                self.consumers[t].append(n)
        self.zero_point = {t.name: t.data_type for t in proto.graph.initializer}
        self.types = proto_tensor_types(proto)  # {tensor: element type}, to tell a widening Cast

    def views(self, tensor: str) -> list[tuple[str, str]]:
        """Other tensors holding `tensor`'s value, for when it does not exist itself: a widening Cast of it
        (the same value, kind ""), then the DequantizeLinear output of a Q/DQ pair on it (its value as
        INT8 readers see it, kind "quantized")."""
        exact = [(n.output[0], "") for n in self.consumers.get(tensor, ())
                 if n.op_type == "Cast" and self.types.get(tensor) and
                 next((a.i for a in n.attribute if a.name == "to"), None) in _WIDER.get(self.types[tensor], ())]
        return exact + [(out, "quantized") for q, out, _ in self.roundings(tensor) if q.op_type == "QuantizeLinear"]

    def roundings(self, tensor: str) -> list[tuple[onnx.NodeProto, str, str]]:
        out = []
        for q in self.consumers.get(tensor, ()):
            if q.op_type == "QuantizeLinear" and q.input[0] == tensor:
                precision = _QUANTIZED.get(self.zero_point.get(q.input[2] if len(q.input) > 2 else "",
                                                               TensorProto.UINT8), "int8")
                for dq in self.consumers.get(q.output[0], ()):
                    if dq.op_type == "DequantizeLinear":
                        out.append((q, dq.output[0], precision))
                        break
            elif q.op_type == "Cast":
                to = next((a.i for a in q.attribute if a.name == "to"), None)
                if to in _NARROW:
                    out.append((q, q.output[0], _NARROW[to]))
        return out


def exact_sources(proto: onnx.ModelProto) -> dict[str, str]:
    """{a candidate tensor: the tensor it holds exactly, in another type}: a DequantizeLinear's output and
    the INT8 value it reads (its "quantized" view), a widening Cast's output and the narrower float."""
    types = proto_tensor_types(proto)
    out = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input and n.output:
            out[n.output[0]] = n.input[0]
        elif n.op_type == "Cast" and n.input and n.output and types.get(n.input[0]) in _WIDER:
            if next((a.i for a in n.attribute if a.name == "to"), None) in _WIDER[types[n.input[0]]]:
                out[n.output[0]] = n.input[0]
    return out


def claimed_missing(rows: list[Row], pairing, deployment) -> list[str]:
    """The candidate tensors the rows say have no value in the deployed candidate (`deployment.missing`)."""
    # (a tensor read already, whose model tensor is said fused for a Relu the rounding clips, is no claim
    # about the deployed graph's values)
    return sorted(c for c in {pairing.candidate(o.tensor) or o.tensor for r in rows for o in r.outputs
                              if o.candidate is None and o.reason == deployment.missing}
                  if not deployment.available(c))


def checked_rows(plan, pairing, deployment, feeds) -> tuple[list[Row], tuple[str, ...]]:
    """The rows `plan()` makes, every "no value of it exists" in them checked against the deployed graph's
    values first (deployment.check_missing): a pairing the check found wrong is gone, one it found is
    new, and the rows are planned again; with a warning counting the tensors read by their values."""
    rows = plan()
    found = deployment.check_missing(claimed_missing(rows, pairing, deployment), feeds)
    if found is None:
        return rows, ()
    rows = plan()
    if not found:
        return rows, ()
    first = next(iter(found))
    where = "the deployed value of that name" if found[first] == first else f"'{found[first]}'"
    return rows, (f"{len(found)} tensor(s) were read by their values: ONNX Runtime rewrote the graph beyond what "
                  f"layerdiff pairs by structure, and a deployed value holds each on the samples checked (e.g. "
                  f"'{first}' read from {where})",)
