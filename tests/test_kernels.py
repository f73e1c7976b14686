"""Reading what the deployed ONNX Runtime session computes, without changing it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import layerdiff
from tests.conftest import FIXTURES, MODELS


def _plain(model: onnx.ModelProto, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.fixture(scope="module")
def cnn_session():
    return layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")


def test_reading_every_available_tensor_leaves_the_outputs_bit_identical(cnn_session):
    cand = cnn_session.candidate("ort-int8")
    view = cand.deployment()
    tensors = [o for n in cand.executed.graph.node for o in n.output if view.available(o)]
    assert len(tensors) > 20
    with view.open(tensors) as source:
        for feed in cnn_session.samples.feeds:
            exposed = source.infer(feed)
            np.testing.assert_array_equal(exposed["probs"], _plain(cand.executed, feed)[0])


def test_derived_values_are_exactly_what_dequantizelinear_gives(cnn_session):
    """A DequantizeLinear output fused into a kernel is recomputed beside the graph from the surviving
    tensor: it equals the ONNX definition of Q then DQ, computed here in numpy."""
    cand = cnn_session.candidate("ort-int8")
    view = cand.deployment()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in cand.executed.graph.initializer}
    name = "flat_DequantizeLinear_Output"
    assert view.available(name) and view.available("flat")
    with view.open(["flat", name]) as source:
        values = source.infer(cnn_session.samples.feeds[0])
    scale, zp = inits["flat_scale"], inits["flat_zero_point"]
    q = np.clip(np.rint(values["flat"] / scale) + zp, -128, 127)
    np.testing.assert_array_equal(values[name], ((q - zp) * scale).astype(np.float32))


def test_precision_labels_name_the_kernel_that_ran(cnn_session):
    report = cnn_session.compare(cnn_session.candidate("ort-int8"))
    rows = {lay.name: lay for lay in report.layers}
    assert rows["fc"].kernels == ("QGemm",) and rows["fc"].precision == "int8"
    # ONNX Runtime cannot fuse DequantizeLinear into a Conv whose output is not quantized again: a float Conv
    assert rows["conv2"].kernels == ("Conv",) and rows["conv2"].precision == "fp32" and rows["conv2"].dequantized_inputs
    assert rows["conv2_bn"].precision == "fp32" and not rows["conv2_bn"].dequantized_inputs


@pytest.mark.parametrize("name", ["cnn.onnx", "transformer.onnx", "dynamic_batch.onnx", "if_model.onnx"])
def test_int8_fixtures_capture_matches_the_plain_run(name):
    report = layerdiff.compare(FIXTURES / name, "ort-int8", reference_provider="cpu",
                               shapes=["images:2x3x16x16"] if name == "dynamic_batch.onnx" else ())
    assert report.capture.mode == "kernels"
    assert report.capture.exposed_vs_plain_max_abs is not None and report.capture.exposed_vs_plain_max_abs < 1e-6


@pytest.mark.skipif(not (MODELS / "ppocr_rec" / "model.onnx").is_file(),
                    reason="real models not fetched: python scripts/get_models.py")
@pytest.mark.parametrize("name", ["ppocr_cls", "ppocr_rec"])
def test_real_models_capture_matches_the_plain_run(name):
    """The report found the exposed run 0.52 apart from the deployed one on PP-OCR's recogniser."""
    d = MODELS / name
    report = layerdiff.compare(d / "model.onnx", "ort-int8", inputs=d / "inputs", calib=d / "calib",
                               reference_provider="cpu")
    assert report.capture.exposed_vs_plain_max_abs < 1e-6
    quantized = [lay for lay in report.layers if lay.precision == "int8" and lay.kind == "layer"]
    assert quantized and all(k.startswith(("QLinear", "QGemm", "MatMulInteger")) or k in ("MaxPool", "Flatten",
                             "Reshape", "Transpose", "Concat") for lay in quantized for k in lay.kernels)
