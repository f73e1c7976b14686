"""The precision each layer really computed in, read from the candidate graph (not from the request).

  int8 / uint8 / fp8 / int4   the node's float inputs (all but a bias) are DequantizeLinear outputs of
                              that type, and either it has quantized weights (Conv, Gemm, MatMul...) or
                              every consumer of its outputs is a QuantizeLinear: the fusion TensorRT and
                              ONNX Runtime make into one low-precision kernel
  fp16 / bf16                 a float input or output of the node has that type, or the node is listed
                              as FP16-emulated in the candidate's metadata
  fp32                        otherwise
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from layerdiff.backends.fp16 import emulated_nodes
from layerdiff.graph import proto_tensor_types

_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"}
_LOW = {
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "int4",
    TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.FLOAT8E5M2: "fp8", TensorProto.FLOAT8E4M3FNUZ: "fp8",
    TensorProto.FLOAT8E5M2FNUZ: "fp8",
}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


@dataclass(frozen=True)
class Realised:
    precision: str
    emulated: bool = False  # FP16 emulated by rounding (no FP16 kernel on this provider)


def realised_precisions(candidate: onnx.ModelProto) -> dict[str, Realised]:
    """{candidate node name: what it computed in}."""
    types = proto_tensor_types(candidate)
    nodes = list(candidate.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    emulated = emulated_nodes(candidate)
    out: dict[str, Realised] = {}
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.name in emulated:
            out[node.name] = Realised("fp16", emulated=True)
            continue
        low = _quantized(node, types, producer, consumers)
        if low:
            out[node.name] = Realised(low)
            continue
        kinds = {types.get(t) for t in list(node.input) + list(node.output) if t}
        if node.op_type == "Cast":
            kinds = {types.get(node.output[0])}
        if TensorProto.FLOAT16 in kinds:
            out[node.name] = Realised("fp16")
        elif TensorProto.BFLOAT16 in kinds:
            out[node.name] = Realised("bf16")
        else:
            out[node.name] = Realised("fp32")
    return out


def _quantized(node, types, producer, consumers) -> str | None:
    bias = _BIAS_INPUT.get(node.op_type)
    low_types = []
    for i, name in enumerate(node.input):
        if not name or i == bias:
            continue
        src = producer.get(name)
        if src is not None and src.op_type == "DequantizeLinear":
            low_types.append(_LOW.get(types.get(src.input[0])))
        elif types.get(name) in _FLOATS or types.get(name) is None:
            return None
    if not low_types or None in low_types:
        return None
    if node.op_type not in _WEIGHTED:
        outs = [o for o in node.output if o]
        if not outs or not all(consumers[o] and all(c.op_type == "QuantizeLinear" for c in consumers[o]) for o in outs):
            return None
    return low_types[0]
