"""Writing the models layerdiff makes for a user (a candidate, an emulation, a recipe's ONNX): every one
passes onnx.checker's full check, its nodes in topological order, or nothing is written."""

from __future__ import annotations

from pathlib import Path

import onnx

from layerdiff.graph import _subgraphs, max_ir_version, serialize
from layerdiff.topology import node_order, sort_graph


def write_model(path: str | Path, proto: onnx.ModelProto) -> None:
    """Write a model layerdiff made for a user (a candidate, an emulation, a recipe's ONNX) to `path`,
    atomically, once it passes ONNX's full check (`checked_bytes`). Every model layerdiff writes goes
    through here; `proto` itself is never edited."""
    from layerdiff.files import write_atomic

    write_atomic(path, checked_bytes(proto))


def checked_bytes(proto: onnx.ModelProto) -> bytes:
    """`proto` serialised so that `onnx.checker.check_model(..., full_check=True)` passes it: its nodes
    (and every subgraph's) in topological order, as the checker, TensorRT's ONNX parser and most tools
    but ONNX Runtime require, and its graphs named (the checker wants a name, ONNX Runtime does not, so
    a user's model may have none). Where that changes something, a copy is changed, never `proto`. The
    builders make sorted models already; this is the guard. A model that still fails (a cycle, a tensor
    nothing writes, clashing types), or whose IR version this ONNX Runtime cannot read, is a bug in
    layerdiff: RuntimeError (the CLI's internal error), and nothing is written."""
    model = proto
    if not _sorted_and_named(proto.graph):  # copied only to change something: a model may be GiBs
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        try:
            sort_graph(model.graph)
        except ValueError as err:
            raise RuntimeError(f"layerdiff built a model that is not valid ONNX: {err}") from err
        _name_graphs(model.graph, "main_graph")
    data = serialize(model)
    if model.ir_version > max_ir_version():
        raise RuntimeError(f"layerdiff built a model of ONNX IR version {model.ir_version}, which this ONNX "
                           f"Runtime cannot read (at most {max_ir_version()})")
    try:  # in memory: serialize() refuses models over 2 GiB, which would have to be checked by path
        onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        why = " ".join(str(err).split())
        raise RuntimeError(f"layerdiff built a model that is not valid ONNX: {why[:300]}") from err
    return data


def _sorted_and_named(graph: onnx.GraphProto) -> bool:
    """Whether `graph` and every subgraph body have a name and their nodes in topological order."""
    try:
        if not graph.name or node_order(graph) != list(range(len(graph.node))):
            return False
    except ValueError:  # a cycle: reported by sort_graph
        return False
    return all(_sorted_and_named(g) for g in _subgraphs(graph))


def _name_graphs(graph: onnx.GraphProto, name: str) -> None:
    """Name `graph` (if it has no name) and its unnamed subgraph bodies after their node and attribute."""
    if not graph.name:
        graph.name = name
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _name_graphs(attr.g, f"{node.name or node.op_type}_{attr.name}")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for k, g in enumerate(attr.graphs):
                    _name_graphs(g, f"{node.name or node.op_type}_{attr.name}_{k}")
