"""The ONNX graph: load a model, infer shapes, list its layers in topological order, name the nodes
that have no name of their own, and tell weights from the computation (rewrites are in rewrite.py).

A *layer* is one ONNX node of the main graph. Nodes with subgraphs (If, Loop, Scan) are one layer; the
tensors their bodies read from the outer scope count as inputs of that layer.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from layerdiff.errors import ModelError
from layerdiff.lazy import once
from layerdiff.topology import (  # noqa: F401  (Layer, Unit: re-exported)
    Layer,
    Unit,
    name_nodes,
    node_order,
    sort_graph,
    topological_layers,
)

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
LOCAL_SUFFIX = "::local"
# candidate metadata: {node: {its raw output: the tensor holding it after the rounding that follows it}}
FINAL_KEY = "layerdiff.final_outputs"
_PROTO_LIMIT = 1_900_000_000  # protobuf cannot serialise 2 GiB; above this, models go through files


@dataclass(frozen=True)
class InputSpec:
    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None  # None: rank unknown; str: a named dynamic dimension

    @property
    def dtype(self) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.elem_type)


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    sha256: str
    proto: onnx.ModelProto  # shape-inferred
    layers: tuple[Layer, ...]
    tensor_types: dict[str, int]  # every tensor whose element type is known
    initializers: frozenset[str]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]

    @property
    def key(self) -> str:
        """Tells this model apart from others: its file's SHA-256, or this object for an in-memory model."""
        return self.sha256 or f"memory:{id(self)}"

    def is_float(self, tensor: str) -> bool:
        return self.tensor_types.get(tensor) in FLOAT_TYPES

    @once
    def weight_layers(self) -> frozenset[str]:
        """Layers that compute from weights alone: Constant nodes, and nodes whose every input is an
        initializer or the output of such a layer (a weight reshaped or transposed in the graph). They
        are weights in the making (ONNX Runtime and TensorRT fold them into initializers), not layers
        of the computation."""
        weights: set[str] = set(self.initializers)
        names = set()
        for layer in self.layers:
            if layer.has_subgraph:
                continue
            if (layer.op == "Constant" and not layer.inputs) or (layer.inputs and all(t in weights for t in layer.inputs)):
                names.add(layer.name)
                weights.update(layer.outputs)
        return frozenset(names)

    @once
    def constants(self) -> frozenset[str]:
        """Outputs of the weight layers. A layer's local error treats them like initializers (FP32
        values), so the rounding of a weight counts against the layer that uses it."""
        return frozenset(t for layer in self.layers if layer.name in self.weight_layers for t in layer.outputs)

    @once
    def fixed(self) -> frozenset[str]:
        """Tensors whose value is part of the model: initializers and the outputs of weight layers."""
        return self.initializers | self.constants

    @once
    def producers(self) -> dict[str, Layer]:
        return {out: layer for layer in self.layers for out in layer.outputs}

    @once
    def tensor_producers(self) -> dict[str, str]:
        """{tensor: the name of the layer that writes it}."""
        return {out: layer.name for layer in self.layers for out in layer.outputs}

    @once
    def consumers(self) -> dict[str, tuple[Layer, ...]]:
        """{tensor: the layers that read it}, in topological order."""
        out: dict[str, list[Layer]] = defaultdict(list)
        for layer in self.layers:
            for t in dict.fromkeys(layer.inputs):
                out[t].append(layer)
        return {t: tuple(v) for t, v in out.items()}

    @once
    def by_name(self) -> dict[str, Layer]:
        return {layer.name: layer for layer in self.layers}

    @once
    def nodes(self) -> dict[str, onnx.NodeProto]:
        """{layer name: its node in `proto`} (read only)."""
        by_output = {o: n for n in self.proto.graph.node for o in n.output if o}
        return {layer.name: by_output[layer.outputs[0]] for layer in self.layers if layer.outputs}

    def reads(self, layer: Layer) -> list[tuple[int, str]]:
        """(input slot, tensor) of every value `layer` reads; slot -1 for what a subgraph body reads from
        the outer scope."""
        node = self.nodes.get(layer.name)
        slots = [(i, t) for i, t in enumerate(node.input) if t] if node is not None else []
        named = {t for _, t in slots}
        return slots + [(-1, t) for t in layer.inputs if t not in named]

    @once
    def blob(self) -> bytes:
        """The serialised model (made once; sessions and rewrites start from these bytes)."""
        return serialize(self.proto)

    @once
    def opset(self) -> int:
        return max((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: str | Path) -> LoadedModel:
    """Load an ONNX model (external data included), check ONNX Runtime can read it, infer shapes."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory; give the path of an .onnx file")
    if not path.is_file():
        raise ModelError(f"model not found: {path} (give the path of an .onnx file)")
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except DecodeError as err:
        raise ModelError(f"{path} is not an ONNX model (protobuf could not parse it)") from err
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {path} as an ONNX model: {str(err).splitlines()[0]}") from err
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} is not an ONNX model (it holds no graph)")
    check_ir_version(proto, path)
    return from_proto(proto, path, _sha256(path))


_ALWAYS_READ_IR = 10  # every ONNX Runtime layerdiff supports (>= 1.20) reads IR 10


def check_ir_version(proto: onnx.ModelProto, path: Path | str) -> None:
    if proto.ir_version <= _ALWAYS_READ_IR:
        return
    limit = max_ir_version()
    if proto.ir_version > limit:
        raise ModelError(
            f"{path} has ONNX IR version {proto.ir_version}, but this ONNX Runtime reads at most {limit}: "
            f"re-save it with ir_version={limit} (model.ir_version = {limit}; onnx.save(model, path)) "
            "or upgrade onnxruntime"
        )


_MAX_IR: int | None = None


def probe_model() -> onnx.ModelProto:
    """A one-node model (Relu, opset 13, IR 8) to ask ONNX Runtime what it accepts or which providers load."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def max_ir_version() -> int:
    """The newest IR version the installed ONNX Runtime accepts, found by asking it (cached)."""
    global _MAX_IR
    if _MAX_IR is None:
        import onnxruntime as ort

        model = probe_model()
        for ir in range(onnx.IR_VERSION, 6, -1):
            model.ir_version = ir
            try:
                ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            except (ort.capi.onnxruntime_pybind11_state.Fail,
                    ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                    ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as err:
                if "IR version" in str(err):
                    continue
                raise
            _MAX_IR = ir
            break
        else:
            _MAX_IR = 7
    return _MAX_IR


def from_proto(proto: onnx.ModelProto, path: Path | str = "<memory>", sha256: str = "") -> LoadedModel:
    proto = _infer_shapes(_sorted(proto))
    graph = proto.graph
    initializers = frozenset(t.name for t in graph.initializer)
    types = proto_tensor_types(proto, infer=False)
    inputs = tuple(
        InputSpec(vi.name, vi.type.tensor_type.elem_type, shape_of(vi))
        for vi in graph.input
        if vi.name not in initializers
    )
    layers = tuple(topological_layers(graph, initializers))
    name_nodes(graph, layers)
    return LoadedModel(
        path=Path(path), sha256=sha256, proto=proto, layers=layers, tensor_types=types,
        initializers=initializers, inputs=inputs, outputs=tuple(o.name for o in graph.output),
    )


def _sorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto`, or a copy with its nodes in topological order where they are not: ONNX Runtime loads a
    model whose nodes are out of order, but shape inference then misses types, the quantizer cannot
    quantize it, and every model built from it would be out of order too (a cycle is left for
    `topological_layers` to report)."""
    try:
        if _is_sorted(proto.graph):
            return proto
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        sort_graph(out.graph)
        return out
    except ValueError:
        return proto


def _is_sorted(graph: onnx.GraphProto) -> bool:
    return node_order(graph) == list(range(len(graph.node))) and all(
        _is_sorted(g) for g in _subgraphs(graph))


def _subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The bodies of `graph`'s nodes' graph attributes (one level down)."""
    return [g for node in graph.node for attr in node.attribute
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)]


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        if proto.ByteSize() < _PROTO_LIMIT:
            return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError:
        pass  # custom or unusual ops: keep what the model states; unknown types are found at run time
    return proto


def proto_tensor_types(model: onnx.ModelProto, infer: bool = True) -> dict[str, int]:
    """Element types of a model's main-graph tensors (after shape inference, where it succeeds)."""
    return tensor_info(model, infer)[0]


def tensor_info(model: onnx.ModelProto, infer: bool = True
                ) -> tuple[dict[str, int], dict[str, tuple[int | str | None, ...]]]:
    """({tensor: element type}, {tensor: shape}) of a model's main-graph tensors, from one shape inference."""
    if infer:
        model = _infer_shapes(model)
    g = model.graph
    shapes = {vi.name: s for vi in list(g.input) + list(g.value_info) + list(g.output)
              if vi.type.HasField("tensor_type") and (s := shape_of(vi)) is not None}
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(g.input) + list(g.value_info) + list(g.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Cast":
            types[n.output[0]] = next(a.i for a in n.attribute if a.name == "to")
        elif n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            types.update({n.output[0]: a.t.data_type for a in n.attribute if a.name == "value"})
    _through_qdq(g, types, shapes)
    return types, shapes


def _through_qdq(g: onnx.GraphProto, types: dict[str, int], shapes: dict) -> None:
    """Shapes (and types) across Q/DQ nodes, which keep their input's shape: ONNX's shape inference does
    not know ONNX Runtime's com.microsoft Q/DQ ops."""
    steps = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input and n.output]
    for _ in range(8):
        changed = False
        for n in steps:
            if n.output[0] not in shapes and n.input[0] in shapes:
                shapes[n.output[0]] = shapes[n.input[0]]
                changed = True
            if n.output[0] not in types:
                source = n.input[2] if n.op_type == "QuantizeLinear" and len(n.input) > 2 else n.input[1] \
                    if n.op_type == "DequantizeLinear" and len(n.input) > 1 else ""
                if source in types:
                    types[n.output[0]] = types[source]
                    changed = True
        if not changed:
            break


def shape_of(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def value_info(name: str, elem_type: int | None) -> onnx.ValueInfoProto:
    if elem_type:
        return helper.make_tensor_value_info(name, elem_type, None)
    return helper.make_empty_tensor_value_info(name)


def serialize(proto: onnx.ModelProto) -> bytes:
    if proto.ByteSize() >= _PROTO_LIMIT:
        raise ModelError("models over 2 GB are not supported yet: protobuf cannot serialise them in memory")
    return proto.SerializeToString()
