"""The ONNX Runtime backend: a precision plan realised as an ONNX model and run by ONNX Runtime.

  INT8 (`ort-int8`)   TensorRT-style QDQ, quantized once per model and calibration set (backends/int8.py);
                      each plan is derived from that model by graph edits
  FP16 (`ort-fp16`)   cast insertion, FP16 emulated where the CPU provider has no FP16 kernel (fp16.py)
  FP32                the model itself
  `ort-cuda`          the FP32 model on onnxruntime-gpu's CUDA provider (uniform FP32 plans only)
  `ort-trt-fp16/int8` onnxruntime-gpu's TensorRT provider with its FP16 / INT8 flags (uniform plans only:
                      that provider has no per-node precision control)

A plan this backend cannot realise is refused with a BackendError that says what it can do instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import onnx
import onnxruntime

from layerdiff.backends.base import Candidate, Kernel
from layerdiff.backends.fp16 import build_fp16
from layerdiff.backends.int8 import TRT_QDQ_OPS, Int8Quantizer
from layerdiff.backends.kernels import OrtKernels
from layerdiff.backends.ort import OrtSource, provider_loads
from layerdiff.errors import BackendError
from layerdiff.graph import LoadedModel, proto_tensor_types, serialize
from layerdiff.lazy import once
from layerdiff.plan import PrecisionPlan
from layerdiff.rewrite import with_outputs

GPU_PROVIDERS = {
    "cuda": ("CUDAExecutionProvider", {}),
    "trt-fp16": ("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
    "trt-int8": ("TensorrtExecutionProvider", {"trt_int8_enable": "True", "trt_fp16_enable": "True"}),
}
QUANTIZATION = ("QDQ by onnxruntime.quantization: symmetric INT8 activations and weights, per-channel weights, "
                "INT32 biases; Q/DQ on the inputs of " + ", ".join(TRT_QDQ_OPS) + ", never on outputs")
_LOW = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8", onnx.TensorProto.FLOAT16: "fp16",
        onnx.TensorProto.BFLOAT16: "bf16"}
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


class OrtRunner:
    """Runs one candidate ONNX model: plain (as deployed) or with some of its tensors read."""

    def __init__(self, executed: onnx.ModelProto, providers: list | None, level: str, capture: str,
                 expect_provider: str | None = None, view: Callable[[OrtRunner], object] | None = None,
                 derived_from: bytes | None = None):
        self.executed, self.providers, self.level = executed, providers, level
        self.derived_from = derived_from  # the user's model, where layerdiff built this one from it
        self.capture, self.expect = capture, expect_provider
        # ONNX Runtime's TensorRT provider builds its own engines: which precision each layer ran in is not
        # known from the ONNX graph (its labels would say fp32 while TensorRT ran FP16)
        self.opaque = expect_provider if expect_provider == "TensorrtExecutionProvider" else None
        self._view = view  # makes the deployment, where it is not the capture mode's own

    @once
    def blob(self) -> bytes:
        return serialize(self.executed)

    def open(self, cancel: threading.Event | None = None) -> OrtSource:
        return OrtSource(self.blob, None, self.providers, self.level, "candidate", self.expect, cancel,
                         derived_from=self.derived_from)

    def deployment(self):
        return self._deployment

    @once
    def _deployment(self):
        if self._view is not None:
            return self._view(self)
        if self.capture == "kernels":
            return OrtKernels(self.executed, self.blob, self.providers, self.level, self.expect, self.derived_from)
        return MarkedOutputs(self)


class MarkedOutputs:
    """Every tensor of the candidate marked as a graph output. ONNX Runtime cannot fuse across an output,
    so this session may compute differently from the deployed one (the report says by how much)."""

    mode = "mark-outputs"
    missing = "fused inside a kernel of the candidate: no value of it exists"

    def __init__(self, runner: OrtRunner):
        self.runner = runner
        graph = runner.executed.graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.inputs = {i.name for i in graph.input}
        self.types = proto_tensor_types(runner.executed)

    def available(self, tensor: str) -> bool:
        return tensor in self.producer or tensor in self.inputs

    def groups(self) -> list:
        return []

    def matches_plain(self) -> bool | None:
        return None  # measured instead: capture.exposed_vs_plain_max_abs

    def check_missing(self, tensors, feeds) -> dict[str, str] | None:
        return {}  # every tensor of the candidate is an output: what is missing is not in its graph at all

    def view(self, tensor: str) -> str:
        return ""

    def kernel(self, tensor: str) -> Kernel | None:
        node = self.producer.get(tensor)
        if node is None:
            return None
        if self.runner.opaque:  # a provider that compiles the graph its own way (TensorRT) does not say
            return Kernel(self.runner.opaque, "unknown")
        data = [self.types.get(t, 0) for t in node.input if t in self.producer or t in self.inputs]
        if not any(t in _FLOATS for t in data):  # its float operand is a weight (a Gather's table): its output
            data += [self.types.get(t, 0) for t in node.output if t]
        precision = next((_LOW[t] for t in data if t in _LOW), "fp32")
        dq = any(self.producer[t].op_type == "DequantizeLinear" for t in node.input if t in self.producer)
        return Kernel(node.op_type, precision, dequantized_inputs=dq and precision == "fp32")

    def open(self, tensors, cancel=None) -> OrtSource:
        graph = self.runner.executed.graph
        blob = with_outputs(self.runner.blob, list(tensors), present={o.name for o in graph.output})
        return OrtSource(blob, {t: t for t in tensors}, self.runner.providers, self.runner.level,
                         "candidate (tensors marked as outputs)", self.runner.expect, cancel, low_memory=True,
                         derived_from=self.runner.derived_from or self.runner.blob)


class OrtBackend:
    """Realises plans of one model on ONNX Runtime. `provider`: cpu | cuda | trt-fp16 | trt-int8."""

    def __init__(self, model: LoadedModel, *, provider: str = "cpu", quantizer: Int8Quantizer | None = None,
                 level: str = "all", capture: str = "kernels"):
        self.model, self.provider, self.level, self.quantizer = model, provider, level, quantizer
        self.capture = capture if provider == "cpu" else "mark-outputs"  # GPU graphs are provider-specific
        self.name = "ort" if provider == "cpu" else f"ort-{provider}"

    def _providers(self) -> tuple[list | None, str | None]:
        if self.provider == "cpu":
            return None, None
        name, options = GPU_PROVIDERS[self.provider]
        if not provider_loads(name):
            raise BackendError(
                f"--candidate ort-{self.provider} needs onnxruntime-gpu's {name}, which does not load here (no "
                "NVIDIA GPU, or no CUDA/TensorRT libraries); run it on a GPU machine, or use ort-int8 / ort-fp16"
            )
        return [(name, options), "CPUExecutionProvider"], name

    def realise(self, plan: PrecisionPlan) -> Candidate:
        plan.check((lay.name for lay in self.model.layers), self.model.tensor_producers)
        if self.provider != "cpu":
            return self._gpu(plan)
        precisions = plan.precisions
        if "bf16" in precisions:
            raise BackendError("ONNX Runtime's CPU provider cannot realise a BF16 plan (it has no BF16 kernels); "
                               "use trt-bf16 on a machine with TensorRT, or an fp16 plan")
        if {"int8", "fp16"} <= precisions:
            raise BackendError("the ONNX Runtime backend realises INT8 or FP16 plans, not both in one model: pin "
                               "the other nodes to fp32, or use a TensorRT backend")
        if "int8" in precisions:
            return self._int8(plan)
        if "fp16" in precisions:
            return self._fp16(plan)
        model = _copy(self.model.proto)
        return self._candidate(plan, "ort-fp32", model, model, {}, derived=False)

    def _int8(self, plan: PrecisionPlan) -> Candidate:
        if self.quantizer is None:
            raise BackendError("an INT8 plan needs calibration samples: prepare the session with calib=... or "
                               "inputs=...")
        q = self.quantizer
        pinned = frozenset(n for n in q.quantized if plan.precision_of(n) != "int8")
        executed = q.derive(pinned)
        details = {"quantization": QUANTIZATION, "qdq_domain": "com.microsoft" if q.contrib_qdq else "ai.onnx",
                   "quantized_nodes": len(q.quantized) - len(pinned),
                   "calibration": {"method": q.method, "source": q.calib.source, "samples": len(q.calib),
                                   "random": q.calib.random}}
        return self._candidate(plan, "ort-int8", executed, executed, details, pinned=pinned)

    def _fp16(self, plan: PrecisionPlan) -> Candidate:
        deployable, executed = build_fp16(self.model, plan)
        from layerdiff.backends.fp16 import emulated_nodes

        emulated = frozenset(emulated_nodes(executed))
        pinned = frozenset(n for n in plan.overrides if plan.overrides[n] == "fp32")
        return self._candidate(plan, "ort-fp16", deployable, executed, {}, pinned=pinned, emulated=emulated)

    def _gpu(self, plan: PrecisionPlan) -> Candidate:
        want = {"cuda": "fp32", "trt-fp16": "fp16", "trt-int8": "int8"}[self.provider]
        if plan != PrecisionPlan(want):
            raise BackendError(f"ort-{self.provider} runs the whole model in {want} (onnxruntime-gpu's providers "
                               "take no per-node precisions); use ort-int8 / ort-fp16 on the CPU, or trt-* with "
                               "TensorRT, to pin nodes")
        providers, expect = self._providers()
        if want == "int8" and self.quantizer is None:
            raise BackendError("ort-trt-int8 needs calibration samples for its Q/DQ model: pass calib=... or inputs=...")
        executed = _copy(self.quantizer.base if want == "int8" else self.model.proto)
        return self._candidate(plan, f"ort-{self.provider}", executed, executed,
                               {"provider_options": GPU_PROVIDERS[self.provider][1]}, providers=providers,
                               expect=expect, derived=want == "int8")

    def _candidate(self, plan, kind, deployable, executed, details, *, pinned=frozenset(), emulated=frozenset(),
                   providers=None, expect=None, derived: bool = True) -> Candidate:
        where = "CPU" if self.provider == "cpu" else GPU_PROVIDERS[self.provider][0]
        runner = OrtRunner(executed, providers, self.level, self.capture, expect,
                           derived_from=self.model.blob if derived else None)
        return Candidate(of=self.model.key, spec=kind, kind=kind, backend=self.name,
                         runtime=f"onnxruntime {onnxruntime.__version__} ({where})", plan=plan, model=deployable,
                         executed=executed, runner=runner, pinned=pinned, emulated=emulated,
                         requested=dict(plan.overrides), details={**details, "ort_optimization": self.level})


class OnnxFileBackend:
    """A candidate ONNX model given by the user (a QDQ model from another quantizer, an FP16 model):
    run as it is; it realises no plan but its own."""

    name = "onnx"

    def __init__(self, model: LoadedModel, candidate: LoadedModel, level: str = "all", capture: str = "kernels"):
        self.model, self.candidate, self.level, self.capture = model, candidate, level, capture

    def realise(self, plan: PrecisionPlan | None = None) -> Candidate:
        if plan is not None:
            raise BackendError("a candidate ONNX file is compared as it is: it cannot realise a precision plan")
        from layerdiff.backends.fp16 import emulated_nodes

        proto = self.candidate.proto
        runner = OrtRunner(proto, None, self.level, self.capture)
        return Candidate(of=self.model.key, spec=str(self.candidate.path), kind="onnx", backend=self.name,
                         runtime=f"onnxruntime {onnxruntime.__version__} (CPU)", plan=None, model=proto,
                         executed=proto, runner=runner, emulated=frozenset(emulated_nodes(proto)),
                         details={"path": str(self.candidate.path), "sha256": self.candidate.sha256,
                                  "ort_optimization": self.level})


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A candidate's own copy: nothing a user does to it reaches the session's model."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out
