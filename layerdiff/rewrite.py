"""Rewrites of a model for reading it: tensors exposed as outputs, nodes added beside the graph, and the
"exploded" graph that recomputes layers from the values a candidate really read.

Outputs and nodes are added by appending serialised bytes to the model's bytes: protobuf merges a message
serialised after another of the same type and appends repeated fields, so no copy of the weights is made
and the loaded ModelProto is never edited (not even for a while), which keeps runs thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from layerdiff.graph import (
    LOCAL_SUFFIX,
    Layer,
    LoadedModel,
    Unit,
    serialize,
    shape_of,
    value_info,
)


def with_outputs(blob: bytes, names: list[str], types: dict[str, int] | None = None,
                 present: set[str] | frozenset[str] = frozenset()) -> bytes:
    """`blob` (a serialised model) with `names` appended to its graph outputs (those in `present`, its
    outputs already, are skipped). Protobuf merges a message serialised after another of the same type
    and appends repeated fields, so this costs the size of the new outputs, not a copy of the weights,
    and never touches a shared ModelProto."""
    extra = [value_info(n, (types or {}).get(n)) for n in dict.fromkeys(names) if n not in present]
    if not extra:
        return blob
    return blob + onnx.ModelProto(graph=onnx.GraphProto(output=extra)).SerializeToString()


def with_nodes(blob: bytes, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> bytes:
    """`blob` with `nodes` and `initializers` appended to its graph (see `with_outputs`)."""
    if not nodes and not initializers:
        return blob
    return blob + onnx.ModelProto(graph=onnx.GraphProto(node=nodes, initializer=initializers)).SerializeToString()


def expose_tensors(model: LoadedModel, names: list[str]) -> bytes:
    """The model, serialised, with `names` as extra outputs (its own outputs come first)."""
    return with_outputs(model.blob, names, model.tensor_types, set(model.outputs))


Read = Callable[[Layer, int, str], str]  # (layer, input slot, tensor) -> the candidate tensor it really reads


@dataclass(frozen=True)
class Exploded:
    blob: bytes
    local: dict[str, str]  # reference tensor -> its recomputation (an output of the exploded graph)
    feeds: dict[str, str]  # graph input -> the candidate tensor that feeds it


def explode(model: LoadedModel, units: list[Unit], read: Read | None = None) -> Exploded:
    """A graph that recomputes each unit (one layer, or layers fused into one kernel) in FP32 from graph
    inputs. Inside a unit, a layer reads the recomputed outputs of the unit's other layers; weights
    (initializers, and the weight layers that make weights from them: Constant nodes, a reshaped weight)
    keep their FP32 values; every other input is a graph input named `read(layer, slot, tensor)`: the
    candidate's tensor that the layer really reads there (after any DequantizeLinear or Cast). Tensors a
    subgraph body reads from the outer scope keep their names. Outputs are renamed `<tensor>::local`."""
    read = read or (lambda layer, slot, tensor: tensor)
    graph = model.proto.graph
    by_output = {o: n for n in graph.node for o in n.output if o}
    inits = {t.name: t for t in graph.initializer}
    constants = model.constants
    nodes, inputs, local, feeds, used_inits, embedded = [], {}, {}, {}, set(), set()

    def weight(name: str) -> None:
        """Make `name`, a weight, available in the exploded graph with its FP32 value."""
        if name in inits:
            used_inits.add(name)
        elif name in constants and name not in embedded:
            node = by_output[name]
            for t in node.input:
                if t:
                    weight(t)
            nodes.append(node)
            embedded.update(o for o in node.output if o)

    for unit in units:
        inside = {t for lay in unit for t in lay.outputs}
        for layer in unit:
            node = onnx.NodeProto()
            node.CopyFrom(by_output[layer.outputs[0]])
            for slot, name in enumerate(node.input):
                if not name:
                    continue
                if name in inside:
                    node.input[slot] = name + LOCAL_SUFFIX
                elif name in inits or name in constants:
                    weight(name)
                else:
                    key = read(layer, slot, name)
                    node.input[slot] = key
                    inputs.setdefault(key, model.tensor_types.get(name))
                    feeds[key] = key
            for name in layer.inputs[len([i for i in node.input if i]):]:  # outer-scope reads of subgraphs
                if name in inits or name in constants:
                    weight(name)
                elif name in inside:  # the body reads it by its own name: give it that name here
                    nodes.append(helper.make_node("Identity", [name + LOCAL_SUFFIX], [name],
                                                  name=f"layerdiff/outer/{name}"))
                else:
                    inputs.setdefault(name, model.tensor_types.get(name))
                    feeds[name] = read(layer, -1, name)
            renamed = [o + LOCAL_SUFFIX if o else "" for o in node.output]
            local.update({o: o + LOCAL_SUFFIX for o in node.output if o})
            del node.output[:]
            node.output.extend(renamed)
            nodes.append(node)
    new_graph = helper.make_graph(
        nodes, "layerdiff_exploded",
        [value_info(n, t) for n, t in inputs.items()],
        [value_info(local[o], model.tensor_types.get(o)) for o in local],
        [inits[n] for n in sorted(used_inits)],
    )
    out = helper.make_model(new_graph, opset_imports=model.proto.opset_import)
    out.ir_version = model.proto.ir_version
    return Exploded(serialize(out), local, feeds)


def fixed_shape_types(model: LoadedModel, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Static shapes of tensors once the inputs have `shapes` (shape inference, no run). Tensors whose
    shape still depends on data are left out."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for vi in proto.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    del proto.graph.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError:
        return {}
    out = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output):
        s = shape_of(vi)
        if s is not None and all(isinstance(d, int) for d in s):
            out[vi.name] = tuple(s)  # type: ignore[arg-type]
    return out

