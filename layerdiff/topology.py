"""A graph's nodes as layers: in topological order (Kahn's algorithm, file order among ready nodes),
each with a unique name (an unnamed or repeated node gets `<Op>_<index>`), its data inputs (with what a
subgraph reads from the enclosing scope) and outputs."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import onnx

from layerdiff.errors import ModelError


@dataclass(frozen=True)
class Layer:
    index: int
    name: str
    op: str
    inputs: tuple[str, ...]  # data inputs, initializers and (for subgraph nodes) outer-scope reads; '' dropped
    outputs: tuple[str, ...]
    has_subgraph: bool
    named: bool = True  # the name is the model's own (False: generated, as the node had none or a duplicate)
    model_name: str = ""  # the node's name in the model file ("" when it has none)


Unit = tuple[Layer, ...]  # layers compared as one (fused into one engine layer), in topological order


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraph bodies read from the enclosing scope."""
    reads: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                defined.update(inner.output)
            for inner in g.node:
                reads.update(n for n in inner.input if n and n not in defined)
                reads.update(r for r in subgraph_reads(inner) if r not in defined)
    return reads


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def topological_layers(graph: onnx.GraphProto, initializers: frozenset[str]) -> list[Layer]:
    nodes = list(graph.node)
    node_inputs = []
    for node in nodes:
        names = [n for n in node.input if n]
        if has_subgraph(node):
            names += sorted(r for r in subgraph_reads(node) if r not in names)
        node_inputs.append(tuple(names))
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    # Kahn's algorithm, keeping file order among ready nodes
    indegree = [0] * len(nodes)
    consumers: dict[int, list[int]] = defaultdict(list)
    for i, names in enumerate(node_inputs):
        deps = {producer[n] for n in names if n in producer and producer[n] != i}
        indegree[i] = len(deps)
        for d in deps:
            consumers[d].append(i)
    ready = deque(i for i in range(len(nodes)) if indegree[i] == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for c in sorted(consumers[i]):
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if len(order) != len(nodes):
        raise ModelError("the model's graph has a cycle; it is not a valid ONNX model")
    used = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    layers = []
    for index, i in enumerate(order):
        node = nodes[i]
        named = bool(node.name) and node.name not in seen
        name = node.name if named else _fresh_name(f"{node.op_type}_{index}", used)
        seen.add(name)
        used.add(name)
        layers.append(Layer(index, name, node.op_type, node_inputs[i], tuple(o for o in node.output if o),
                            has_subgraph(node), named, node.name))
    return layers


def _fresh_name(base: str, used: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first that no node of the model already uses."""
    if base not in used:
        return base
    k = 1
    while f"{base}_{k}" in used:
        k += 1
    return f"{base}_{k}"


def name_nodes(graph: onnx.GraphProto, layers: tuple[Layer, ...]) -> None:
    """Give every node its layer name (unnamed or duplicate names get `<Op>_<index>`), so that tools
    that rewrite the model (quantizers, FP16 converters) carry the names into the candidate."""
    by_output = {layer.outputs[0]: layer.name for layer in layers if layer.outputs}
    for node in graph.node:
        outs = [o for o in node.output if o]
        if outs and by_output.get(outs[0], node.name) != node.name:
            node.name = by_output[outs[0]]


def node_order(graph: onnx.GraphProto) -> list[int]:
    """The indices of `graph`'s nodes in a topological order that keeps the file's order wherever it
    can: each node in file order, preceded by the nodes it reads from (a node a rewrite appended at the
    end, such as a QuantizeLinear, moves to just before its first reader). A graph already sorted keeps
    its order. Names no node of `graph` writes (inputs, initializers, an enclosing graph's tensors) are
    available from the start. Raises ValueError on a cycle."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps = []
    for i, node in enumerate(nodes):
        names = [n for n in node.input if n]
        if has_subgraph(node):
            names += sorted(subgraph_reads(node))
        deps.append(list(dict.fromkeys(producer[n] for n in names if n in producer and producer[n] != i)))
    state = [0] * len(nodes)  # 0: not placed, 1: on the stack (its producers being placed), 2: placed
    order: list[int] = []
    for root in range(len(nodes)):
        if state[root]:
            continue
        state[root] = 1
        stack = [(root, iter(deps[root]))]  # iterative depth-first: a long chain needs no deep recursion
        while stack:
            i, pending = stack[-1]
            d = next((d for d in pending if state[d] != 2), None)
            if d is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif state[d] == 1:
                raise ValueError(f"the graph '{graph.name}' has a cycle through node '{nodes[d].name}'")
            else:
                state[d] = 1
                stack.append((d, iter(deps[d])))
    return order


def sort_graph(graph: onnx.GraphProto) -> None:
    """Put `graph`'s nodes, and those of every subgraph body, in topological order (see `node_order`),
    editing it in place: give it a copy where the graph is shared."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                sort_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    sort_graph(g)
    order = node_order(graph)
    if order == list(range(len(order))):
        return
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)  # extend copies each node in
