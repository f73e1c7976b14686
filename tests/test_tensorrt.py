"""TensorRT candidates, for machines with TensorRT and an NVIDIA GPU. They skip cleanly elsewhere (and
have never run on layerdiff's own machines, which have neither)."""

import json

import pytest

from layerdiff.backends.trt import tensorrt_version
from tests.conftest import FIXTURES

pytestmark = pytest.mark.skipif(tensorrt_version() is None, reason="TensorRT is not installed here")


@pytest.mark.parametrize("spec", ["trt-fp16", "trt-int8"])
def test_tensorrt_candidate_end_to_end(spec, tmp_path):
    import layerdiff
    from layerdiff.engine_info import parse_engine_info

    session = layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs")
    cand = session.candidate(spec)
    report = session.compare(cand)
    layers = tmp_path / "layers.json"
    layers.write_text(cand.artifacts["engine_info.json"])
    assert report.capture.mode in ("debug-tensors", "mark-outputs")
    assert isinstance(report.capture.matches_plain_engine, bool)
    assert report.output_metrics("probs").cosine > 0.99
    assert any(len(row.onnx_nodes) > 1 for row in report.layers)  # TensorRT fused something
    assert all(row.engine_layers for row in report.layers if len(row.onnx_nodes) > 1)
    info = parse_engine_info(layers)
    assert info.kind == "detailed-json" and json.loads(layers.read_text())["Layers"]
    convs = [row for row in report.layers if "conv1" in row.onnx_nodes]
    assert convs and convs[0].precision in (("fp16",) if spec == "trt-fp16" else ("int8", "fp16"))


def test_tensorrt_pins_are_obeyed_and_audited():
    import layerdiff
    from layerdiff import PrecisionPlan

    plan = PrecisionPlan.uniform("fp16", pin_fp32={"conv2"})
    report = layerdiff.compare(FIXTURES / "cnn.onnx", "trt-fp16", inputs=FIXTURES / "cnn_inputs", plan=plan)
    audit = [a for a in report.to_dict()["precision_audit"] if a["requested"] == "fp32"]
    assert audit, "the pinned layer is in the audit"
    assert all(a["realised_as_requested"] is True for a in audit), audit  # TensorRT obeyed the pin


@pytest.mark.parametrize("spec", ["trt-fp16", "trt-int8"])
def test_tensorrt_bisect_pins_run_in_fp32(spec):
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.target import Target

    session, held = prepare_split(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs")
    probe = Target.parse("cosine", 0.0, [], session.model.outputs)
    got = session.outputs_on(session.candidate(spec))
    baseline = probe.worst([probe.score(r, g) for r, g in zip(session.outputs_on(None), got, strict=True)])
    if baseline >= 1.0:
        pytest.skip(f"{spec} matches FP32 exactly on the CNN: nothing to search")
    target = Target.parse("cosine", (baseline + 1.0) / 2, [], session.model.outputs)
    result = bisect(session, spec, target, holdout=held)
    assert result.status in ("found", "budget") and result.outcome.passed, result.status
    assert result.evaluations <= result.bound
    for pin in result.pins:  # each pin's evidence comes from the engine inspector of the unpinned engine
        assert pin.evidence is None or "realised_precision" in pin.evidence
    # the answer rebuilt by its plan: TensorRT obeyed every pin (its engine says FP32)
    report = session.compare(session.candidate(spec, result.plan))
    audit = [a for a in report.to_dict()["precision_audit"] if a["requested"] == "fp32"]
    assert all(a["realised_as_requested"] is True for a in audit), audit
