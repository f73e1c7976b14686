"""Pair each reference tensor with the candidate tensor that holds the same value.

Rewrites rename and add tensors: ONNX Runtime's QDQ quantizer renames a graph output's producer output
(`probs` -> `probs_QuantizeLinear_Input`), FP16 converters route graph outputs through casts. A layer's
output is therefore found by its producer first (the candidate node of the same name and op type,
same output index), then by tensor name. Graph inputs pair by name."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from layerdiff.graph import LoadedModel


@dataclass(frozen=True)
class Pair:
    reference: str
    candidate: str | None
    reason: str = ""  # why it is unpaired


def match_tensors(model: LoadedModel, candidate: onnx.ModelProto) -> dict[str, Pair]:
    """A Pair for every tensor produced by a layer of `model`, and for every graph input."""
    graph = candidate.graph
    by_name = {n.name: n for n in graph.node if n.name}
    rounded = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Cast" and "::cast_out" in n.name}
    produced = {o: n for n in graph.node for o in n.output if o}
    cand_inputs = {i.name for i in graph.input}
    pairs: dict[str, Pair] = {}
    for spec in model.inputs:
        if spec.name in cand_inputs:
            pairs[spec.name] = Pair(spec.name, spec.name)
        else:
            pairs[spec.name] = Pair(spec.name, None, "the candidate has no graph input of this name")
    for layer in model.layers:
        node = by_name.get(layer.name)
        if node is not None and node.op_type != layer.op:
            node = None
        outs = [o for o in node.output] if node is not None else []
        for i, tensor in enumerate(layer.outputs):
            if i < len(outs) and outs[i]:
                # an FP16-emulated node's value is its output after the rounding cast
                pairs[tensor] = Pair(tensor, rounded.get(outs[i], outs[i]))
            elif tensor in produced and produced[tensor].op_type == layer.op:
                pairs[tensor] = Pair(tensor, tensor)
            elif tensor in produced:
                pairs[tensor] = Pair(tensor, None, f"the candidate computes it with {produced[tensor].op_type}, "
                                                   f"not {layer.op}")
            else:
                pairs[tensor] = Pair(tensor, None, f"the candidate has no {layer.op} node '{layer.name}' "
                                                   "and no tensor of this name")
    return pairs
