"""ONNX Runtime's rewrites of a channels-last export (fixtures/nhwc_pool.onnx, as tf2onnx and keras2onnx
write them): QuantizeLinear moved above the input Transpose and above each MaxPool, and a bias two Convs
share, which onnxruntime.quantization would copy under the name of a tensor the graph computes."""

from __future__ import annotations

import pytest

import layerdiff
from tests.conftest import FIXTURES

MODEL = FIXTURES / "nhwc_pool.onnx"


@pytest.fixture(scope="module")
def report():
    return layerdiff.compare(MODEL, "ort-int8", reference_provider="cpu")


def test_every_tensor_is_paired_by_structure(report):
    assert not any("read by their values" in w for w in report.warnings)
    unpaired = {o.tensor for lay in report.layers for o in lay.outputs if not o.paired}
    assert unpaired == {"ca", "cc"}  # each Conv's output before the Relu its kernel applies: truly gone
    assert report.capture.exposed_vs_plain_max_abs == 0.0


def test_rounding_moved_above_a_maxpool_stays_with_its_conversion_row(report):
    """The deployed MaxPool runs on INT8 (its QuantizeLinear moved above it): the pool is exact, and the
    rounding is the conversion row of its output, not the MaxPool's local error."""
    assert report.layer("pool_a").local_rel_rms == 0.0
    (rounding,) = [lay for lay in report.layers if lay.kind == "conversion" and lay.name == "p1_QuantizeLinear"]
    assert rounding.local_rel_rms > 1e-3
    transpose = report.layer("to_nchw")
    assert transpose.local_rel_rms == 0.0 and transpose.kernels == ("Transpose",)


def test_a_bias_copy_named_like_a_tensor_is_not_made(monkeypatch):
    """Left to onnxruntime.quantization, the shared bias `b` is copied as `b0`, which `relu_a` writes: the
    candidate has two definitions of `b0` and does not load. That was bad input (exit 2); a model
    layerdiff built that does not load is layerdiff's fault (exit 3)."""
    import layerdiff.backends.int8 as int8

    monkeypatch.setattr(int8, "_own_biases", lambda graph: None)
    with pytest.raises(RuntimeError, match="layerdiff built from the model"):
        layerdiff.compare(MODEL, "ort-int8", reference_provider="cpu")
