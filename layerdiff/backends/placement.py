"""Where `ort-int8` puts Q/DQ: as the toolchain the user deploys with does.

`trt` (the default) mirrors NVIDIA Model Optimizer's ONNX INT8 PTQ, the path TensorRT's documentation
points to for INT8 (modelopt.onnx.quantization, `quantize_mode="int8"`): the inputs of the ops TensorRT
runs in INT8 kernels are quantized (Conv, ConvTranspose, Gemm, MatMul, weights per channel); an Add only
where it is a residual Add TensorRT fuses into the kernel of a quantized producer (one input computed
by a quantized op, through the bias, BatchNormalization and activations fused with it, the other a
non-constant value); a pooling only where it reads a quantized op's output the same way. Everything
else stays in float: TensorRT would run it in float between the quantized kernels.

`ort-all` is layerdiff's earlier placement: Q/DQ in front of every Conv, ConvTranspose, Gemm, MatMul,
pooling and Add (onnxruntime.quantization's op types for TensorRT), a residual or not.
"""

from __future__ import annotations

import onnx

PLACEMENTS = ("trt", "ort-all")
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"})
# what TensorRT fuses into the kernel before it (BatchNormalization folded, activations applied in it)
FUSED_AFTER = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                         "Tanh", "Elu", "Selu", "Softplus", "PRelu", "ThresholdedRelu"})


_WITH_CONSTANT = frozenset({"Add", "Sub", "Mul", "Div"})


def trt_nodes(graph: onnx.GraphProto) -> frozenset[str]:
    """The names of the nodes whose inputs the `trt` placement quantizes (see the module doc)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # (graph order is topological for the models layerdiff writes and reads)
        if node.op_type == "Constant" or (node.input and all(not t or t in constant for t in node.input)):
            constant.update(o for o in node.output if o)
    weighted = {n.name for n in graph.node if n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")}

    def from_weighted(tensor: str) -> bool:
        for _ in range(8):
            node = producer.get(tensor)
            if node is None:
                return False
            if node.name in weighted:
                return True
            data = [t for t in node.input if t and t not in constant]
            # (a bias or a scale, an elementwise op with a constant, folds into the kernel too)
            if (node.op_type not in FUSED_AFTER and node.op_type not in _WITH_CONSTANT) or len(data) != 1:
                return False
            tensor = data[0]
        return False

    out = set(weighted)
    for node in graph.node:
        data = [t for t in node.input if t and t not in constant]
        if node.op_type == "Add" and len(data) == 2 and any(from_weighted(t) for t in data):
            out.add(node.name)
        elif node.op_type in POOLS and len(data) == 1 and from_weighted(data[0]):
            out.add(node.name)
    return frozenset(out)

