"""`ort-int8`: TensorRT-style QDQ by onnxruntime.quantization (symmetric INT8 activations and weights,
per-channel weights), with the plan's FP32 pins excluded. Calibration ranges are computed once per
model and calibration set and kept in a cache file, so every later plan of the same model reuses them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from layerdiff.errors import InputDataError
from layerdiff.graph import LoadedModel, max_ir_version
from layerdiff.inputs import Samples
from layerdiff.plan import PrecisionPlan

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Where TensorRT (and NVIDIA's ModelOpt defaults) put Q/DQ: the inputs of compute-heavy layers, pooling
# and residual adds. Other ops read dequantized tensors and compute in float.
TRT_QDQ_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool", "Add"]


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs advice on the root logger and prints progress; keep it quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None):
            yield
    finally:
        root.setLevel(level)


class _Reader:
    """A CalibrationDataReader over layerdiff samples."""

    def __init__(self, samples: Samples):
        self._feeds = list(samples.feeds)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])


def calibration_key(model: LoadedModel, calib: Samples, method: str) -> str:
    h = hashlib.sha256(model.sha256.encode() + method.encode())
    for feed in calib.feeds:
        for name in sorted(feed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()[:16]


def build_int8(model: LoadedModel, plan: PrecisionPlan, calib: Samples, method: str = "minmax",
               cache_dir: Path | None = None) -> onnx.ModelProto:
    """Quantize `model` as `plan` says (nodes pinned to fp32 are left unquantized)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise InputDataError(f"unknown calibration method '{method}'; use one of {', '.join(CALIBRATION_METHODS)}")
    if len(calib) == 0:
        raise InputDataError("the calibration set is empty: give --calib samples")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    keep_fp32 = sorted(n for n in (layer.name for layer in model.layers) if plan.precision_of(n) != "int8")
    with tempfile.TemporaryDirectory(prefix="layerdiff-int8-") as tmp:
        cache_root = Path(cache_dir) if cache_dir else Path(tmp)
        cache_root.mkdir(parents=True, exist_ok=True)
        cache = cache_root / f"calibration-{calibration_key(model, calib, method)}.json"
        out = Path(tmp) / "candidate.onnx"
        source = onnx.ModelProto()
        source.CopyFrom(model.proto)  # quantize_static rewrites the proto it is given (external data)
        with _quiet_quantizer():
            quantize_static(
                source, out, _Reader(calib) if not cache.is_file() else None,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=TRT_QDQ_OPS, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32,
                calibrate_method=methods[method], calibration_cache_path=cache,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QDQKeepRemovableActivations": True},
            )
        candidate = onnx.load(str(out))
    candidate.ir_version = min(candidate.ir_version, max_ir_version())
    return candidate
