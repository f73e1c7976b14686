"""The optimized graph paired by structure, layouts read back: ONNX Runtime moves a chain of QLinearConv
kernels to channels-last at level `all` (one Transpose in, one out) and keeps the model's tensor names
on NHWC values. Each value is read in the model's layout, each kernel is one row, and what is read is
what the deployed graph computes (checked against a plain session of that graph, in numpy)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import layerdiff
from tests.conftest import FIXTURES

MODEL, QDQ = FIXTURES / "qlinear_chain.onnx", FIXTURES / "qlinear_chain_qdq.onnx"


@pytest.fixture(scope="module")
def report():
    return layerdiff.compare(MODEL, str(QDQ), inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")


def _optimized(tmp_path) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(QDQ), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "opt.onnx"))


def test_the_fixture_is_a_channels_last_qlinearconv_chain(tmp_path):
    graph = _optimized(tmp_path).graph
    convs = [n for n in graph.node if n.op_type == "QLinearConv"]
    assert len(convs) == 3 and all(n.domain == "com.microsoft" for n in convs)
    perms = [list(a.ints) for n in graph.node if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
    assert [0, 2, 3, 1] in perms  # into NHWC once, then kernel to kernel in NHWC


def test_each_kernel_is_one_row_and_no_row_diverges_falsely(report):
    layers = {lay.name: lay for lay in report.layers if lay.kind == "layer"}
    for i in range(3):
        row = layers[f"conv{i}"]
        assert row.op == "Conv+Relu" and row.kernels == ("QLinearConv",) and row.precision == "int8"
        assert row.local_cosine > 0.999 and row.cosine > 0.999
    assert max(len(lay.onnx_nodes) for lay in report.layers) == 2  # the old capture: one row of 7 nodes
    assert report.first_divergence is None
    assert report.capture.exposed_vs_plain_max_abs == 0.0


def test_values_read_equal_the_deployed_graphs_own_nhwc_values(tmp_path):
    """The oracle: the optimized graph run as it is, every QLinearConv's INT8 NHWC output exposed, then
    dequantized and transposed to NCHW in numpy."""
    session = layerdiff.prepare(MODEL, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    view = session.candidate(str(QDQ)).deployment()
    wanted = [f"relu{i}_dq" for i in range(3)]
    assert all(view.available(t) for t in wanted)
    opt = _optimized(tmp_path)
    inits = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    convs = [n for n in opt.graph.node if n.op_type == "QLinearConv"]
    opt.graph.output.extend(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.UINT8, None) for n in convs)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(opt.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with view.open(wanted) as source:
        for feed in session.samples.feeds:
            got = source.infer(feed)
            raw = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feed), strict=True))
            for conv, tensor in zip(convs, wanted, strict=True):
                scale, zero = inits[conv.input[6]], inits[conv.input[7]]
                nhwc = raw[conv.output[0]]
                expect = ((nhwc.astype(np.int32) - zero) * scale).astype(np.float32).transpose(0, 3, 1, 2)
                np.testing.assert_array_equal(got[tensor], expect)


def test_nchwc_blocked_values_are_read_back_through_reorder_output():
    """At level `all` a float CNN runs as NCHWc kernels (Conv with its BatchNormalization, Add and Relu
    fused, MaxPool) in a blocked layout: each kernel's value is paired by structure and read back to
    NCHW (4 of the CNN's 18 tensors were read before; the rest inside fused kernels truly exist nowhere)."""
    session = layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    cand = session.candidate(str(FIXTURES / "cnn.onnx"))
    assert any(n.domain == "com.microsoft.nchwc" for n in cand.deployment().graph.node)
    report = session.compare(cand)
    assert report.counts.compared >= 9 and report.capture.exposed_vs_plain_max_abs == 0.0
    for name in ("relu1", "relu2", "relu3", "pool", "relu4"):
        assert cand.deployment().available(name), name
    with cand.deployment().open(["relu1", "relu3", "pool"]) as source:
        got = source.infer(session.samples.feeds[0])
    model = onnx.load(str(FIXTURES / "cnn.onnx"))
    model.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in ("relu1", "relu3", "pool"))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, session.samples.feeds[0]), strict=True))
    for t in ("relu1", "relu3", "pool"):  # the same values in the same layout, to FP32 kernel rounding
        np.testing.assert_allclose(got[t], values[t], rtol=0, atol=1e-4)
