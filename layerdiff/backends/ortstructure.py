"""Shapes and structure the pairing compares: a value's shape in the model's layout, shapes that agree
where both are known, and a structural key per tensor (the same op on the same values), under which an
op that outputs its input unchanged (x*1, x+0, Identity) has its input's key."""

from __future__ import annotations

import numpy as np
import onnx

def to_model_layout(shape, layout):
    """The shape of a value held in `layout` (a permutation) as the model's tensor would have it."""
    if shape is None or not isinstance(layout, tuple) or len(shape) != len(layout):
        return shape
    out = [None] * len(layout)
    for i, axis in enumerate(layout):
        out[axis] = shape[i]
    return out


def same_shape(a, b) -> bool:
    """Shapes that agree wherever both are known (None: unknown), after dropping dimensions of size 1 (the
    same values in the same order: ONNX Runtime writes [N, C, 1, 1] as [N, 1, 1, C] in its channels-last
    kernels, and the capture reshapes such a value back)."""
    if a is None or b is None:
        return True

    def agree(p, q) -> bool:
        return len(p) == len(q) and all(not isinstance(x, int) or not isinstance(y, int) or x == y
                                        for x, y in zip(p, q))

    # dimension by dimension first: a named dimension may be 1 where the other side states it (a
    # sequence of length 1), which dropping the 1s would miscount
    return agree(a, b) or agree([x for x in a if x != 1], [x for x in b if x != 1])


_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"})


def _structure(graph: onnx.GraphProto) -> dict[str, tuple | None]:
    """{tensor: a key equal for two tensors exactly when the same op, with the same attributes, computes
    them from the same values (graph inputs and initializers by name)}; None for what a subgraph computes."""
    from layerdiff.topology import node_order

    keys: dict[str, tuple | None] = {}
    ids: dict[tuple, int] = {}  # each key's number: a key holds its inputs' numbers, never their keys
    nodes = list(graph.node)
    units = _units(graph)
    for index in node_order(graph):
        node = nodes[index]
        same = _identity_of(node, units)
        if same is not None:  # x*1, x/1, x+0, x-0, Identity: the value it reads, whatever computes it
            keys[node.output[0]] = keys.get(same, ("value", same))
            continue
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute) \
            or node.op_type in _RANDOM  # two draws are not one value, however alike the nodes
        ins = []
        for t in node.input:
            key = keys.get(t, ("value", t)) if t else ("none",)
            ins.append(None if key is None else ids.setdefault(key, len(ids)))
        attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
        for i, out in enumerate(node.output):
            if out:
                keys[out] = None if subgraph or None in ins else (node.op_type, node.domain, attrs, tuple(ins), i)
    return keys


def _units(graph: onnx.GraphProto) -> dict[str, float]:
    """{initializer or Constant output holding one number: that number}."""
    from onnx import numpy_helper

    out: dict[str, float] = {}
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.output
                for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    for name, t in tensors:
        if len(t.dims) <= 1 and int(np.prod(t.dims, dtype=np.int64)) == 1 and t.data_type in _FLOAT_TYPES:
            out[name] = float(numpy_helper.to_array(t).reshape(-1)[0])
    return out


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
_NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


def _identity_of(node: onnx.NodeProto, units: dict[str, float]) -> str | None:
    """The input whose value `node` outputs unchanged (same shape: the constant is one number of rank at
    most 1, which broadcasts without adding an axis to a value of rank 1 or more), or None."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    if node.op_type == "Identity" and node.input:
        return node.input[0]
    neutral = _NEUTRAL.get(node.op_type)
    if neutral is None or len(node.input) != 2:
        return None
    a, b = node.input
    if units.get(b) == neutral and a not in units:
        return a
    if node.op_type in ("Mul", "Add") and units.get(a) == neutral and b not in units:
        return b
    return None
