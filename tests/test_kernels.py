"""Reading what the deployed ONNX Runtime session computes, without changing it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import layerdiff
from tests.conftest import FIXTURES, MODELS


@pytest.fixture(autouse=True)
def _every_gemm_quantized(monkeypatch):
    """These tests exercise INT8 kernels on the CNN's Gemm head, which the default `trt` placement leaves
    in float as ModelOpt does (a GEMV, N=10): they run on `ort-all`, which quantizes it
    (test_placement.py tests `trt`)."""
    monkeypatch.setattr("layerdiff.backends.placement.DEFAULT", "ort-all")


def _plain(model: onnx.ModelProto, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.fixture(scope="module")
def cnn_session():
    return layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu",
                             int8_placement="ort-all")


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
                             "Reshape", "Transpose", "Concat", "Squeeze") for lay in quantized for k in lay.kernels)


def _two_convs(tmp_path):
    """x -> conv1 -> conv2 -> y: conv1's output is read by a quantized Conv only, so ONNX Runtime makes
    conv1 a QLinearConv writing INT8 (in its channels-last layout, under a new tensor name)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    m = onnx.helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, 3, 16, 16])],
                                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits),
                               opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "convs.onnx")
    return tmp_path / "convs.onnx"


def test_an_integer_kernels_renamed_output_is_read_as_what_it_is(tmp_path):
    """The report's finding: ONNX Runtime renames outputs in its INT8 and layout passes, and reading by name
    alone called such tensors fused, merging separate kernels into one row. conv1 is its own row, computed
    by a QLinearConv, its output read as that kernel's INT8 output dequantized with its own scale."""
    session = layerdiff.prepare(_two_convs(tmp_path), seed=3, reference_provider="cpu")
    cand = session.candidate("ort-int8")
    view = cand.deployment()
    kernel_ops = {n.op_type for n in view.graph.node}
    assert "QLinearConv" in kernel_ops
    report = session.compare(cand)
    conv1 = report.layer("conv1")
    assert conv1.onnx_nodes == ("conv1",) and conv1.kernels == ("QLinearConv",) and conv1.precision == "int8"
    assert conv1.outputs[0].view == "quantized" and conv1.outputs[0].paired
    assert report.counts.fused_away == 0 and report.capture.exposed_vs_plain_max_abs == 0.0
    # the value read equals the next layer's input as the optimized graph has it: DequantizeLinear of the INT8 output
    with view.open(["c1", "c1_DequantizeLinear_Output"]) as source:
        values = source.infer(session.samples.feeds[0])
    np.testing.assert_array_equal(values["c1"], values["c1_DequantizeLinear_Output"])


@pytest.mark.skipif(not (MODELS / "ppocr_det" / "model.onnx").is_file(),
                    reason="real models not fetched: python scripts/get_models.py")
def test_real_models_rows_are_kernels():
    """On PP-OCR's classifier every row is one layer (each has a kernel of its own, renamed outputs and INT8
    outputs included) but for its final MatMul and bias Add, which ONNX Runtime runs as one Gemm (the Add
    is not quantized: TensorRT fuses no bias Add); on the detector the only layers sharing a row are a
    Conv and its activation, which ONNX Runtime runs as one FusedConv."""
    for name, allowed in (("ppocr_cls", {"Gemm"}), ("ppocr_det", {"FusedConv"})):
        d = MODELS / name
        report = layerdiff.compare(d / "model.onnx", "ort-int8", inputs=d / "inputs", calib=d / "calib",
                                   reference_provider="cpu")
        multi = [lay for lay in report.layers if lay.kind == "layer" and len(lay.onnx_nodes) > 1]
        assert all(set(lay.kernels) <= allowed and len(lay.onnx_nodes) == 2 for lay in multi), \
            [(lay.name, lay.op, lay.kernels) for lay in multi]
        indices = [lay.index for lay in report.layers]
        assert indices == sorted(indices)  # weights computed in the graph never lead a row out of order
        assert report.counts.unpaired == 0


def _conv_slice(tmp_path):
    """x -> Conv -> Slice -> Q/DQ -> Add (k) -> out, and its FP32 model. ONNX Runtime's QDQ propagation
    moves the QuantizeLinear up across the Slice to the Conv's output, which it renames y_pre_q; the
    Slice then runs on INT8 values and the Conv, a float NCHWc kernel, writes y_pre_q."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])
    out = helper.make_tensor_value_info("out", T.FLOAT, [1, 2, 8, 8])
    common = [numpy_helper.from_array((rng.normal(size=(4, 4, 3, 3)) * 0.2).astype(np.float32), "w"),
              numpy_helper.from_array(np.array([0], np.int64), "starts"),
              numpy_helper.from_array(np.array([2], np.int64), "ends"),
              numpy_helper.from_array(np.array([1], np.int64), "axes")]
    conv = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Slice", ["y", "starts", "ends", "axes"], ["s"], name="slice")]
    fp32 = helper.make_graph(conv + [helper.make_node("Add", ["s", "k"], ["out"], name="add")], "g", [x], [out],
                             common + [numpy_helper.from_array(np.full((1, 2, 8, 8), 0.15, np.float32), "k")])
    qdq = helper.make_graph(conv + [
        helper.make_node("QuantizeLinear", ["s", "s_scale", "s_zp"], ["s_q"], name="s_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["s_q", "s_scale", "s_zp"], ["s_dq"], name="s_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["k_q", "k_scale", "k_zp"], ["k"], name="k_DequantizeLinear"),
        helper.make_node("Add", ["s_dq", "k"], ["out"], name="add")], "g", [x], [out], common + [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "s_zp"),
        numpy_helper.from_array(np.full((1, 2, 8, 8), 3, np.int8), "k_q"),
        numpy_helper.from_array(np.array(0.05, np.float32), "k_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "k_zp")])
    paths = []
    for name, graph in (("fp32", fp32), ("qdq", qdq)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        paths.append(tmp_path / f"conv_slice_{name}.onnx")
        onnx.save(model, paths[-1])
    return paths


def test_a_value_renamed_by_qdq_propagation_keeps_its_kernel_and_its_row(tmp_path):
    """A new user's Magika recipe: the pinned Conv was reported 'ran int8' because ONNX Runtime's QDQ
    propagation renamed its output NAME_pre_q, so the Conv and the INT8 Slice after it became one row
    labelled by the Slice. The Conv is its own row, its float kernel named; the Slice runs on INT8."""
    fp32, qdq = _conv_slice(tmp_path)
    session = layerdiff.prepare(fp32, seed=3, reference_provider="cpu")
    cand = session.candidate(str(qdq))
    view = cand.deployment()
    assert "y_pre_q" in {o for n in view.graph.node for o in n.output}  # the renaming this is about
    report = session.compare(cand)
    conv = report.layer("conv")
    assert conv.onnx_nodes == ("conv",) and conv.kernels == ("Conv",) and conv.precision == "fp32"
    assert conv.outputs[0].paired and conv.outputs[0].view == ""
    assert report.layer("slice").precision == "int8"
    assert report.capture.exposed_vs_plain_max_abs == 0.0
    # the value read is the Conv's output as ONNX Runtime computed it (y_pre_q): the FP32 Conv, which
    # onnx.reference computes here on its own
    from onnx.reference import ReferenceEvaluator
    from onnx.utils import Extractor

    only_conv = Extractor(onnx.shape_inference.infer_shapes(onnx.load(fp32))).extract_model(["x"], ["y"])
    feed = session.samples.feeds[0]
    with view.open(["y"]) as source:
        got = source.infer(feed)["y"]
    np.testing.assert_allclose(got, ReferenceEvaluator(only_conv).run(None, feed)[0], rtol=1e-4, atol=1e-5)


def test_an_fp16_model_run_in_fp32_by_the_cpu_is_read_layer_by_layer(tmp_path):
    """A new user's FP16 model file compared as CANDIDATE.onnx: 2 of 112 tensors were compared, the rest
    'fused away', because ONNX Runtime's CPU provider (no FP16 kernels for them) holds each FP16 tensor
    only as its FP32 copy, InsertedPrecisionFreeCast_NAME. That copy is the value the deployed session
    has: each layer is its own row, labelled with the FP32 kernel that ran it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = convert_float_to_float16(onnx.load(FIXTURES / "cnn.onnx"), keep_io_types=True)
    fp16.ir_version = 8
    path = tmp_path / "cnn16.onnx"
    onnx.save(fp16, path)
    session = layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu",
                                optimization="basic")
    cand = session.candidate(str(path))
    view = cand.deployment()
    upcast = [o for n in view.graph.node for o in n.output if o.startswith("InsertedPrecisionFreeCast_")]
    if not upcast:
        pytest.skip("this CPU's ONNX Runtime has FP16 kernels for these layers")
    report = session.compare(cand)
    # only the tensors a BatchNormalization folded into its Conv are missing (4 of 18)
    assert report.counts.fused_away == 4 and report.counts.compared == 14
    relu1 = report.layer("relu1")
    assert relu1.onnx_nodes == ("relu1",) and relu1.precision == "fp32" and relu1.outputs[0].paired
    assert report.capture.exposed_vs_plain_max_abs == 0.0
    # the value read is the deployed session's own: a plain session of the FP16 model at the same level
    # gives the same final output, and relu1 is within FP16 weight rounding of the FP32 model's
    assert relu1.cosine > 0.9999


def _view(model: onnx.ModelProto, level: str):
    from layerdiff.backends.kernels import OrtKernels

    model = onnx.shape_inference.infer_shapes(model)
    return OrtKernels(model, model.SerializeToString(), None, level=level)


def test_a_value_computed_from_a_propagated_rounding_is_not_read_as_the_candidates():
    """At level basic ONNX Runtime moves a QuantizeLinear up across two layout ops: Reshape then reads A
    rounded to INT8 (A_post_dq) and writes B_pre_q, which is not the candidate's B = Reshape(A). Read as
    B, the INT8 rounding was charged to the Reshape (review of this session's change)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.normal(size=(4, 4, 1, 1)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 64], np.int64), "shp"),
             numpy_helper.from_array(np.array([0], np.int64), "st"), numpy_helper.from_array(np.array([32], np.int64), "en"),
             numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.array(0.05, np.float32), "sc"), numpy_helper.from_array(np.array(0, np.int8), "zp")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["A"], name="conv"),
             helper.make_node("Reshape", ["A", "shp"], ["B"], name="reshape"),
             helper.make_node("Slice", ["B", "st", "en", "ax"], ["C"], name="slice"),
             helper.make_node("QuantizeLinear", ["C", "sc", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 4, 4])],
                                                [helper.make_tensor_value_info("y", T.FLOAT, None)], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    view = _view(model, "basic")
    kernel_ops = {n.name: n.input for n in view.graph.node}
    if not any(i.endswith("_post_dq") for i in kernel_ops.get("reshape", ())):
        pytest.skip("this ONNX Runtime did not propagate the QuantizeLinear across the Reshape")
    feed = {"x": rng.normal(size=(1, 4, 4, 4)).astype(np.float32)}
    wanted = [t for t in ("A", "B") if view.available(t)]
    assert "A" in wanted  # the Conv's own output, renamed A_pre_q: the same value
    with view.open(wanted) as source:
        got = source.infer(feed)
    w = onnx.numpy_helper.to_array(inits[0]).astype(np.float64)[:, :, 0, 0]  # a 1x1 Conv, in float64
    a = np.einsum("oi,nihw->nohw", w, feed["x"].astype(np.float64))
    np.testing.assert_allclose(got["A"], a, rtol=1e-5, atol=1e-6)
    if "B" in got:  # whatever is read as B is Reshape(A), not Reshape of A rounded
        np.testing.assert_allclose(got["B"], a.reshape(1, 64), rtol=1e-5, atol=1e-6)


def test_the_models_own_layout_node_writing_an_fp32_copy_is_its_kernel():
    """FP16 Conv -> Reshape -> Softmax at level basic: Reshape writes InsertedPrecisionFreeCast_B, and
    its kernel is the Reshape, not the Conv behind it (review of this session's change)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4, 1, 1)).astype(np.float16), "w")
    shp = numpy_helper.from_array(np.array([1, 64], np.int64), "shp")
    nodes = [helper.make_node("Conv", ["x", "w"], ["A"], name="conv"),
             helper.make_node("Reshape", ["A", "shp"], ["B"], name="reshape"),
             helper.make_node("Softmax", ["B"], ["C"], name="sm", axis=1),
             helper.make_node("Sigmoid", ["C"], ["y"], name="sig")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT16, [1, 4, 4, 4])],
                                                [helper.make_tensor_value_info("y", T.FLOAT16, None)], [w, shp]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    view = _view(model, "basic")
    if "InsertedPrecisionFreeCast_B" not in {o for n in view.graph.node for o in n.output}:
        pytest.skip("this CPU's ONNX Runtime has FP16 kernels for these ops")
    assert view.available("B") and view.kernel("B").op == "Reshape"
    assert view.kernel("A").op == "Conv"
