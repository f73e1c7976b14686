"""Pair the reference model's layers and tensors with the candidate's, by structure.

A candidate is the FP32 model rewritten: Q/DQ pairs inserted on inputs (quantizers), casts inserted
around nodes (FP16 converters, layerdiff's FP16 emulation), nodes renamed or left unnamed. Names are not
trusted on their own: a reference layer pairs with the candidate node of the same op type that reads the
same values, where "the same value" looks through the value-preserving or rounding-only nodes in between
(QuantizeLinear, DequantizeLinear, Cast, Identity). A node name that agrees with the structure breaks ties;
a name that disagrees with it is ignored. Weights (initializers, Constant outputs) never decide a pairing:
the candidate holds them quantized, cast or renamed.

For every reference layer the pairing gives the candidate node, the candidate tensor holding each of its
outputs (after the rounding cast of an FP16-emulated node), and the candidate tensor it really reads in
each input slot (the DequantizeLinear or Cast output, not the tensor before it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from layerdiff.graph import FINAL_KEY, LoadedModel
from layerdiff.jsonread import metadata_json

TRANSPARENT = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"})
# ops a rewrite may drop without changing what the next layer reads (or that a QuantizeLinear absorbs)
PASS_THROUGH = frozenset({"Identity", "Dropout", "Relu", "Clip"})
# a layer with constant operands that a rewrite folds into the weights of the layer before it (ONNX
# Runtime's Conv+BatchNormalization, Conv+Mul and Conv+Add fusions, which quant_pre_process applies)
FOLDABLE = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})
FOLD_INTO = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Pair:
    reference: str
    candidate: str | None
    reason: str = ""  # why it is unpaired


@dataclass
class Pairing:
    tensors: dict[str, Pair] = field(default_factory=dict)  # reference tensor -> candidate tensor
    nodes: dict[str, str] = field(default_factory=dict)  # reference layer -> candidate node
    reads: dict[tuple[str, int], str] = field(default_factory=dict)  # (layer, input slot) -> candidate tensor
    absorbed: dict[str, str] = field(default_factory=dict)  # reference tensor -> the QuantizeLinear doing its layer
    folded: set[str] = field(default_factory=set)  # reference tensors inside a candidate node that folds layers

    def candidate(self, tensor: str) -> str | None:
        pair = self.tensors.get(tensor)
        return pair.candidate if pair else None

    def read(self, layer: str, slot: int, tensor: str) -> str:
        """The candidate tensor a layer reads in `slot` (its paired value where the slot is unknown)."""
        return self.reads.get((layer, slot)) or self.candidate(tensor) or tensor


def identity_pairing(model: LoadedModel) -> Pairing:
    """Pairs by name, for candidates built from the model itself (TensorRT engines, imported results):
    whether the candidate holds a tensor is its deployment's to say."""
    pairing = Pairing()
    for t in [i.name for i in model.inputs] + [t for lay in model.layers for t in lay.outputs]:
        pairing.tensors[t] = Pair(t, t)
    pairing.nodes = {lay.name: lay.name for lay in model.layers}
    return pairing


def final_outputs(candidate: onnx.ModelProto) -> dict[str, str]:
    """{raw output of a candidate node: the tensor that holds it after its rounding} (metadata)."""
    for prop in candidate.metadata_props:
        if prop.key == FINAL_KEY:
            finals = metadata_json(prop.value, FINAL_KEY, lambda v: isinstance(v, dict) and all(
                isinstance(o, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in o.items())
                for o in v.values()), "an object of {raw output: final tensor} objects")
            return {raw: final for outs in finals.values() for raw, final in outs.items()}
    return {}


def match_tensors(model: LoadedModel, candidate: onnx.ModelProto) -> Pairing:
    """Pair every layer, layer output and graph input of `model` with `candidate`'s."""
    graph = candidate.graph
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for t in dict.fromkeys(n.input):
            if t:
                consumers[t].append(i)
    weights = _candidate_weights(graph)
    final = final_outputs(candidate)  # declared by the candidate: a node's raw output -> the value its readers see
    declared = {v: k for k, v in final.items()}
    taken: set[int] = set()  # candidate nodes paired with a layer; a paired Cast is the model's own, not transparent

    def transparent(i: int) -> bool:
        return nodes[i].op_type in TRANSPARENT and i not in taken and bool(nodes[i].input) and bool(nodes[i].input[0])

    def source(tensor: str) -> str | None:
        """The value `tensor` carries, looking back through transparent nodes; None for a weight."""
        for _ in range(64):
            if tensor in declared:
                tensor = declared[tensor]
                continue
            i = producer.get(tensor)
            if i is None or not transparent(i):
                break
            tensor = nodes[i].input[0]
        return None if tensor in weights else tensor

    def readers(tensor: str) -> list[int]:
        """Nodes reading `tensor`'s value, directly or through transparent nodes."""
        out, stack, seen = [], [tensor], {tensor}
        while stack:
            t = stack.pop()
            if t in final and final[t] not in seen:
                seen.add(final[t])
                stack.append(final[t])
            for i in consumers.get(t, ()):
                out.append(i)
                if transparent(i) and nodes[i].output and nodes[i].output[0] not in seen:
                    seen.add(nodes[i].output[0])
                    stack.append(nodes[i].output[0])
        return out

    weight_only: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        if n.op_type != "Constant" and all(not t or t in weights for t in n.input):
            weight_only[n.op_type].append(i)
    by_name = {n.name: i for i, n in enumerate(nodes) if n.name}
    cand_inputs = {i.name for i in graph.input}

    pairing = Pairing()
    raw: dict[str, str] = {}  # reference tensor -> the candidate tensor as its node wrote it
    host: dict[str, int] = {}  # reference layer -> the candidate node computing it
    for spec in model.inputs:
        ok = spec.name in cand_inputs
        pairing.tensors[spec.name] = Pair(spec.name, spec.name if ok else None,
                                          "" if ok else "the candidate has no graph input of this name")
        if ok:
            raw[spec.name] = spec.name
    ref_nodes = {o: n for n in model.proto.graph.node for o in n.output if o}
    for layer in model.layers:
        node = ref_nodes.get(layer.outputs[0]) if layer.outputs else None
        found: list[int] = []
        if node is not None and layer.name not in model.weight_layers:
            want = [_ref_source(model, t, raw) for t in node.input]
            active = next((s for s in want if s), None)
            pool = readers(active) if active else weight_only.get(layer.op, [])
            found = [i for i in dict.fromkeys(pool) if i not in taken and nodes[i].op_type == layer.op
                     and (nodes[i].domain or "") == (node.domain or "")
                     and [w for w in want if w] == [s for s in (source(t) for t in nodes[i].input if t) if s]]
        if not found and node is not None and layer.named and layer.name not in model.weight_layers:
            # structure broke upstream (a node the candidate lacks): the model's own name, same op, still tells
            named = by_name.get(layer.name)
            if named is not None and named not in taken and nodes[named].op_type == layer.op:
                found = [named]
        if not found:
            _unpaired(pairing, layer, nodes, by_name, model.weight_layers)
            inputs = [_ref_source(model, t, raw) for t in (node.input if node is not None else ())]
            active = [s for s in inputs if s]
            if _fold(model, layer, node, active, host, nodes, raw, final, pairing):
                continue
            if layer.op in PASS_THROUGH and len(active) == 1 and len(layer.outputs) == 1:
                # removed (Identity, Dropout) or absorbed by the QuantizeLinear after it (a Relu or Clip that
                # an unsigned INT8 range clips anyway): its readers read what it read
                out, source_tensor = layer.outputs[0], active[0]
                raw[out] = source_tensor
                if layer.op in ("Identity", "Dropout"):
                    pairing.tensors[out] = Pair(out, final.get(source_tensor, source_tensor))
                else:
                    q = next((nodes[i] for i in consumers.get(source_tensor, ()) if nodes[i].op_type == "QuantizeLinear"
                              and nodes[i].input[0] == source_tensor), None)
                    dq = next((nodes[i] for i in consumers.get(q.output[0], ()) if nodes[i].op_type ==
                               "DequantizeLinear"), None) if q is not None else None
                    if dq is not None:  # its value is what the QuantizeLinear writes: the layer, rounded
                        pairing.tensors[out] = Pair(out, dq.output[0])
                        pairing.absorbed[out] = q.name
                        pairing.reads[(layer.name, 0)] = source_tensor
            continue
        # equal structure: the node of the same name if there is one, else the first in file order
        index = next((i for i in found if nodes[i].name == layer.name), min(found))
        taken.add(index)
        host[layer.name] = index
        cand = nodes[index]
        pairing.nodes[layer.name] = cand.name
        for slot, name in enumerate(cand.input):
            if name:
                pairing.reads[(layer.name, slot)] = name
        for k, tensor in enumerate(layer.outputs):
            out = cand.output[k] if k < len(cand.output) else ""
            if out:
                raw[tensor] = out
                pairing.tensors[tensor] = Pair(tensor, final.get(out, out))
            else:
                pairing.tensors[tensor] = Pair(tensor, None, f"the candidate's {layer.op} node has no output {k}")
    return pairing


def _fold(model: LoadedModel, layer, node, active: list[str], host: dict[str, int], nodes, raw, final,
          pairing: Pairing) -> bool:
    """Pair `layer` (a BatchNormalization, or a Mul/Add/Sub/Div by a constant) with the candidate node
    that computes the layer before it, when the candidate folded it into that node's weights: its value
    is that node's output, and the tensor between them exists only in the model (it is grouped with
    them in one row, as a fusion is)."""
    if layer.op not in FOLDABLE or node is None or len(active) != 1 or len(layer.outputs) != 1:
        return False
    inner = [t for t in node.input if t and t not in model.fixed]
    producer = model.producers.get(inner[0]) if len(inner) == 1 else None
    if producer is None or producer.name not in host or inner[0] in model.outputs:
        return False
    cand = nodes[host[producer.name]]
    if cand.op_type not in FOLD_INTO or [lay.name for lay in model.consumers.get(inner[0], ())] != [layer.name]:
        return False
    out = layer.outputs[0]
    raw[out] = active[0]
    pairing.tensors[out] = Pair(out, final.get(active[0], active[0]))
    pairing.tensors[inner[0]] = Pair(inner[0], None, f"fused inside the candidate's {cand.op_type} node "
                                     f"'{cand.name}', which also computes {layer.op} '{layer.name}' (folded into it)")
    pairing.folded.add(inner[0])
    pairing.nodes[layer.name] = cand.name
    host[layer.name] = host[producer.name]
    return True


def _candidate_weights(graph: onnx.GraphProto) -> set[str]:
    """Initializers and every tensor computed from them alone (Constant nodes, a weight's DequantizeLinear
    or Cast, a reshaped weight), whatever the order of the nodes in the file."""
    weights = {t.name for t in graph.initializer}
    pending = [n for n in graph.node if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                for a in n.attribute)]
    while True:
        ready = [n for n in pending if (n.op_type == "Constant" and not any(n.input))
                 or (any(n.input) and all(not t or t in weights for t in n.input))]
        if not ready:
            return weights
        for n in ready:
            weights.update(o for o in n.output if o)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]


def _ref_source(model: LoadedModel, tensor: str, raw: dict[str, str]) -> str | None:
    if not tensor:
        return ""
    if tensor in model.fixed:
        return None
    return raw.get(tensor, f"<unpaired:{tensor}>")


def _unpaired(pairing: Pairing, layer, nodes, by_name, weights: frozenset[str] = frozenset()) -> None:
    if layer.name in weights:
        why = "a weight: its rounding counts in the local error of the layers that read it"
    else:
        named = by_name.get(layer.name)
        if named is not None and nodes[named].op_type == layer.op:
            why = f"the candidate's {layer.op} node '{layer.name}' reads other values than the model's"
        else:
            why = f"the candidate has no {layer.op} node reading the same values"
    for t in layer.outputs:
        pairing.tensors[t] = Pair(t, None, why)
