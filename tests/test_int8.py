"""INT8 QDQ candidates: quantized once, each plan derived by graph edits; placement as TensorRT takes it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from layerdiff.backends.calibrate import activations, calibrate
from layerdiff.backends.int8 import QDQ, TRT_QDQ_OPS, Int8Quantizer, fold_weights
from layerdiff.graph import load_model
from layerdiff.inputs import load_samples
from tests.conftest import FIXTURES, MODELS


def _quantizer(name="cnn.onnx", inputs="cnn_inputs", method="minmax", budget=None, placement="ort-all"):
    """(The mechanism's tests run on ort-all, the placement of every op type TensorRT can quantize; the
    trt placement's own rules are tested in test_placement.py.)"""
    model = load_model(FIXTURES / name)
    return Int8Quantizer(model, load_samples(FIXTURES / inputs, model.inputs, {}), method, budget, placement=placement)


def _semantic_run(model: onnx.ModelProto, feeds) -> list[list[np.ndarray]]:
    """The model's own arithmetic: ONNX Runtime with graph optimizations off (no fusion can differ)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


def _quantizer_reference(q: Int8Quantizer, pins: set[str]) -> onnx.ModelProto:
    """What onnxruntime.quantization builds for the plan, independently of layerdiff's graph edits: the
    pinned nodes excluded, a Q/DQ pair per reader, and every node that is not a quantized op (or is
    pinned) reading the FP32 tensor instead of a Q/DQ pair."""
    ref = q.quantize(pins, dedicated=True)
    producer = {o: n for n in ref.graph.node for o in n.output}
    for node in ref.graph.node:
        if node.op_type in QDQ or (node.op_type in TRT_QDQ_OPS and node.name not in pins):
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0]) is not None \
                    and producer[dq.input[0]].op_type == "QuantizeLinear":
                node.input[i] = producer[dq.input[0]].input[0]
    return ref


@pytest.mark.parametrize("name,inputs", [("cnn.onnx", "cnn_inputs"), ("dynamic_batch.onnx", None)])
def test_derived_plans_equal_the_quantizers_own_model(name, inputs):
    if inputs is None:
        model = load_model(FIXTURES / name)
        q = Int8Quantizer(model, load_samples(None, model.inputs, {"images": (2, 3, 16, 16)}, 3), placement="ort-all")
    else:
        q = _quantizer(name, inputs)
    names = sorted(q.quantized)
    assert names
    rng = np.random.default_rng(0)
    for k in sorted({0, 1, 2, len(names) // 2, len(names)}):
        pins = set(rng.choice(names, k, replace=False)) if k else set()
        derived, reference = q.derive(pins), _quantizer_reference(q, pins)
        for a, b in zip(_semantic_run(derived, q.calib.feeds), _semantic_run(reference, q.calib.feeds), strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
        pinned_weights = {i for n in derived.graph.node if n.name in pins for i in n.input}
        assert not any(t.endswith("_quantized") for t in pinned_weights)  # FP32 weights restored


def test_quantizer_runs_once_per_session(monkeypatch):
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    q = _quantizer()
    first = q.derive({"conv2"})

    def again(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(QDQQuantizer, "quantize_model", again)
    second = q.derive({"conv2", "fc"})
    assert {t.name for t in first.graph.initializer} != {t.name for t in second.graph.initializer}


def test_placement_quantizes_inputs_never_outputs():
    q = _quantizer()
    producer = {o: n for n in q.base.graph.node for o in n.output}
    for node in q.base.graph.node:
        if node.op_type == "QuantizeLinear":
            src = producer.get(node.input[0])
            # what gets quantized is a graph input or the output of a layer that is not a quantized op
            assert src is None or src.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"), node.name
    assert q.quantized == {"conv1", "conv2", "conv3", "conv4", "residual_add", "gap", "fc"}
    readers = {n.name: list(n.input) for n in q.base.graph.node}
    assert readers["conv2_bn"][0] == "conv2_out" and readers["relu3"][0] == "residual"  # FP32 layers read FP32


def test_constant_node_weights_are_quantized_per_channel(tmp_path):
    """Weights held in Constant nodes (as PaddlePaddle exports them) are made initializers first, so they get
    per-channel scales like any weight (the report found them quantized per tensor at run time)."""
    model = onnx.load(FIXTURES / "cnn.onnx")
    w = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["conv2.weight"], name="w_const", value=w))
    onnx.save(model, tmp_path / "const.onnx")
    loaded = load_model(tmp_path / "const.onnx")
    assert "w_const" in {lay.name for lay in loaded.layers}
    assert "conv2.weight" in {t.name for t in fold_weights(loaded).graph.initializer}
    q = Int8Quantizer(loaded, load_samples(FIXTURES / "cnn_inputs", loaded.inputs, {}))
    scale = next(t for t in q.base.graph.initializer if t.name == "conv2.weight_scale")
    assert numpy_helper.to_array(scale).shape == (8,)  # one scale per output channel


def test_calibration_methods_and_budget():
    q = _quantizer()
    mm = calibrate(q.model, q.calib, "minmax")
    ent = calibrate(q.model, q.calib, "entropy")
    pct = calibrate(q.model, q.calib, "percentile")
    assert set(mm.keys()) == set(activations(q.model)) == set(ent.keys())
    relu = "relu2"
    values = [_exposed(q.model, relu, f) for f in q.calib.feeds]
    # minmax: the largest value seen (up to FP32 rounding: the calibration run fuses nothing)
    assert float(mm[relu].range_value[1]) == pytest.approx(max(float(v.max()) for v in values), rel=1e-6)
    top = {name: {t: float(d[t].range_value[1]) for t in d.keys()} for name, d in (("mm", mm), ("ent", ent),
                                                                                   ("pct", pct))}
    assert top["ent"] == top["mm"]  # onnxruntime's entropy defaults: a single candidate threshold, the full range
    assert all(top["pct"][t] <= top["mm"][t] for t in top["mm"]) and top["pct"] != top["mm"]
    chunked = calibrate(q.model, q.calib, "entropy", budget=20_000)  # several capture chunks
    assert all(float(chunked[t].range_value[1]) == float(ent[t].range_value[1]) for t in ent.keys())


def _exposed(model, tensor, feed):
    from layerdiff.backends.ort import make_session
    from layerdiff.rewrite import expose_tensors

    return make_session(expose_tensors(model, [tensor])).run([tensor], feed)[tensor]


@pytest.mark.skipif(not (MODELS / "ppocr_cls" / "model.onnx").is_file(),
                    reason="real models not fetched: python scripts/get_models.py")
def test_real_model_derived_plans_equal_the_quantizers():
    """PP-OCR's direction classifier (opset 11: ONNX Runtime's own Q/DQ ops carry the per-channel scales)."""
    model = load_model(MODELS / "ppocr_cls" / "model.onnx")
    q = Int8Quantizer(model, load_samples(MODELS / "ppocr_cls" / "calib", model.inputs, {}), placement="ort-all")
    assert q.contrib_qdq and len(q.quantized) > 100
    names = sorted(q.quantized)
    pins = set(np.random.default_rng(1).choice(names, 40, replace=False))
    for a, b in zip(_semantic_run(q.derive(pins), q.calib.feeds),
                    _semantic_run(_quantizer_reference(q, pins), q.calib.feeds), strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_a_constant_read_only_by_a_subgraph_body_survives_folding(tmp_path):
    """The trial's finding: folding Constant nodes into initializers dropped one that only an If branch
    reads (from the outer scope), so the quantized model did not load. The saved candidate must load and
    give what the plain run of it gives, and its If must still read k's value."""
    from onnx import TensorProto, helper

    import layerdiff

    k = helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(np.float32([0.5, -1, 2, 3])))
    then = helper.make_graph([helper.make_node("Mul", ["h", "k"], ["t"], name="mul")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Add", ["h", "k"], ["e"], name="add")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [k, helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
         helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w, numpy_helper.from_array(np.float32(0), "zero")])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)} for i in range(4)]
    for i, f in enumerate(feeds):
        np.savez(tmp_path / f"s{i}.npz", **f)
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / f"s{i}.npz").rename(tmp_path / "in" / f"s{i}.npz")
    session = layerdiff.prepare(path, inputs=tmp_path / "in", reference_provider="cpu", int8_placement="ort-all")
    cand = session.candidate("ort-int8")
    assert cand.details["quantized_nodes"] == 1  # the MatMul
    report = session.compare(cand)
    plain = _semantic_run(cand.model, session.samples.feeds)
    for feed, (y,), metrics in zip(session.samples.feeds, plain, session.evaluate(cand).per_sample, strict=True):
        exact = _semantic_run(onnx.load(path), [feed])[0][0]
        assert metrics["y"].max_abs == pytest.approx(float(np.abs(y.astype(np.float64) - exact).max()), abs=1e-6)
    assert report.output_metrics("y").cosine > 0.99


def test_a_graph_output_that_quantized_nodes_read_stays_fp32():
    """onnxruntime's quantizer makes such an output its DequantizeLinear (the trial's finding on a model
    whose output y1 also feeds a Gemm): the output is given back its FP32 value, the Gemm reads it through
    Q/DQ, and the non-quantized readers (ArgMax, Greater) read FP32, as TensorRT's placement has it."""
    from onnx import TensorProto, helper

    from layerdiff.graph import from_proto
    from layerdiff.inputs import Samples

    rng = np.random.default_rng(1)
    wm = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, "wm")
    wg = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32) * 0.3, "wg")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "wm"], ["mm"], name="mm"), helper.make_node("Relu", ["mm"], ["y1"], name="relu"),
         helper.make_node("ArgMax", ["y1"], ["idx"], name="argmax", axis=1, keepdims=0),
         helper.make_node("Gemm", ["y1", "wg"], ["y2"], name="gemm")],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 16])], [wm, wg])
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    feeds = tuple({"a": rng.standard_normal((2, 16)).astype(np.float32)} for _ in range(3))
    q = Int8Quantizer(model, Samples(feeds, "test"), placement="ort-all")
    base = q.base
    producer = {o: n for n in base.graph.node for o in n.output}
    assert producer["y1"].op_type == "Relu"
    assert producer[next(n for n in base.graph.node if n.name == "argmax").input[0]].op_type == "Relu"
    gemm_input = producer[next(n for n in base.graph.node if n.name == "gemm").input[0]]
    assert gemm_input.op_type == "DequantizeLinear" and producer[gemm_input.input[0]].input[0] == "y1"
    for feed, (y2, idx, y1) in zip(feeds, _semantic_run(base, feeds), strict=True):
        mm = _semantic_run(model.proto, [feed])[0]
        assert np.abs(y1 - mm[2]).max() < 0.05 * np.abs(mm[2]).max()  # the INT8 MatMul's output, unrounded
        assert (idx == np.argmax(y1, axis=1)).all()
