"""The TensorRT backend (`trt-fp16`, `trt-int8`, `trt-bf16`): engines built through Polygraphy's loaders.

NEVER RUN AGAINST A REAL TENSORRT: TensorRT cannot be imported on the machines layerdiff is developed
and tested on, so this module is written against Polygraphy's documented API and read-checked only.
Everything it produces (engine layer information, saved outputs) is analysed by code that is tested.

TensorRT 10: builder precision flags, INT8 calibration through Polygraphy's `Calibrator` on the
calibration samples, per-layer FP32 pins with precision constraints obeyed (`SetLayerPrecisions`).
TensorRT 11+ (strongly typed, no per-layer precision API): the plan is realised in the ONNX (layerdiff's
QDQ or FP16 cast model, the same ones the ONNX Runtime backend builds) and built strongly typed. Capture:
TensorRT's debug tensors for unfused tensors where the version has them (the engine keeps its fusions),
else every tensor marked as an output (which blocks fusions). The plain engine is always built too.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx

from layerdiff.backends.base import Candidate
from layerdiff.backends.engine import EngineView
from layerdiff.errors import BackendError, BadInput
from layerdiff.graph import LoadedModel, serialize
from layerdiff.inputs import Samples
from layerdiff.plan import PrecisionPlan


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)


class TrtSource:
    """A CandidateSource over a TensorRT engine (Polygraphy's TrtRunner)."""

    def __init__(self, engine, names: list[str] | None, provider: str):
        self.engine, self.names, self.provider = engine, names, provider
        self._runner = None

    def __enter__(self) -> TrtSource:
        from polygraphy.backend.trt import TrtRunner

        self._runner = TrtRunner(self.engine)
        self._runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._runner.infer(feed, copy_outputs_to_host=True)
        names = self.names if self.names is not None else list(out)
        missing = [n for n in names if n not in out]
        if missing:
            raise BackendError(f"TensorRT did not return tensor '{missing[0]}' (fused away despite capture)")
        # copies: the runner reuses its host buffers for the next inference
        return {n: np.array(out[n], copy=True) for n in names}


class TrtDeployment(EngineView):
    missing = "fused inside an engine layer: TensorRT keeps no value of it"
    def __init__(self, runner: TrtRunnerSet):
        super().__init__(runner.model, runner.engine_tensors, runner.info)
        self.runner = runner
        self.mode = runner.mode

    def matches_plain(self) -> bool | None:
        return self.runner.matches_plain

    def open(self, tensors, cancel: threading.Event | None = None) -> TrtSource:
        return TrtSource(self.runner.capture_engine, list(tensors), self.runner.provider)


class TrtRunnerSet:
    """The plain engine (as deployed) and the capture engine of one plan, with the capture engine's
    layer information parsed."""

    def __init__(self, model: LoadedModel, onnx_model: onnx.ModelProto, precision: str, plan: PrecisionPlan,
                 calib: Samples, strongly_typed: bool):
        import tensorrt as trt
        from polygraphy.backend.trt import (
            Calibrator,
            CreateConfig,
            EngineFromNetwork,
            ModifyNetworkOutputs,
            NetworkFromOnnxBytes,
            SetLayerPrecisions,
        )
        from polygraphy.common import constants

        from layerdiff.engine_info import parse_engine_info

        blob = serialize(onnx_model)
        debug = hasattr(trt.INetworkDefinition, "mark_unfused_tensors_as_debug_tensors")
        self.mode = "debug-tensors" if debug else "mark-outputs"
        self.provider = f"TensorRT {trt.__version__}"

        def network(capture: bool):
            net = NetworkFromOnnxBytes(blob, strongly_typed=strongly_typed,
                                       mark_unfused_tensors_as_debug_tensors=capture and debug)
            if capture and not debug:
                net = ModifyNetworkOutputs(net, outputs=constants.MARK_ALL)
            pins = {n: trt.float32 for n in plan.pinned}
            if pins and not strongly_typed:
                net = SetLayerPrecisions(net, pins)
            return net

        # a model that already holds Q/DQ nodes is quantized explicitly: TensorRT takes its scales
        explicit = any(n.op_type == "QuantizeLinear" for n in onnx_model.graph.node)
        calibrator = (Calibrator(list(calib.feeds)) if precision == "int8" and not strongly_typed and not explicit
                      else None)
        config = CreateConfig(
            tf32=False, fp16=not strongly_typed and precision in ("fp16", "int8"),
            int8=not strongly_typed and precision == "int8", bf16=not strongly_typed and precision == "bf16",
            calibrator=calibrator, precision_constraints="obey" if plan.pinned and not strongly_typed else None,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        )
        self.plain_engine = EngineFromNetwork(network(False), config)()
        self.capture_engine = EngineFromNetwork(network(True), config)()
        self.engine_info_json = _layer_info(self.capture_engine)
        plain_info_json = _layer_info(self.plain_engine)
        self.matches_plain = _layer_names(self.engine_info_json) == _layer_names(plain_info_json)
        with tempfile.TemporaryDirectory(prefix="layerdiff-trt-") as tmp:
            path = Path(tmp) / "engine_info.json"
            path.write_text(self.engine_info_json)
            self.info = parse_engine_info(path, model)
        self.info_summary = {"kind": self.info.kind, "engine_layers": len(self.info.layers)}
        self.model = model
        self.engine_tensors = {t.name for el in self.info.layers for t in el.inputs + el.outputs} | set(model.outputs)
        self.outputs = list(model.outputs)

    def open(self, cancel: threading.Event | None = None) -> TrtSource:
        return TrtSource(self.plain_engine, self.outputs, self.provider)

    def deployment(self) -> TrtDeployment:
        return TrtDeployment(self)


def _layer_info(engine) -> str:
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def _layer_names(js: str) -> list[str]:
    return [layer if isinstance(layer, str) else layer.get("Name") for layer in json.loads(js).get("Layers", [])]


class TrtBackend:
    name = "trt"

    def __init__(self, model: LoadedModel, calib: Samples, method: str = "minmax", quantizer=None):
        self.model, self.calib, self.method, self.quantizer = model, calib, method, quantizer

    def realise(self, plan: PrecisionPlan) -> Candidate:
        version = tensorrt_version()
        if version is None:
            raise BadInput(
                f"--candidate trt-{plan.default} needs TensorRT and an NVIDIA GPU, which are not available here; "
                "install them with pip install 'layerdiff[tensorrt]' on a GPU machine, or use ort-int8 / ort-fp16"
            )
        plan.check((lay.name for lay in self.model.layers), self.model.tensor_producers)
        precision = plan.default
        if precision == "fp32" or len(plan.precisions - {"fp32"}) > 1:
            raise BackendError("the TensorRT backend builds an fp16, int8 or bf16 plan (nodes pinned to fp32 allowed)")
        strongly_typed = int(version.split(".")[0]) >= 11
        onnx_model = self.model.proto
        if strongly_typed:
            onnx_model = self._typed_onnx(plan, precision)
        runners = TrtRunnerSet(self.model, onnx_model, precision, plan, self.calib, strongly_typed)
        details = {"engine_info": {**runners.info_summary, "path": "(read from the built engine)"},
                   "strongly_typed": strongly_typed}
        return Candidate(of=self.model.key, spec=f"trt-{precision}", kind=f"trt-{precision}", backend=self.name,
                         runtime=f"TensorRT {version}", plan=plan, model=onnx_model if strongly_typed else None,
                         executed=onnx_model if strongly_typed else None, runner=runners, pinned=plan.pinned,
                         requested=dict(plan.overrides), details=details,
                         artifacts={"engine_info.json": runners.engine_info_json})

    def _typed_onnx(self, plan: PrecisionPlan, precision: str) -> onnx.ModelProto:
        if precision == "bf16":
            raise BackendError("trt-bf16 with strongly typed TensorRT needs a BF16 cast model, which layerdiff "
                               "does not build yet; use trt-fp16 or trt-int8")
        if precision == "fp16":
            from layerdiff.backends.fp16 import build_fp16_plain

            return build_fp16_plain(self.model, plan)
        if self.quantizer is None:
            from layerdiff.backends.int8 import Int8Quantizer

            self.quantizer = Int8Quantizer(self.model, self.calib, self.method)
        if self.quantizer.contrib_qdq:
            raise BackendError("TensorRT reads standard Q/DQ only, which per-channel weights need opset 13 for; "
                               "re-export the model at opset 13 or later")
        return self.quantizer.derive(frozenset(n for n in self.quantizer.quantized if plan.precision_of(n) != "int8"))
