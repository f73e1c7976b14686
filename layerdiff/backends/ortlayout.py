"""The layout in which ONNX Runtime's optimized graph holds each value, followed by structure (the nodes
that wrote it, never their names): the model's own layout (None); a permutation p of it (the value's
axis i is the model's axis p[i]: NHWC is (0, 2, 3, 1)); or BLOCKED, an NCHWc blocked layout or one this
cannot follow, which is never read. ONNX Runtime's layout passes insert a Transpose (or a ReorderInput)
where a value enters channels-last (or NCHWc) kernels and one back where it leaves them; in between,
values stay in that layout under the names of the model's tensors. Transposes compose (a Transpose of
the model's own is relative to its output); elementwise ops and channels-last kernels compute in the
layout they read; weights have none (ONNX Runtime transposes a constant to the value it meets); a
Squeeze drops its axes from the layout. ONNX Runtime's transpose optimizer also pushes the model's own
Transposes down across such ops (a Slice of Transpose(A) becomes a Slice of A, transposed later): where
a node reads A and the model's node it stands for (the one of its op reading a Transpose of A) reads
Transpose(A), its input is that Transpose's output in the inverse layout. Any other op reads and writes
the model's layout, or its output is BLOCKED."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from layerdiff.backends.ortops import KEEPS_LAYOUT, NCHWC_DOMAIN, NHWC_DOMAIN
from layerdiff.topology import node_order

BLOCKED = "blocked"
_CARRIERS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"})


def follow_layouts(graph: onnx.GraphProto, shapes: dict[str, list | None], cproducer: dict[str, onnx.NodeProto],
               cnodes: dict[str, onnx.NodeProto], initializers: set[str]) -> dict[str, tuple[int, ...] | str | None]:
    """Every value of ONNX Runtime's optimized `graph` and the layout it holds it in (see the module doc),
    in one pass in topological order. `shapes`: the shapes its session states; `cproducer` and `cnodes`: the
    candidate's nodes by output and by name (a Transpose of the model's own is relative to its value)."""
    layouts: dict[str, tuple[int, ...] | str | None] = {}
    constant: set[str] = set(initializers)
    values = {i.name: i for i in graph.initializer}
    cconsumers: dict[str, list[onnx.NodeProto]] = {}
    for cnode in cproducer.values():
        for t in cnode.input:
            cconsumers.setdefault(t, []).append(cnode)  # computed from initializers alone: weights have no layout
    nodes = list(graph.node)
    for index in node_order(graph):
        node = nodes[index]
        outs = [o for o in node.output if o]
        if all(not t or t in constant for t in node.input):
            constant.update(outs)
            continue
        # a constant operand is transposed by ONNX Runtime to the layout of the value it meets
        data = [t for t in node.input if t and t not in constant]
        ins = [layouts.get(t) for t in data]
        # (not Q/DQ and casts: ONNX Runtime moves those themselves, above a Transpose that stays)
        if len(data) == 1 and ins[0] != BLOCKED and node.op_type not in _CARRIERS and (
                node.op_type in KEEPS_LAYOUT or node.op_type == "Squeeze"):
            ins = [_through_moved_transpose(node, data[0], ins[0], shapes, cproducer, cnodes, cconsumers)]
        result = _node_layout(node, outs[0] if outs else "", data, ins, shapes, cproducer, cnodes, values)
        for o in outs:
            layouts[o] = result
    return layouts

def _through_moved_transpose(node: onnx.NodeProto, tensor: str, layout, shapes, cproducer, cnodes, cconsumers):
    """The layout of `tensor`, the one value `node` reads, relative to what the model's node that `node`
    stands for reads: where that node reads Transpose(tensor) (ONNX Runtime moved the Transpose below it),
    the Transpose's output in the inverse layout; otherwise `layout` as it is."""
    if tensor not in cproducer and tensor not in cconsumers:
        return layout  # not a value of the model's: nothing to be relative to
    own = cnodes.get(node.name)
    if own is not None and own.op_type == node.op_type and tensor in own.input:
        return layout  # the model's node reads the value itself
    readers = [(t, c) for t in cconsumers.get(tensor, ()) if t.op_type == "Transpose" and t.output
               for c in cconsumers.get(t.output[0], ()) if c.op_type == node.op_type]
    if not readers:
        return layout
    # structure finds the model's node; its name breaks a tie between several of the same op
    chosen = readers[0] if len(readers) == 1 else next(((t, c) for t, c in readers if c.name == node.name), None)
    if chosen is None:
        return layout
    moved = chosen[0]
    n = rank(shapes.get(tensor))
    perm = _perm(moved, n)
    if perm is None or (n is not None and len(perm) != n):
        return BLOCKED
    p = layout if isinstance(layout, tuple) else tuple(range(len(perm)))
    if len(p) != len(perm):
        return BLOCKED
    inv = inverse(perm)
    relative = tuple(inv[a] for a in p)
    return None if relative == tuple(range(len(relative))) else relative


def _squeezed(node: onnx.NodeProto, layout: tuple[int, ...], shape, values) -> tuple[int, ...] | str | None:
    """A Squeeze's output layout when it reads a value in `layout`: its axes (those of the value as held)
    dropped, the model's axes they were renumbered."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        init = values.get(node.input[1])
        if init is None:
            return BLOCKED
        axes = [int(a) for a in numpy_helper.to_array(init).reshape(-1)]
    n = len(layout)
    if axes is None:  # every axis of size 1
        if shape is None or len(shape) != n or not all(isinstance(d, int) for d in shape):
            return BLOCKED
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = sorted({a % n for a in axes})
    dropped = {layout[a] for a in axes}
    kept = [layout[i] for i in range(n) if i not in axes]
    result = tuple(a - sum(1 for d in dropped if d < a) for a in kept)
    return None if result == tuple(range(len(result))) else result


def _node_layout(node: onnx.NodeProto, ktensor: str, data: list[str], ins: list, shapes, cproducer, cnodes,
                 values) -> tuple[int, ...] | str | None:
    first = ins[0] if ins else None
    if node.op_type == "Squeeze" and node.domain in ("", "ai.onnx") and isinstance(first, tuple):
        return _squeezed(node, first, shapes.get(data[0]), values)
    if node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        perm = _perm(node, rank(shapes.get(ktensor)))
        # the model's own Transpose, where its output kept its name, or where ONNX Runtime renamed that
        # output (an INT8 conversion after it) but kept the node's name
        own = cproducer.get(ktensor)
        if own is None or own.op_type != "Transpose":
            own = cnodes.get(node.name)
            # a name is only a tie-break: the model's Transpose of that name reads this value, or this one
            # reads a value ONNX Runtime renamed (ONNX Runtime names Transposes it inserts "Transpose" too)
            if own is not None and own.input and data and own.input[0] != data[0] and data[0] in cproducer:
                own = None
        if first == BLOCKED or perm is None:
            return BLOCKED
        composed = tuple(first[i] for i in perm) if first is not None else perm
        if own is not None and own.op_type == "Transpose":  # relative to the model's value: its input
            mine = _perm(own, len(composed))  # transposed by the model's perm
            if mine is None or len(mine) != len(composed):
                return BLOCKED
            composed = tuple(inverse(mine)[a] for a in composed)
        return None if composed == tuple(range(len(composed))) else composed
    if node.op_type == "ReorderOutput":  # NCHWc back to NCHW, or to NHWC with channels_last
        last = next((a.i for a in node.attribute if a.name == "channels_last"), 0)
        return (0, 2, 3, 1) if last else None
    if node.domain == NCHWC_DOMAIN or node.op_type == "ReorderInput":
        return BLOCKED
    if node.op_type in KEEPS_LAYOUT or node.domain == NHWC_DOMAIN:
        # elementwise ops and the channels-last kernels compute in the layout they read; a value read in
        # two layouts at once is not one ONNX Runtime writes
        ranked = [lay for t, lay in zip(data, ins) if rank(shapes.get(t)) != 0]
        if not ranked:
            return None
        return ranked[0] if all(lay == ranked[0] for lay in ranked) else BLOCKED
    # any other op reads and writes the model's layout, or a layout this cannot follow
    return None if all(lay is None for lay in ins) else BLOCKED


def _perm(node: onnx.NodeProto, rank: int | None) -> tuple[int, ...] | None:
    """A Transpose's permutation (none given: the axes reversed, which needs the rank)."""
    perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm if perm is not None else (tuple(reversed(range(rank))) if rank is not None else None)


def rank(shape) -> int | None:
    return None if shape is None else len(shape)


def inverse(perm: tuple[int, ...]) -> list[int]:
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return inv
