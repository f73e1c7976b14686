"""Where `ort-int8` puts Q/DQ: as the toolchain the user deploys with does.

`trt` (the default) mirrors NVIDIA Model Optimizer's ONNX INT8 PTQ, the path TensorRT's documentation
points to for INT8 (modelopt/onnx/quantization, read at commit a2fbac7, 0.47 dev), in these of its
rules:
  * the heads of its fusible partitions are quantized, every input: Conv, ConvTranspose, Gemm, MatMul
    (`partitioning.find_fusible_partitions`); what TensorRT fuses after them is not (a bias, a
    BatchNormalization, an activation, a MaxPool of the Conv-BN-Relu-MaxPool backbone);
  * except a GEMV or a small GEMM (`graph_utils.find_nodes_from_matmul_to_exclude`, on by default): an
    output dimension M or N of 1, or N or K under 16, where the shapes are known statically;
  * a residual Add (`graph_utils.build_non_residual_input_map`): Q/DQ on its skip input only, the input
    from the Conv branch reads the Conv's output as TensorRT fuses it; an Add after a Gemm/MatMul (a
    transformer's residual, its "KGEN" path) quantizes the input from the GEMM instead;
  * a pooling outside a backbone is quantized where its producer or its consumer is quantized, through
    data movement (`find_quantizable_nodes`).
Not mirrored (said in the README): MHA MatMuls excluded past a sequence of 512, its small-Conv rule, its
LayerNormalization, Clip, Resize and pointwise "KGEN head" quantization, Concat scale sharing.

`ort-all` is layerdiff's earlier placement: Q/DQ in front of every Conv, ConvTranspose, Gemm, MatMul,
pooling and Add (onnxruntime.quantization's op types for TensorRT), on every input.
"""

from __future__ import annotations

import onnx

PLACEMENTS = ("trt", "ort-all")
DEFAULT = "trt"  # where a caller names none (read at run time)
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
# what TensorRT fuses into the kernel before it (BatchNormalization folded, activations applied in it)
FUSED_AFTER = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                         "Tanh", "Elu", "Selu", "Softplus", "PRelu", "ThresholdedRelu"})
_WITH_CONSTANT = frozenset({"Add", "Sub", "Mul", "Div"})  # a bias or a scale: folded into the kernel too
COPY = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast"})
SMALL = 16  # ModelOpt's _MIN_MATMUL_DIM


def default() -> str:
    return DEFAULT


def trt_nodes(graph: onnx.GraphProto) -> frozenset[str]:
    """The names of the nodes whose inputs the `trt` placement quantizes (see the module doc)."""
    return frozenset(Placement(graph).nodes)


class Placement:
    """The `trt` placement of one graph: `nodes` quantized, and `float_inputs`, the (node, input slot)
    pairs that read their value unquantized though the node is quantized (a residual Add's branch)."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.constant = {t.name for t in graph.initializer}
        for node in graph.node:  # (graph order is topological for the models layerdiff writes and reads)
            if node.op_type == "Constant" or (node.input and all(not t or t in self.constant for t in node.input)):
                self.constant.update(o for o in node.output if o)
        shapes = _static_shapes(graph)
        self.weighted = {n.name for n in graph.node if n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")
                         and not _small_gemm(n, shapes)}
        nodes, float_inputs = set(self.weighted), set()
        for node in graph.node:
            data = [t for t in node.input if t and t not in self.constant]
            if node.op_type == "Add" and len(data) == 2:
                branches = [self.backbone(t) for t in data]
                if any(branches):
                    nodes.add(node.name)
                    conv = [b is not None and b.op_type in ("Conv", "ConvTranspose") for b in branches]
                    # a Conv's residual: Q/DQ on the skip input; a GEMM's: on the GEMM's input
                    if all(conv) and branches[0] is not branches[1]:
                        # two Conv branches: the one further from where they part is the Conv's own
                        far = self.distances(data[0], data[1])
                        keep_float = None if far is None or far[0] == far[1] else (0 if far[0] > far[1] else 1)
                    elif any(conv):
                        keep_float = conv.index(True)
                    else:
                        keep_float = branches.index(None) if None in branches else None
                    if keep_float is not None:
                        float_inputs.add((node.name, list(node.input).index(data[keep_float])))
        for node in graph.node:
            data = [t for t in node.input if t and t not in self.constant]
            if node.op_type in POOLS and len(data) == 1 and not self.in_backbone(node) and (
                    self.quantized_near(data[0], nodes, up=True) or self.quantized_near(node.output[0], nodes, up=False)):
                nodes.add(node.name)
        self.nodes, self.float_inputs = nodes, float_inputs

    def backbone(self, tensor: str) -> onnx.NodeProto | None:
        """The quantized GEMM or Conv that computes `tensor`, through what TensorRT fuses after it."""
        for _ in range(8):
            node = self.producer.get(tensor)
            if node is None:
                return None
            if node.name in self.weighted:
                return node
            data = [t for t in node.input if t and t not in self.constant]
            if (node.op_type not in FUSED_AFTER and node.op_type not in _WITH_CONSTANT) or len(data) != 1:
                return None
            tensor = data[0]
        return None

    def distances(self, a: str, b: str, limit: int = 256) -> tuple[int, int] | None:
        """Each tensor's distance (in nodes) up to their lowest common ancestor (None: none within
        `limit` tensors)."""
        def up(tensor: str) -> dict[str, int]:
            dist, frontier = {tensor: 0}, [tensor]
            while frontier and len(dist) < limit:
                t = frontier.pop(0)
                node = self.producer.get(t)
                for i in (node.input if node is not None else ()):
                    if i and i not in self.constant and i not in dist:
                        dist[i] = dist[t] + 1
                        frontier.append(i)
            return dist

        da, db = up(a), up(b)
        common = set(da) & set(db)
        if not common:
            return None
        lca = min(common, key=lambda t: (da[t] + db[t], t))
        return da[lca], db[lca]

    def in_backbone(self, node: onnx.NodeProto) -> bool:
        """A MaxPool right after a Conv (through its BatchNormalization and Relu): part of its kernel."""
        data = [t for t in node.input if t and t not in self.constant]
        found = self.backbone(data[0]) if node.op_type == "MaxPool" and data else None
        return found is not None and found.op_type in ("Conv", "ConvTranspose")

    def quantized_near(self, tensor: str, nodes: set[str], up: bool) -> bool:
        """Whether the node that writes `tensor` (up) or one that reads it (down) is quantized, through
        data movement."""
        frontier, seen = [tensor], set()
        while frontier:
            t = frontier.pop()
            if t in seen:
                continue
            seen.add(t)
            near = [self.producer[t]] if up and t in self.producer else ([] if up else self.consumers.get(t, []))
            for node in near:
                if node.name in nodes:
                    return True
                if node.op_type in COPY:
                    frontier.extend(node.input[:1] if up else node.output[:1])
        return False


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list]:
    model = onnx.helper.make_model(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):  # no shape known, then
        return {}
    out = {}
    for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _small_gemm(node: onnx.NodeProto, shapes: dict[str, list]) -> bool:
    """A GEMV (an output dimension M or N of 1) or a GEMM with N or K under SMALL, shapes known."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return False
    a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
    if not a or not b or len(b) < 2:
        return False
    trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0) if node.op_type == "Gemm" else 0
    trans_b = next((x.i for x in node.attribute if x.name == "transB"), 0) if node.op_type == "Gemm" else 0
    k = a[-2] if trans_a else a[-1]
    n = b[-2] if trans_b else b[-1]
    m = a[-1] if trans_a else (a[-2] if len(a) >= 2 else 1)
    known = [d for d in (m, n) if isinstance(d, int) and d > 0]
    return any(d == 1 for d in known) or any(isinstance(d, int) and 0 < d < SMALL for d in (n, k))
