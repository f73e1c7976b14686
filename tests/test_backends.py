import pytest

from layerdiff.backends import ort as ort_backend
from layerdiff.backends.int8 import build_int8
from layerdiff.errors import BackendError
from layerdiff.graph import load_model
from layerdiff.inputs import load_samples
from layerdiff.plan import PrecisionPlan
from tests.conftest import FIXTURES


def test_calibration_is_computed_once_and_reused(tmp_path, monkeypatch):
    import sys

    import onnxruntime.quantization  # noqa: F401

    q = sys.modules["onnxruntime.quantization.quantize"]

    model = load_model(FIXTURES / "cnn.onnx")
    calib = load_samples(FIXTURES / "cnn_inputs", model.inputs, {})
    first = build_int8(model, PrecisionPlan.uniform("int8"), calib, "entropy", tmp_path)
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran again")

    monkeypatch.setattr(q, "create_calibrator", no_calibration)
    second = build_int8(model, PrecisionPlan.uniform("int8", pin_fp32={"conv2"}), calib, "entropy", tmp_path)
    scales = {t.name: t for t in first.graph.initializer if t.name.endswith("_scale")}
    again = {t.name: t for t in second.graph.initializer if t.name.endswith("_scale")}
    assert scales["relu1_scale"] == again["relu1_scale"]  # same calibrated range, reused
    assert "conv2.weight_quantized" not in {t.name for t in second.graph.initializer}


def test_cuda_provider_is_tried_not_trusted():
    if ort_backend.cuda_loads():
        pytest.skip("CUDA really loads on this machine")
    assert ort_backend.providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="the CUDA execution provider does not load here"):
        ort_backend.providers_for("cuda")


def test_plan_rejects_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision"):
        PrecisionPlan("int3")
    plan = PrecisionPlan.uniform("fp16", pin_fp32={"a"})
    assert plan.precision_of("a") == "fp32" and plan.precision_of("b") == "fp16" and plan.pinned == {"a"}
