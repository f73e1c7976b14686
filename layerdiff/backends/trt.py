"""TensorRT candidates (`trt-fp16`, `trt-int8`, `trt-bf16`), built through Polygraphy's loaders.

NEVER RUN AGAINST A REAL TENSORRT: TensorRT cannot be imported on the machines layerdiff is developed
and tested on, so this module is written against Polygraphy's documented API and read-checked only.
Everything it produces (engine layer information, saved outputs) is analysed by code that is tested.

TensorRT 10: builder precision flags, INT8 calibration through Polygraphy's `Calibrator` on the
calibration samples, per-layer FP32 pins with precision constraints obeyed (`SetLayerPrecisions`).
TensorRT 11+ (strongly typed): the plan is realised in the ONNX (layerdiff's QDQ or FP16 cast model) and
built strongly typed. Capture: TensorRT's debug tensors for unfused tensors where the version has them
(the engine keeps its fusions), else every tensor marked as an output (which blocks fusions). The
plain engine is always built too: the report says whether the capture engine's outputs and layer list
match it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from layerdiff.backends.fp16 import build_fp16_plain
from layerdiff.backends.int8 import build_int8
from layerdiff.errors import BackendError
from layerdiff.graph import LoadedModel, serialize
from layerdiff.inputs import Samples
from layerdiff.plan import PrecisionPlan


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)


class TrtCandidate:
    """A candidate source (see layerdiff.candidates) whose values come from TensorRT engines."""

    def __init__(self, model: LoadedModel, precision: str, plan: PrecisionPlan, calib: Samples,
                 method: str = "minmax"):
        import tensorrt as trt
        from polygraphy.backend.trt import (
            Calibrator, CreateConfig, EngineFromNetwork, ModifyNetworkOutputs, NetworkFromOnnxBytes,
            SetLayerPrecisions,
        )
        from polygraphy.common import constants

        self.version = trt.__version__
        strongly_typed = int(self.version.split(".")[0]) >= 11
        if strongly_typed:
            onnx_model = (build_int8(model, plan, calib, method) if precision == "int8"
                          else build_fp16_plain(model, plan))
            if precision == "bf16":
                raise BackendError("trt-bf16 with strongly typed TensorRT needs a BF16 cast model, which "
                                   "layerdiff does not build yet; use trt-fp16 or trt-int8")
        else:
            onnx_model = model.proto
        blob = serialize(onnx_model)
        debug = hasattr(trt.INetworkDefinition, "mark_unfused_tensors_as_debug_tensors")
        self.mode = "debug-tensors" if debug else "mark-outputs"

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
        calibrator = Calibrator(list(calib.feeds)) if precision == "int8" and not strongly_typed and not explicit else None
        config = CreateConfig(
            tf32=False, fp16=not strongly_typed and precision in ("fp16", "int8"),
            int8=not strongly_typed and precision == "int8", bf16=not strongly_typed and precision == "bf16",
            calibrator=calibrator,
            precision_constraints="obey" if plan.pinned and not strongly_typed else None,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        )
        self.plain_engine = EngineFromNetwork(network(False), config)()
        self.capture_engine = EngineFromNetwork(network(True), config)()
        self.engine_info_json = self._layer_info(self.capture_engine)
        self.plain_info_json = self._layer_info(self.plain_engine)
        self.provider = f"TensorRT {self.version}"
        self.graph_outputs = list(model.outputs)
        self.tensors = self._tensor_names(model)
        self._runners: dict[int, object] = {}

    @staticmethod
    def _layer_info(engine) -> str:
        import tensorrt as trt

        inspector = engine.create_engine_inspector()
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)

    def _tensor_names(self, model: LoadedModel) -> set[str]:
        layers = json.loads(self.engine_info_json).get("Layers", [])
        names = {t.get("Name") for layer in layers if isinstance(layer, dict)
                 for t in layer.get("Inputs", []) + layer.get("Outputs", [])}
        onnx_names = {t for layer in model.layers for t in layer.outputs}
        return (names & onnx_names) | set(model.outputs)

    def save_engine_info(self, path: str | Path) -> None:
        Path(path).write_text(self.engine_info_json)

    def engine_info_path(self) -> str:
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, prefix="layerdiff-engine-")
        with f:
            f.write(self.engine_info_json)
        return f.name

    def _run(self, engine, names: list[str]):
        from polygraphy.backend.trt import TrtRunner

        runner = TrtRunner(engine)
        runner.activate()
        self._runners[id(runner)] = runner

        def run(si: int, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = runner.infer(feed, copy_outputs_to_host=True)
            missing = [n for n in names if n not in out]
            if missing:
                raise BackendError(f"TensorRT did not return tensor '{missing[0]}' (fused away despite capture)")
            return {n: np.asarray(out[n]) for n in names}

        return run

    def open(self, names: list[str]):
        return self._run(self.capture_engine, names)

    def plain(self, names: list[str]):
        return self._run(self.plain_engine, names)

    def matches_plain_engine(self) -> bool:
        """Whether the capture engine has the plain engine's layer list (it fused the same way)."""
        def names(js: str) -> list[str]:
            return [layer if isinstance(layer, str) else layer.get("Name")
                    for layer in json.loads(js).get("Layers", [])]
        return names(self.engine_info_json) == names(self.plain_info_json)
