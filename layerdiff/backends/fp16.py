"""`ort-fp16`: FP16 computation by cast insertion (the model's inputs and outputs stay FP32, pinned
nodes stay FP32), run by ONNX Runtime on the CPU.

ONNX Runtime's CPU provider has FP16 kernels for few ops. For the others it silently inserts
"precision-free" casts that compute whole chains of nodes in FP32 with no rounding in between, which
would hide most FP16 error. So layerdiff asks ONNX Runtime which nodes it would upcast, and emulates FP16
for those itself: the node computes in FP32 on its FP16 inputs, and its outputs are rounded to FP16.
The names of emulated nodes are stored in the candidate's metadata (`layerdiff.fp16_emulated`)."""

from __future__ import annotations

import json
import os
import tempfile

import onnx
from onnx import TensorProto, helper

from layerdiff.backends.ortnames import UPCAST_PREFIX
from layerdiff.graph import FINAL_KEY, LoadedModel, max_ir_version, proto_tensor_types
from layerdiff.jsonread import metadata_json
from layerdiff.plan import PrecisionPlan
from layerdiff.topology import sort_graph

EMULATED_KEY = "layerdiff.fp16_emulated"


def build_fp16(model: LoadedModel, plan: PrecisionPlan) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the FP16 model a user deploys, the model layerdiff runs on ONNX Runtime's CPU provider): cast
    insertion, then FP16 emulation for the nodes that provider has no FP16 kernel for."""
    deployable = build_fp16_plain(model, plan)
    executed = onnx.ModelProto()
    executed.CopyFrom(deployable)
    types = proto_tensor_types(executed)  # one shape inference for both steps
    upcast = nodes_without_fp16_kernel(executed, types)
    final = emulate_fp16(executed, upcast, types) if upcast else {}
    helper.set_model_props(executed, {EMULATED_KEY: json.dumps(sorted(upcast)), FINAL_KEY: json.dumps(final)})
    return deployable, executed


def build_fp16_plain(model: LoadedModel, plan: PrecisionPlan) -> onnx.ModelProto:
    """FP16 by cast insertion alone (inputs and outputs stay FP32; nodes not planned FP16 stay FP32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model.proto)
    keep_fp32 = _keep_fp32(model, plan)
    # a graph input that is also a graph output: the converter would cast it twice under one name, so it
    # is taken out of the outputs while converting and put back where it was (it stays the FP32 input)
    outputs = list(source.graph.output)
    inputs = {i.name for i in source.graph.input}
    del source.graph.output[:]
    source.graph.output.extend(o for o in outputs if o.name not in inputs)
    # the converter logs (through logging) the values it clamps to the FP16 range; the caller's logging
    # configuration decides whether they are shown (the CLI shows them with --debug)
    candidate = convert_float_to_float16(source, keep_io_types=True, node_block_list=keep_fp32)
    converted = {o.name: o for o in candidate.graph.output}
    del candidate.graph.output[:]
    candidate.graph.output.extend(converted.get(o.name, o) for o in outputs)
    candidate.ir_version = min(candidate.ir_version, max_ir_version())
    _drop_duplicate_casts(candidate)
    # the element types of the converted graph (the converter renames tensors, such as a graph output's
    # producer's), the FP32 model's where inference could not tell
    _drop_round_trips(candidate, {**model.tensor_types, **proto_tensor_types(candidate)})
    sort_graph(candidate.graph)  # the converter appends its Casts after the graph's nodes
    return candidate


def _keep_fp32(model: LoadedModel, plan: PrecisionPlan) -> list[str]:
    """The nodes the converter leaves in FP32: those not planned FP16, and the weight nodes (Constant,
    and nodes computing from weights alone) that any of them reads, so that a pinned layer reads its
    weights unrounded, as a TensorRT layer kept in FP32 does (models exported with their weights as
    Constant nodes, such as PaddlePaddle's, would otherwise feed pinned layers FP16-rounded weights
    through a Cast back up)."""
    keep = {layer.name for layer in model.layers if plan.precision_of(layer.name) != "fp16"}
    if not keep:
        return []
    weights = model.weight_layers
    readers: dict[str, list[str]] = {}
    for layer in model.layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer.name)
    for layer in reversed(model.layers):  # readers come later in topological order
        if layer.name in weights and layer.name not in keep and any(
                r in keep for t in layer.outputs for r in readers.get(t, ())):
            keep.add(layer.name)
    return [layer.name for layer in model.layers if layer.name in keep]


def _drop_duplicate_casts(model: onnx.ModelProto) -> None:
    """The converter (onnxruntime 1.31's float16.py) gives each node it leaves in FP32 its own Cast up
    of every FP16 input, named after the input alone: two such nodes reading one FP16 tensor (or one
    node reading it twice) get two Casts of one name writing one tensor, which ONNX Runtime refuses to
    load ("two nodes with same node name": a new user's FP16 bisect of Magika's model). The copies
    compute the same value: the first stays."""
    seen: set[bytes] = set()
    keep = []
    for node in model.graph.node:
        if node.op_type == "Cast":
            key = node.SerializeToString(deterministic=True)
            if key in seen:
                continue
            seen.add(key)
        keep.append(node)
    if len(keep) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _drop_round_trips(model: onnx.ModelProto, types: dict[str, int]) -> None:
    """The converter casts every tensor between two nodes it left in FP32 (and a graph input read by one)
    down to FP16 and back up: a rounding, and an overflow to inf beyond 65504, that no FP16 kernel asked
    for. Readers of such a round trip read the FP32 tensor itself; casts nothing reads any more go.
    `types` are the converted graph's element types: only a tensor that is FP32 there is such a round trip
    (the converter also turns a model's own Cast to FP32 of an integer, Shape -> Cast -> Range in a
    YOLOv8 head, into a Cast to FP16, which a Cast back up before an FP32 node follows: that integer
    is no FP32 tensor, and a tensor of unknown type is left alone)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output if o}

    def to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None)

    back: dict[str, str] = {}  # the output of a cast back to FP32 -> the FP32 tensor before the round trip
    for node in graph.node:
        if node.op_type != "Cast" or to(node) != TensorProto.FLOAT:
            continue
        down = producer.get(node.input[0])
        if down is not None and down.op_type == "Cast" and to(down) == TensorProto.FLOAT16 \
                and types.get(down.input[0]) == TensorProto.FLOAT:
            back[node.output[0]] = down.input[0]
    if not back:
        return
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in back and node.output[0] in outputs:
            # a graph output at the end of a round trip: an Identity of the FP32 tensor, under its name
            node.op_type, node.input[0] = "Identity", back[node.output[0]]
            del node.attribute[:]
        else:
            node.input[:] = [back.get(t, t) for t in node.input]
    while True:
        read = {t for n in graph.node for t in n.input} | outputs
        dead = [i for i, n in enumerate(graph.node) if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]


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
        so.log_severity_level = 4  # errors come back as exceptions, said in one line
        ort.InferenceSession(candidate.SerializeToString(), so, providers=["CPUExecutionProvider"])
        placed = onnx.load(so.optimized_model_filepath, load_external_data=False)
    seen, upcast = set(), set()
    for node in placed.graph.node:
        seen.add(node.name)
        if node.op_type != "Cast" and any(t.startswith(UPCAST_PREFIX) for t in list(node.input) + list(node.output)):
            upcast.add(node.name)
    return (upcast | (fp16_nodes - seen)) & fp16_nodes


def emulate_fp16(candidate: onnx.ModelProto, names: set[str], types: dict[str, int] | None = None
                 ) -> dict[str, dict[str, str]]:
    """Compute each named node in FP32 between explicit casts: FP16 inputs are cast up, outputs are
    cast (rounded) back to FP16 under their original names. Returns {node: {its FP32 output: the
    rounded tensor}} (the values the node's readers see)."""
    types = types if types is not None else proto_tensor_types(candidate)
    final: dict[str, dict[str, str]] = {}
    new_nodes = []
    for node in candidate.graph.node:
        if node.name not in names:
            new_nodes.append(node)
            continue
        widened: dict[str, str] = {}  # one cast per input tensor, however many slots read it (Mul(x, x))
        for i, name in enumerate(node.input):
            if name and types.get(name) == TensorProto.FLOAT16:
                if name not in widened:
                    widened[name] = f"{name}::fp32::{node.name}"
                    new_nodes.append(helper.make_node("Cast", [name], [widened[name]],
                                                      name=f"{node.name}::cast_in{i}", to=TensorProto.FLOAT))
                node.input[i] = widened[name]
        after = []
        for i, name in enumerate(node.output):
            if name and types.get(name) == TensorProto.FLOAT16:
                wide = f"{name}::fp32"
                after.append(helper.make_node("Cast", [wide], [name], name=f"{node.name}::cast_out{i}",
                                              to=TensorProto.FLOAT16))
                node.output[i] = wide
                final.setdefault(node.name, {})[wide] = name
        new_nodes.append(node)
        new_nodes.extend(after)
    del candidate.graph.node[:]
    candidate.graph.node.extend(new_nodes)
    # value_info recorded FP16 for tensors that are now FP32; let ONNX Runtime infer them again
    del candidate.graph.value_info[:]
    return final


def emulated_nodes(candidate: onnx.ModelProto) -> set[str]:
    for prop in candidate.metadata_props:
        if prop.key == EMULATED_KEY:
            return set(metadata_json(prop.value, EMULATED_KEY, lambda v: isinstance(v, list) and all(
                isinstance(n, str) for n in v), "a list of node names"))
    return set()
