"""What ONNX Runtime really runs for a candidate model, and how to read its tensors without changing it.

Marking a tensor as a graph output stops ONNX Runtime from fusing across it, so a session with every
tensor exposed is not the session a user deploys (on a real INT8 detector it ran no QLinearConv at all).
Instead layerdiff asks ONNX Runtime for the graph it runs (`optimized_model_filepath`, at the deployed
optimization level): the kernels after every fusion, layout change and QDQ rewrite. That graph is then
run with optimizations off, so nothing is fused again, and only tensors that exist in it are read:

  * a candidate tensor is *available* when a node of the optimized graph still produces it (same name,
    same type), or when it follows exactly from available tensors through QuantizeLinear,
    DequantizeLinear or Cast nodes of the candidate (the values a fused kernel reads: layerdiff adds
    those nodes beside the graph, reading tensors it already computes, so what runs is unchanged);
  * the *kernel* behind a tensor is the optimized-graph node that computed it, looking back through
    the layout and Q/DQ nodes ONNX Runtime inserted (QLinearConv, FusedConv, Conv on dequantized int8...).

The plain session and the exposed one then give bit-identical final outputs (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import onnx
from onnx import TensorProto

from layerdiff.backends.base import Kernel
from layerdiff.backends.ort import Session, make_session, optimized_model
from layerdiff.errors import BackendError
from layerdiff.graph import tensor_info
from layerdiff.rewrite import with_nodes, with_outputs

SIDE = "layerdiff/"  # prefix of the nodes, tensors and initializers layerdiff adds beside the graph
_EXACT_STEPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"})
_LAYOUT = frozenset({"Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Identity"})
_INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul", "MatMulNBits",
})
_ORT_TYPES = {
    TensorProto.FLOAT: "tensor(float)", TensorProto.FLOAT16: "tensor(float16)", TensorProto.DOUBLE: "tensor(double)",
    TensorProto.BFLOAT16: "tensor(bfloat16)", TensorProto.INT8: "tensor(int8)", TensorProto.UINT8: "tensor(uint8)",
    TensorProto.INT32: "tensor(int32)", TensorProto.INT64: "tensor(int64)", TensorProto.BOOL: "tensor(bool)",
}
_FLOATS = frozenset({"tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"})
_LOW = {"tensor(int8)": "int8", "tensor(uint8)": "int8", "tensor(int4)": "int4", "tensor(uint4)": "int4",
        "tensor(float8e4m3fn)": "fp8", "tensor(float8e5m2)": "fp8"}


class OrtKernels:
    """The deployed ONNX Runtime session of a candidate, seen kernel by kernel (see the module doc)."""

    mode = "kernels"

    def __init__(self, candidate: onnx.ModelProto, blob: bytes, providers: list | None = None,
                 level: str = "all", expect_provider: str | None = None):
        self.providers, self.level, self.expect_provider = providers, level, expect_provider
        self.blob = optimized_model(blob, providers, level)
        self.graph = onnx.ModelProto.FromString(self.blob).graph
        self.kproducer = {o: n for n in self.graph.node for o in n.output if o}
        self.kinputs = {i.name for i in self.graph.input}
        cgraph = candidate.graph
        self.cproducer = {o: n for n in cgraph.node for o in n.output if o}
        self.cinits = {t.name: t for t in cgraph.initializer}
        self.ctypes, self.cshapes = tensor_info(candidate)
        self._derivations: dict[str, list[onnx.NodeProto] | None] = {}
        self._lock = threading.Lock()

    @cached_property
    def _kinfo(self) -> dict[str, tuple[str, list]]:
        """{tensor of the optimized graph: (its type, its shape) as ONNX Runtime states them} (one session
        with every tensor an output; no run)."""
        names = [o for n in self.graph.node for o in n.output if o]
        sess = make_session(with_outputs(self.blob, names, present={o.name for o in self.graph.output}),
                            self.providers, "candidate", level="disabled")
        return {a.name: (a.type, a.shape) for a in list(sess.sess.get_outputs()) + list(sess.sess.get_inputs())}

    @property
    def ktypes(self) -> dict[str, str]:
        return {name: t for name, (t, _) in self._kinfo.items()}

    def _surviving(self, tensor: str) -> bool:
        """A tensor of the optimized graph holding the candidate tensor's value as it is: same name, same
        type, and a shape that agrees (ONNX Runtime's layout passes can keep a name for a transposed value)."""
        if tensor not in self.kproducer and tensor not in self.kinputs:
            return False
        ktype, kshape = self._kinfo.get(tensor, (None, None))
        want = _ORT_TYPES.get(self.ctypes.get(tensor, 0))
        if want is not None and ktype not in (None, want):
            return False
        cshape = self.cshapes.get(tensor)
        if cshape is None or kshape is None:
            return True
        return len(cshape) == len(kshape) and all(not isinstance(a, int) or not isinstance(b, int) or a == b
                                                  for a, b in zip(cshape, kshape, strict=True))

    def derivation(self, tensor: str) -> list[onnx.NodeProto] | None:
        """The candidate's nodes that compute `tensor` from surviving tensors ([] if it survives itself),
        in order; None when it cannot be read exactly."""
        with self._lock:
            return self._derive(tensor, 0)

    def _derive(self, tensor: str, depth: int) -> list[onnx.NodeProto] | None:
        if tensor in self._derivations:
            return self._derivations[tensor]
        result: list[onnx.NodeProto] | None = None
        if self._surviving(tensor):
            result = []
        elif depth < 8 and tensor in self.cproducer and self.cproducer[tensor].op_type in _EXACT_STEPS:
            node = self.cproducer[tensor]
            steps: list[onnx.NodeProto] = []
            for name in node.input:
                if not name or name in self.cinits:
                    continue
                sub = self._derive(name, depth + 1)
                if sub is None:
                    steps = None  # type: ignore[assignment]
                    break
                steps += [s for s in sub if s not in steps]
            if steps is not None:
                result = steps + [node]
        self._derivations[tensor] = result
        return result

    def available(self, tensor: str) -> bool:
        return self.derivation(tensor) is not None

    def groups(self) -> list:
        return []  # fusions show as tensors that no longer exist

    def matches_plain(self) -> bool | None:
        return True  # the optimized graph is the deployed one, run without further changes

    def kernel(self, tensor: str) -> Kernel | None:
        steps = self.derivation(tensor)
        if steps is None:
            return None
        if steps:  # computed beside the graph from a surviving tensor: the kernel that made that one
            first = next((i for s in steps for i in s.input if i and i not in self.cinits and self._surviving(i)), None)
            return self.kernel(first) if first else None
        node = self.kproducer.get(tensor)
        for _ in range(32):
            if node is None:
                return None
            inserted_layout = node.op_type in _LAYOUT and not all(o in self.ctypes for o in node.output if o)
            float_cast = node.op_type == "Cast" and self.ktypes.get(node.input[0]) in _FLOATS
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and not inserted_layout and not float_cast:
                break
            node = self.kproducer.get(node.input[0]) if node.input else None
        return self._describe(node) if node is not None else None

    def _describe(self, node: onnx.NodeProto) -> Kernel:
        data = [t for t in node.input if t and (t in self.kproducer or t in self.kinputs)]
        types = [self.ktypes.get(t) for t in data]
        low = next((_LOW[t] for t in types if t in _LOW), None)
        if node.op_type in _INTEGER_KERNELS:
            precision = low or "int8"
        elif low:
            precision = low  # data movement (MaxPool, Flatten, ...) on quantized values
        elif "tensor(float16)" in types:
            precision = "fp16"
        elif "tensor(bfloat16)" in types:
            precision = "bf16"
        else:
            precision = "fp32"
        dq = any(self.kproducer[t].op_type == "DequantizeLinear" for t in data if t in self.kproducer)
        return Kernel(node.op_type, precision, dequantized_inputs=dq and precision not in _LOW.values())

    def open(self, tensors: Sequence[str], cancel: threading.Event | None = None) -> OrtSource:
        nodes, inits, outputs = self._side_graph(tensors)
        blob = with_nodes(self.blob, nodes, inits)
        blob = with_outputs(blob, list(outputs), present={o.name for o in self.graph.output})
        return OrtSource(blob, outputs, self.providers, "disabled", "candidate (kernels exposed)",
                         self.expect_provider, cancel, low_memory=True)

    def _side_graph(self, tensors: Sequence[str]):
        """Copies of the candidate's exact nodes that compute the wanted tensors beside the optimized
        graph, under names of their own; and {session output: wanted tensor}."""
        nodes: dict[str, onnx.NodeProto] = {}
        inits: dict[str, onnx.TensorProto] = {}
        outputs: dict[str, str] = {}
        for tensor in dict.fromkeys(tensors):
            steps = self.derivation(tensor)
            if steps is None:
                raise BackendError(f"internal: tensor '{tensor}' is not available in the deployed candidate")
            for step in steps:
                key = SIDE + step.output[0]
                if key in nodes:
                    continue
                copy = onnx.NodeProto()
                copy.CopyFrom(step)
                copy.name = key
                for i, name in enumerate(copy.input):
                    if not name:
                        continue
                    if name in self.cinits:
                        if SIDE + name not in inits:
                            init = onnx.TensorProto()
                            init.CopyFrom(self.cinits[name])
                            init.name = SIDE + name
                            inits[SIDE + name] = init
                        copy.input[i] = SIDE + name
                    elif not self._surviving(name):
                        copy.input[i] = SIDE + name
                for i, name in enumerate(copy.output):
                    if name:
                        copy.output[i] = SIDE + name
                nodes[key] = copy
            outputs[SIDE + tensor if steps else tensor] = tensor
        return list(nodes.values()), list(inits.values()), outputs


class OrtSource:
    """A CandidateSource over one ONNX Runtime session: `infer(feed)` returns {wanted name: value}."""

    def __init__(self, blob: bytes, outputs: dict[str, str] | None, providers: list | None, level: str,
                 what: str, expect_provider: str | None = None, cancel: threading.Event | None = None,
                 low_memory: bool = False):
        self._blob, self._outputs, self._providers, self._level = blob, outputs, providers, level
        self._what, self._expect, self._cancel, self._low_memory = what, expect_provider, cancel, low_memory
        self._session: Session | None = None
        self.provider = ""

    def __enter__(self) -> OrtSource:
        sess = make_session(self._blob, self._providers, self._what, low_memory=self._low_memory, level=self._level)
        if self._expect and sess.provider != self._expect:
            raise BackendError(f"ONNX Runtime fell back from {self._expect} to {sess.provider} for the "
                               "candidate; the report would not describe the GPU deployment, so it stops here")
        self._session, self.provider = sess, sess.provider
        if self._outputs is None:
            self._outputs = {o: o for o in sess.output_names}
        self._blob = b""  # the session holds the model now
        return self

    def __exit__(self, *exc: object) -> None:
        self._session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise BackendError("internal: infer() outside `with source:`")
        values = self._session.run(list(self._outputs), feed, self._cancel)
        return {self._outputs[name]: value for name, value in values.items()}
