"""`ort-fp16`: FP16 computation by cast insertion (the model's inputs and outputs stay FP32, pinned
nodes stay FP32), run by ONNX Runtime on the CPU.

ONNX Runtime's CPU provider has FP16 kernels for few ops. For the others it silently inserts
"precision-free" casts that compute whole chains of nodes in FP32 with no rounding in between, which
would hide most FP16 error. So layerdiff asks ONNX Runtime which nodes it would upcast, and emulates FP16
for those itself: the node computes in FP32 on its FP16 inputs, and its outputs are rounded to FP16.
The names of emulated nodes are stored in the candidate's metadata (`layerdiff.fp16_emulated`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import onnx
from onnx import TensorProto, helper

from layerdiff.graph import LoadedModel, max_ir_version, proto_tensor_types
from layerdiff.plan import PrecisionPlan

EMULATED_KEY = "layerdiff.fp16_emulated"
_ORT_UPCAST_PREFIX = "InsertedPrecisionFreeCast_"


def build_fp16(model: LoadedModel, plan: PrecisionPlan) -> onnx.ModelProto:
    """The FP16 candidate for ONNX Runtime's CPU provider: cast insertion, then FP16 emulation for the
    nodes that provider has no FP16 kernel for."""
    candidate = build_fp16_plain(model, plan)
    types = proto_tensor_types(candidate)  # one shape inference for both steps
    upcast = nodes_without_fp16_kernel(candidate, types)
    if upcast:
        emulate_fp16(candidate, upcast, types)
    helper.set_model_props(candidate, {EMULATED_KEY: json.dumps(sorted(upcast))})
    return candidate


def build_fp16_plain(model: LoadedModel, plan: PrecisionPlan) -> onnx.ModelProto:
    """FP16 by cast insertion alone (inputs and outputs stay FP32; nodes not planned FP16 stay FP32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model.proto)
    keep_fp32 = [layer.name for layer in model.layers if plan.precision_of(layer.name) != "fp16"]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the converter warns on the root logger about values it clamps
    try:
        candidate = convert_float_to_float16(source, keep_io_types=True, node_block_list=keep_fp32)
    finally:
        root.setLevel(level)
    candidate.ir_version = min(candidate.ir_version, max_ir_version())
    return candidate


def nodes_without_fp16_kernel(candidate: onnx.ModelProto, types: dict[str, int] | None = None) -> set[str]:
    """Names of FP16 nodes that ONNX Runtime's CPU provider would compute in FP32: it renames their
    tensors with its upcast prefix, or inlines them as functions (they vanish from the graph)."""
    import onnxruntime as ort

    types = types if types is not None else proto_tensor_types(candidate)
    fp16_nodes = {  # nodes with inputs only: a Constant computes nothing (ORT folds it away)
        n.name for n in candidate.graph.node
        if n.op_type != "Cast" and any(n.input)
        and any(types.get(t) == TensorProto.FLOAT16 for t in list(n.input) + list(n.output))
    }
    with tempfile.TemporaryDirectory(prefix="layerdiff-fp16-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.optimized_model_filepath = os.path.join(tmp, "placed.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(candidate.SerializeToString(), so, providers=["CPUExecutionProvider"])
        placed = onnx.load(so.optimized_model_filepath, load_external_data=False)
    seen, upcast = set(), set()
    for node in placed.graph.node:
        seen.add(node.name)
        if node.op_type != "Cast" and any(t.startswith(_ORT_UPCAST_PREFIX) for t in list(node.input) + list(node.output)):
            upcast.add(node.name)
    return (upcast | (fp16_nodes - seen)) & fp16_nodes


def emulate_fp16(candidate: onnx.ModelProto, names: set[str], types: dict[str, int] | None = None) -> None:
    """Compute each named node in FP32 between explicit casts: FP16 inputs are cast up, outputs are
    cast (rounded) back to FP16 under their original names."""
    types = types if types is not None else proto_tensor_types(candidate)
    new_nodes = []
    for node in candidate.graph.node:
        if node.name not in names:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and types.get(name) == TensorProto.FLOAT16:
                up = f"{name}::fp32::{node.name}"
                new_nodes.append(helper.make_node("Cast", [name], [up], name=f"{node.name}::cast_in{i}",
                                                  to=TensorProto.FLOAT))
                node.input[i] = up
        after = []
        for i, name in enumerate(node.output):
            if name and types.get(name) == TensorProto.FLOAT16:
                wide = f"{name}::fp32"
                after.append(helper.make_node("Cast", [wide], [name], name=f"{node.name}::cast_out{i}",
                                              to=TensorProto.FLOAT16))
                node.output[i] = wide
        new_nodes.append(node)
        new_nodes.extend(after)
    del candidate.graph.node[:]
    candidate.graph.node.extend(new_nodes)
    # value_info recorded FP16 for tensors that are now FP32; let ONNX Runtime infer them again
    del candidate.graph.value_info[:]


def emulated_nodes(candidate: onnx.ModelProto) -> set[str]:
    for prop in candidate.metadata_props:
        if prop.key == EMULATED_KEY:
            return set(json.loads(prop.value))
    return set()
