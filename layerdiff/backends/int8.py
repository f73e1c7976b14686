"""`ort-int8`: TensorRT-style QDQ INT8 by onnxruntime.quantization's QDQ quantizer, quantized once per
model and calibration set; every plan is then derived from that one model by graph edits.

Placement, as TensorRT and NVIDIA's ModelOpt place Q/DQ: on the *inputs* of Conv, ConvTranspose, Gemm,
MatMul, pooling and Add (activations symmetric INT8, weights symmetric per-channel INT8, biases INT32),
never on outputs (`OpTypesToExcludeOutputQuantization` lists every op type of the model); a tensor read
by several quantized nodes has one shared Q/DQ pair. Weights held in Constant nodes are made
initializers first (and weights the graph computes from weights, such as a reshaped bias, are folded to
their values), so they are quantized per channel like any other weight. Per-channel DequantizeLinear
needs opset 13: older models get ONNX Runtime's own com.microsoft Q/DQ ops (same arithmetic), which
TensorRT does not read (re-export the model at opset 13 or later for that).

A plan pins nodes to FP32: a pinned node reads its FP32 inputs directly (the Q/DQ it read through is
dropped, or kept for its other readers) and its FP32 weights and bias. The result is numerically the
model the quantizer builds with that node excluded and a Q/DQ pair per reader (tested).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from layerdiff.backends.calibrate import calibrate
from layerdiff.backends.placement import PLACEMENTS, Placement
from layerdiff.backends.placement import default as placement_default
from layerdiff.errors import BackendError, BadInput
from layerdiff.graph import LoadedModel, max_ir_version
from layerdiff.inputs import Samples
from layerdiff.lazy import once
from layerdiff.progress import Progress
from layerdiff.topology import sort_graph

TRT_QDQ_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool", "Add")
QDQ = ("QuantizeLinear", "DequantizeLinear")


def fold_weights(model: LoadedModel) -> onnx.ModelProto:
    """A copy of the model whose weight layers (Constant nodes, weights reshaped or transposed in the
    graph) are initializers holding their values, as ONNX Runtime and TensorRT fold them: so the
    quantizer sees them as weights and gives them per-channel scales."""
    out = onnx.ModelProto()
    out.CopyFrom(model.proto)
    folded = _weight_values(model)
    kept = [n for n in out.graph.node if n.name not in model.weight_layers]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    # what the computation reads, subgraph bodies' outer-scope reads included (a Constant an If branch reads)
    read = {t for lay in model.layers if lay.name not in model.weight_layers for t in lay.inputs}
    read |= {o.name for o in out.graph.output}
    out.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items() if name in read)
    _own_biases(out.graph)
    return out


_BIAS_SLOT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def _own_biases(graph: onnx.GraphProto) -> None:
    """Give each reader of a bias that several Convs or Gemms share a copy of its own, under a name no
    tensor has: onnxruntime.quantization otherwise copies it itself as NAME + a number, which can be the
    name of a tensor the graph computes (a tf2onnx export's 'conv1d_25' beside 'conv1d_252')."""
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        slot = _BIAS_SLOT.get(node.op_type)
        if slot is not None and node.domain in ("", "ai.onnx") and len(node.input) > slot and node.input[slot] in inits:
            readers.setdefault(node.input[slot], []).append(node)
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | set(inits) | {i.name for i in graph.input}
    for name, nodes in readers.items():
        for k, node in enumerate(nodes[1:], start=1):
            copy_name, n = f"{name}/bias_of_{node.name or k}", 0
            while copy_name in taken:
                n += 1
                copy_name = f"{name}/bias_of_{node.name or k}_{n}"
            taken.add(copy_name)
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = copy_name
            graph.initializer.append(copy)
            node.input[_BIAS_SLOT[node.op_type]] = copy_name


def _weight_values(model: LoadedModel) -> dict[str, np.ndarray]:
    """The value of every weight layer's output that a layer of the computation reads (one run of the
    weight layers alone)."""
    wanted = sorted({t for lay in model.layers if lay.name not in model.weight_layers for t in lay.inputs
                     if t in model.constants} | {o for o in model.outputs if o in model.constants})
    if not wanted:
        return {}
    nodes = [model.nodes[lay.name] for lay in model.layers if lay.name in model.weight_layers]
    used = {t for n in nodes for t in n.input}
    graph = onnx.helper.make_graph(nodes, "weights", [], [onnx.helper.make_empty_tensor_value_info(t) for t in wanted],
                                   [t for t in model.proto.graph.initializer if t.name in used])
    weights = onnx.helper.make_model(graph, opset_imports=model.proto.opset_import)
    weights.ir_version = model.proto.ir_version
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors come back as exceptions, said in one line
    values = ort.InferenceSession(weights.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(wanted, {})
    return dict(zip(wanted, values, strict=True))


class Int8Quantizer:
    """Ranges and the all-INT8 QDQ model of one model and calibration set, made once and kept in memory."""

    def __init__(self, model: LoadedModel, calib: Samples, method: str = "minmax", budget: int | None = None,
                 ranges=None, placement: str | None = None):
        placement = placement or placement_default()
        if placement not in PLACEMENTS:
            raise BadInput(f"unknown INT8 placement '{placement}'; use {' or '.join(PLACEMENTS)}")
        self.model, self.calib, self.method, self.budget = model, calib, method, budget
        self.placement = placement
        self._ranges = ranges
        self._lock = threading.Lock()

    def calibrate(self, progress: Progress | None = None, cancel: threading.Event | None = None):
        """The calibration ranges, computed on first use (a cancelled calibration keeps nothing)."""
        with self._lock:
            if self._ranges is None:
                _check_fp32(self.model)
                self._ranges = calibrate(self.model, self.calib, self.method, self.budget, cancel, progress)
            return self._ranges

    @property
    def ranges(self):
        return self.calibrate()

    @property
    def calibrated(self) -> bool:
        return self._ranges is not None

    @once
    def source(self) -> onnx.ModelProto:
        """The model the quantizer reads: weight layers folded into initializers."""
        return fold_weights(self.model)

    @property
    def contrib_qdq(self) -> bool:
        return self.model.opset < 13

    def quantize(self, exclude: frozenset[str] | set[str] = frozenset(), dedicated: bool = False) -> onnx.ModelProto:
        """onnxruntime.quantization's QDQ model with `exclude` left in FP32 (the reference for `derive`)."""
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

        source = onnx.ModelProto()
        source.CopyFrom(self.source)
        options = {
            "ActivationSymmetric": True, "WeightSymmetric": True, "QDQKeepRemovableActivations": True,
            "OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in source.graph.node}),
            "UseQDQContribOps": self.contrib_qdq, "DedicatedQDQPair": dedicated,
        }
        quantizer = QDQQuantizer(source, True, False, QuantType.QInt8, QuantType.QInt8, self.ranges, [],
                                 sorted(exclude), list(TRT_QDQ_OPS), options)
        out = quantizer.quantize_model()
        out.ir_version = min(out.ir_version, max_ir_version())
        sort_graph(out.graph)  # the quantizer appends its Q/DQ nodes after the graph's: each goes before its readers
        return out

    @once
    def base(self) -> onnx.ModelProto:
        """Every node the placement quantizes, in INT8; every other node reads FP32 values (the quantizer
        also feeds some other readers of a quantized tensor through its DequantizeLinear)."""
        model = self.quantize()
        _outputs_stay_fp32(model)
        placed = self.placed
        others = {name for name, op in _dequantized_readers(model).items()
                  if op not in TRT_QDQ_OPS or (placed is not None and name not in placed)}
        if others:
            _unquantize(model, self.source, others)
        if self.placement == "trt":
            _float_inputs(model, self._placement.float_inputs)
        return model

    @once
    def _placement(self) -> Placement:
        return Placement(self.source.graph)

    @once
    def placed(self) -> frozenset[str] | None:
        """The nodes the placement quantizes (None: every node of TRT_QDQ_OPS, `ort-all`)."""
        return frozenset(self._placement.nodes) if self.placement == "trt" else None

    @once
    def quantized(self) -> frozenset[str]:
        """Nodes of the base model that read through a DequantizeLinear (the nodes a plan can pin)."""
        return frozenset(name for name, op in _dequantized_readers(self.base, weights=True).items()
                         if op in TRT_QDQ_OPS)

    def derive(self, pinned: frozenset[str] | set[str]) -> onnx.ModelProto:
        """The base model with `pinned` nodes back in FP32, by graph edits (no new quantization)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.base)
        pinned = set(pinned) & self.quantized
        if pinned:
            _unquantize(out, self.source, pinned)
            sort_graph(out.graph)  # a guard: a pinned node reads tensors written before its Q/DQ was, in order
        return out


def _outputs_stay_fp32(model: onnx.ModelProto) -> None:
    """A graph output that quantized nodes also read: the quantizer renames the FP32 tensor and makes the
    output its DequantizeLinear. Give the output back its FP32 value, as TensorRT's placement does (Q/DQ
    on the inputs of the readers only); its readers read the DequantizeLinear output under a new name."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output if o}
    for name in outputs:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in outputs:
            continue
        fp32, deq = q.input[0], f"{name}_DequantizeLinear_Output"
        for node in graph.node:
            node.input[:] = [deq if t == name else fp32 if t == fp32 else t for t in node.input]
            node.output[:] = [deq if t == name else name if t == fp32 else t for t in node.output]
        q.input[0] = name
        # the value_info entries of the two renamed tensors swap names with them
        for vi in graph.value_info:
            vi.name = {name: deq, fp32: name}.get(vi.name, vi.name)


def _check_fp32(model: LoadedModel) -> None:
    """INT8 quantization starts from the FP32 model: refuse one that already computes in FP16 or BF16."""
    narrow = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    tensors = [i.name for i in model.inputs] + [t for lay in model.layers if lay.name not in model.weight_layers
                                                for t in lay.outputs]
    low = next((t for t in tensors if model.tensor_types.get(t) in narrow), None)
    if low is not None:
        raise BackendError(f"INT8 quantization starts from an FP32 model, and this one computes in "
                           f"{narrow[model.tensor_types[low]]} (tensor '{low}'): give its FP32 original as MODEL")


def _dequantized_readers(model: onnx.ModelProto, weights: bool = False) -> dict[str, str]:
    """{node: op type} of the nodes that read a DequantizeLinear output: of an activation's Q/DQ pair, or
    also of a quantized weight when `weights`."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    out = {}
    for node in model.graph.node:
        if node.op_type in QDQ:
            continue
        for t in node.input:
            dq = producer.get(t)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                if weights or (q is not None and q.op_type == "QuantizeLinear"):
                    out[node.name] = node.op_type
                    break
    return out


def _unquantize(model: onnx.ModelProto, source: onnx.ModelProto, pinned: set[str]) -> None:
    graph = model.graph
    original = {n.name: n for n in source.graph.node if n.name in pinned}
    weights = {t.name: t for t in source.graph.initializer}
    initializers = {t.name for t in graph.initializer}
    produced = {o for n in graph.node for o in n.output if o}
    for node in graph.node:
        if node.name not in original:
            continue
        for slot, name in enumerate(original[node.name].input):
            if name in weights and name not in initializers:
                fp32 = name if name not in produced else f"{name}::fp32"  # the base's bias DQ writes `name`
                if fp32 not in initializers:
                    init = onnx.TensorProto()
                    init.CopyFrom(weights[name])
                    init.name = fp32
                    graph.initializer.append(init)
                    initializers.add(fp32)
                name = fp32
            node.input[slot] = name
    _prune(model)


def _float_inputs(model: onnx.ModelProto, slots: set[tuple[str, int]]) -> None:
    """The (node, input slot) pairs that read their value unquantized (a residual Add's branch from the
    Conv TensorRT fuses it with): the Q/DQ pair in front of that slot is bypassed."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    for node in model.graph.node:
        for name, slot in slots:
            if node.name != name or slot >= len(node.input):
                continue
            dq = producer.get(node.input[slot])
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[slot] = q.input[0]
    _prune(model)


def _reads(nodes) -> set[str]:
    """Every tensor `nodes` read, inside their subgraphs too (an If branch reads a weight of the graph)."""
    out: set[str] = set()
    for n in nodes:
        out.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out |= _reads(g.node) | {o.name for o in g.output}
    return out


def _prune(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes nothing reads any more, then initializers nothing reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = _reads(graph.node) | outputs
        dead = [i for i, n in enumerate(graph.node) if n.op_type in QDQ and not any(o in read for o in n.output)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    read = _reads(graph.node) | outputs
    kept = [t for t in graph.initializer if t.name in read]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
