"""What ONNX Runtime's kernels are, as the capture (backends/kernels.py) reads them: which nodes only
carry a value (layout, Q/DQ), which are integer kernels and where their output scale and zero point
are, the type names its sessions state, and which types are reduced precisions."""

from __future__ import annotations

from onnx import TensorProto

EXACT_STEPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Transpose"})
LAYOUT = frozenset({"Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Identity"})
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul", "MatMulNBits",
})
ORT_TYPES = {
    TensorProto.FLOAT: "tensor(float)", TensorProto.FLOAT16: "tensor(float16)", TensorProto.DOUBLE: "tensor(double)",
    TensorProto.BFLOAT16: "tensor(bfloat16)", TensorProto.INT8: "tensor(int8)", TensorProto.UINT8: "tensor(uint8)",
    TensorProto.INT32: "tensor(int32)", TensorProto.INT64: "tensor(int64)", TensorProto.BOOL: "tensor(bool)",
}
FLOATS = frozenset({"tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"})
NCHWC = frozenset({"ReorderInput", "ReorderOutput"})
# the integer kernel ONNX Runtime puts in place of a float op, and where its output scale and zero point are
QLINEAR = {"Conv": "QLinearConv", "MatMul": "QLinearMatMul", "Gemm": "QGemm", "Add": "QLinearAdd", "Mul": "QLinearMul",
            "GlobalAveragePool": "QLinearGlobalAveragePool", "AveragePool": "QLinearAveragePool",
            "Concat": "QLinearConcat", "Sigmoid": "QLinearSigmoid", "LeakyRelu": "QLinearLeakyRelu",
            "Softmax": "QLinearSoftmax", "ReduceMean": "QLinearReduceMean", "Where": "QLinearWhere"}
OUTPUT_QPARAMS = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8), "QLinearAdd": (6, 7),
                   "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4),
                   "QLinearConcat": (0, 1), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
                   "QLinearSoftmax": (3, 4), "QLinearReduceMean": (3, 4), "QuantizeLinear": (1, 2)}
# ops that move INT8 values without changing them: the scale and zero point are those of their input
DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "Slice", "Gather",
                            "Split", "Resize", "DepthToSpace", "SpaceToDepth", "Identity"})
# data movement that commutes with a per-tensor rounding: op(round(x)) == round(op(x)), exactly
COMMUTES_WITH_ROUNDING = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "Slice",
                                    "Gather", "Split", "DepthToSpace", "SpaceToDepth", "Identity"})
LOW = {"tensor(int8)": "int8", "tensor(uint8)": "int8", "tensor(int16)": "int16", "tensor(uint16)": "int16",
        "tensor(int4)": "int4", "tensor(uint4)": "int4", "tensor(float8e4m3fn)": "fp8", "tensor(float8e5m2)": "fp8"}

# ONNX Runtime's layout passes: the NCHWc kernels' domain (blocked layout) and its internal channels-last one
NCHWC_DOMAIN = "com.microsoft.nchwc"
NHWC_DOMAIN = "com.ms.internal.nhwc"
# ops that compute in the layout they read (elementwise, and what ONNX Runtime's NHWC and transpose passes
# move into a channels-last region, their attributes rewritten to it): their output is in that layout
KEEPS_LAYOUT = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Erf", "Gelu", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Concat", "Split", "Slice", "Pad", "Resize",
    "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
    "QLinearSigmoid", "QLinearLeakyRelu", "NhwcMaxPool", "NhwcConv", "NhwcFusedConv", "QuickGelu",
})
