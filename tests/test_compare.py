"""End to end: every number checked against an oracle layerdiff did not write (numpy in float64, plain
ONNX Runtime sessions of the saved candidate, onnx.reference)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import layerdiff
from layerdiff import PrecisionPlan, compare
from layerdiff.metrics import diff_metrics
from tests.conftest import FIXTURES, MODELS, cosine64, run_plain

@pytest.fixture(autouse=True)
def _every_gemm_quantized(monkeypatch):
    """These tests exercise INT8 kernels on the CNN's Gemm head, which the default `trt` placement leaves
    in float as ModelOpt does (a GEMV, N=10): they run on `ort-all`, which quantizes it
    (test_placement.py tests `trt`)."""
    monkeypatch.setattr("layerdiff.backends.placement.DEFAULT", "ort-all")


CNN = FIXTURES / "cnn.onnx"


def _layer(report, name):
    return next(lay for lay in report.layers if lay.name == name)


def _feeds(directory, name="input"):
    out = []
    for f in sorted(directory.glob("*.npz")):
        with np.load(f) as d:
            out.append({name: d[name]})
    return out


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _run_disabled(model: onnx.ModelProto, feed, names):
    """The candidate's own arithmetic, tensors exposed, ONNX Runtime's optimizations off."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feed), strict=True))


@pytest.fixture(scope="module")
def int8_cnn():
    session = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu", int8_placement="ort-all")
    cand = session.candidate("ort-int8")
    return session.compare(cand), cand, session


def test_final_output_matches_plain_run_of_saved_candidate(int8_cnn, tmp_path):
    report, cand, _ = int8_cnn
    saved = tmp_path / "cand.onnx"
    onnx.save(cand.model, saved)
    cosines, max_abs = [], []
    for feed in _feeds(FIXTURES / "cnn_inputs"):
        ref = run_plain(CNN, feed)["probs"]
        out = run_plain(saved, feed)["probs"]
        cosines.append(cosine64(ref, out))
        max_abs.append(np.abs(ref.astype(np.float64) - out).max())
    out = report.output_metrics("probs")
    assert out.cosine == pytest.approx(min(cosines), abs=1e-9)
    assert out.max_abs == pytest.approx(max(max_abs), rel=1e-6)
    assert out.cosine < 1.0  # int8 really changed something


def test_fp32_layers_are_not_charged_with_rounding_they_do_not_do(int8_cnn):
    """The report's finding: a Q/DQ pair's rounding was charged to the FP32 BatchNormalization reading it.
    Layers that compute in FP32 on FP32 inputs introduce no error of their own."""
    report, _, _ = int8_cnn
    plain_fp32 = [lay for lay in report.layers if lay.kind == "layer" and lay.precision == "fp32"
                  and not lay.dequantized_inputs]
    assert {"conv1_bn", "relu1", "conv2_bn", "relu2", "conv3_bn", "softmax"} <= {lay.name for lay in plain_fp32}
    for lay in plain_fp32:
        for o in lay.outputs:
            assert o.local.worst.max_abs <= 1e-6 * max(1.0, o.accumulated.worst.ref_absmax), (lay.name, o.tensor)
    assert all(lay.kind == "conversion" or lay.precision != "fp32" or lay.dequantized_inputs
               for lay in layerdiff.rank_layers(report)[:5])


def test_a_conversion_row_is_the_rounding_of_its_qdq_pair(int8_cnn):
    """relu1's Q/DQ pair (read by conv2 and residual_add): one row, whose local error is Q then DQ of the
    candidate's relu1, written here from the ONNX definition."""
    report, cand, session = int8_cnn
    rows = [lay for lay in report.layers if lay.kind == "conversion" and lay.converts == "relu1"]
    assert len(rows) == 1
    scale, zp = _init(cand.executed, "relu1_scale"), _init(cand.executed, "relu1_zero_point")
    worst = 0.0
    for feed in session.samples.feeds:
        relu1 = _run_disabled(cand.executed, feed, ["relu1"])["relu1"].astype(np.float64)
        rounded = (np.clip(np.rint(relu1 / scale) + zp, -128, 127) - zp) * scale
        worst = max(worst, float(np.abs(rounded - relu1).max()))
    assert rows[0].outputs[0].local.worst.max_abs == pytest.approx(worst, rel=1e-5)
    assert rows[0].precision == "int8" and rows[0].outputs[0].candidate_tensor == "relu1_DequantizeLinear_Output"


def test_local_error_of_an_int8_gemm_is_computed_on_the_values_it_reads(int8_cnn):
    """fc (ONNX Runtime's QGemm) recomputed in float64 numpy with the FP32 weights on the dequantized
    input it really reads, against its own output."""
    report, cand, session = int8_cnn
    model = onnx.load(CNN)
    w, b = _init(model, "fc.weight").astype(np.float64), _init(model, "fc.bias").astype(np.float64)
    view = cand.deployment()
    worst = 0.0
    with view.open(["flat_DequantizeLinear_Output", "logits"]) as source:
        for feed in session.samples.feeds:
            values = source.infer(feed)
            fp32 = values["flat_DequantizeLinear_Output"].astype(np.float64) @ w.T + b
            worst = max(worst, float(np.abs(values["logits"] - fp32).max()))
    fc = _layer(report, "fc")
    assert fc.outputs[0].local.worst.max_abs == pytest.approx(worst, rel=1e-4)
    assert fc.outputs[0].local.worst.max_abs > 0


def test_accumulated_error_matches_the_candidates_own_arithmetic(int8_cnn):
    """relu2 against the saved candidate run with optimizations off (its kernels here are float ones, so
    fusion changes nothing beyond FP32 rounding)."""
    report, cand, session = int8_cnn
    cosines, max_abs = [], []
    for feed in session.samples.feeds:
        ref = _run_disabled(onnx.load(CNN), feed, ["relu2"])["relu2"]
        out = _run_disabled(cand.executed, feed, ["relu2"])["relu2"]
        m = diff_metrics(ref, out)
        cosines.append(m.cosine)
        max_abs.append(m.max_abs)
    worst = _layer(report, "relu2").outputs[0].accumulated.worst
    assert worst.cosine == pytest.approx(min(cosines), abs=1e-7)
    assert worst.max_abs == pytest.approx(max(max_abs), rel=1e-4)


def test_worst_and_mean_are_over_the_samples(int8_cnn):
    report, _, session = int8_cnn
    singles = [compare(CNN, "ort-int8", inputs=f, calib=FIXTURES / "cnn_inputs", reference_provider="cpu")
               for f in sorted((FIXTURES / "cnn_inputs").glob("*.npz"))]
    agg = _layer(report, "conv3").outputs[0].accumulated
    per_sample = [_layer(r, "conv3").outputs[0].accumulated.worst for r in singles]
    assert agg.samples == 4
    assert agg.worst.cosine == pytest.approx(min(m.cosine for m in per_sample), abs=1e-9)
    assert agg.worst.max_abs == pytest.approx(max(m.max_abs for m in per_sample), rel=1e-6)
    assert agg.mean.cosine == pytest.approx(np.mean([m.cosine for m in per_sample]), abs=1e-9)
    assert agg.mean.rel_rms == pytest.approx(np.mean([m.rel_rms for m in per_sample]), rel=1e-6)


def test_candidate_identical_to_model_has_zero_error():
    report = compare(FIXTURES / "transformer.onnx", str(FIXTURES / "transformer.onnx"), seed=5,
                     reference_provider="cpu")
    for lay in report.layers:
        for o in lay.outputs:
            if o.paired:
                assert o.accumulated.worst.max_abs <= 1e-6, o.tensor
                assert o.local.worst.max_abs <= 1e-6, o.tensor
    assert report.first_divergence is None and report.counts.conversions == 0
    assert {lay.precision for lay in report.layers} == {"fp32"}
    assert report.inputs.random and report.warnings[0].startswith("no --inputs given")


def test_pinned_node_stays_fp32_and_is_audited():
    plan = PrecisionPlan.uniform("int8", pin_fp32={"conv2", "fc"})
    report = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", plan=plan, reference_provider="cpu")
    conv2, fc = _layer(report, "conv2"), _layer(report, "fc")
    assert conv2.precision == "fp32" and not conv2.dequantized_inputs and fc.kernels == ("Gemm",)
    assert _layer(report, "conv1").dequantized_inputs
    assert report.candidate.pinned_fp32 == ("conv2", "fc")
    audit = {a["layer"]: a for a in report.to_dict()["precision_audit"]}
    assert set(audit) == {"conv2", "fc"} and all(a["realised_as_requested"] is True for a in audit.values())


def test_a_request_the_backend_cannot_realise_is_flagged():
    """Softmax asked in INT8: the ONNX Runtime backend places Q/DQ on the ops TensorRT quantizes only. conv1
    asked in INT8: it reads INT8 values, but ONNX Runtime runs it as a float Conv (no Q after it to fuse a
    QLinearConv with), and the audit names the kernel that ran."""
    report = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", plan=PrecisionPlan("int8", {"softmax": "int8"}),
                     reference_provider="cpu")
    assert report.to_dict()["precision_audit"] == []  # int8 is the default: nothing was requested apart
    report = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs",
                     plan=PrecisionPlan("fp32", {"softmax": "int8", "conv1": "int8"}), reference_provider="cpu")
    audit = {a["layer"]: a for a in report.to_dict()["precision_audit"]}
    assert audit["softmax"] == {"layer": "softmax", "index": 17, "requested": "int8", "realised": "fp32",
                                "realised_as_requested": False}
    assert audit["conv1"]["realised_as_requested"] is False and _layer(report, "conv1").dequantized_inputs
    assert ("2 requested precision(s) not realised: conv1 (int8 requested, fp32 realised), softmax (int8 "
            "requested, fp32 realised)") in report.warnings
    assert _layer(report, "conv2").precision == "fp32" and not _layer(report, "conv2").dequantized_inputs


def test_fp16_overflow_is_the_first_divergence():
    report = compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", reference_provider="cpu")
    fd = report.first_divergence
    assert fd.layer == "big_matmul" and "non-finite" in fd.reason
    huge = _layer(report, "big_matmul").outputs[0]
    assert huge.accumulated.worst.exceeds_fp16 and huge.accumulated.worst.cand_nonfinite > 0
    assert report.counts.exceeds_fp16 >= 1 and _layer(report, "big_matmul").precision == "fp16"


def test_fp16_emulation_rounds_like_numpy():
    """ONNX Runtime's CPU provider has no FP16 MatMul: layerdiff emulates it, and the candidate's value is
    the FP32 product of FP16-rounded operands, rounded to FP16 (so it overflows as real FP16 would)."""
    report = compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", seed=3, reference_provider="cpu")
    big = _layer(report, "big_matmul")
    assert big.precision_emulated
    w = _init(onnx.load(FIXTURES / "fp16_overflow.onnx"), "big_w")
    x = np.random.default_rng(3).random((1, 64), dtype=np.float64).astype(np.float32)
    with np.errstate(over="ignore"):
        emulated = (x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)).astype(np.float16)
    assert big.outputs[0].accumulated.worst.cand_nonfinite == int(np.isinf(emulated).sum()) > 0


def test_fp16_transformer_candidate():
    report = compare(FIXTURES / "transformer.onnx", "ort-fp16", seed=2, reference_provider="cpu")
    assert report.output_metrics("y").cosine > 0.9999
    assert report.output_metrics("y").max_abs > 0  # FP16 rounding really happened
    assert {lay.precision for lay in report.layers if lay.kind == "layer"} == {"fp16"}
    emulated = set(report.candidate.fp16_emulated)
    assert {lay.name for lay in report.layers if lay.precision_emulated} == emulated
    assert report.capture.exposed_vs_plain_max_abs == 0.0


def test_chunked_capture_equals_single_pass():
    whole = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    # the CNN's activations are ~75 kB in all: a 20 kB budget forces several chunks
    parts = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", max_memory=20_000, reference_provider="cpu")
    assert parts.capture.chunks > 2 and whole.capture.chunks == 1
    from layerdiff.assemble import MANY_CHUNKS

    many = [w for w in parts.warnings if w.startswith("the memory budget split the capture into")]
    assert many == ([f"the memory budget split the capture into {parts.capture.chunks} chunks, each a run of every "
                     "sample: a larger --max-memory runs faster"] if parts.capture.chunks > MANY_CHUNKS else [])
    assert parts.output_metrics("probs") == whole.output_metrics("probs")
    for a, b in zip(whole.layers, parts.layers, strict=True):
        assert a.name == b.name
        for oa, ob in zip(a.outputs, b.outputs, strict=True):
            assert oa.accumulated == ob.accumulated and oa.local == ob.local  # the same kernels: the same values


def test_chunks_respect_the_budget(int8_cnn):
    from layerdiff.capture import plan_chunks, tensor_sizes
    from layerdiff.match import match_tensors
    from layerdiff.rows import plan_rows

    _, cand, session = int8_cnn
    rows = plan_rows(session.model, match_tensors(session.model, cand.executed), cand.deployment(),
                     executed=cand.executed)
    sizes = tensor_sizes(session.model, session.samples.feeds[0])
    assert sizes["conv1_out"] == 8 * 32 * 32 * 4
    total = plan_chunks(rows, sizes, None)[0].estimated_bytes
    chunks = plan_chunks(rows, sizes, total // 4)
    assert sum(len(c.rows) for c in chunks) == len(rows) and len(chunks) >= 4
    assert all(c.estimated_bytes <= total // 4 for c in chunks if len(c.rows) > 1)


def test_dynamic_batch_and_integer_tensors():
    report = compare(FIXTURES / "dynamic_batch.onnx", "ort-int8", shapes=["images:3x3x16x16"], reference_provider="cpu")
    assert report.counts.non_float_tensors == 3
    assert next(o for o in _layer(report, "conv").outputs if o.paired).shape == (3, 8, 16, 16)
    assert report.output_metrics("scores").cosine > 0.999


def test_a_chunk_without_float_tensors(tmp_path):
    """The report's crash: a chunk holding only the shape subgraph asked ONNX Runtime for no outputs, which
    it reads as all of them."""
    report = compare(FIXTURES / "dynamic_batch.onnx", "ort-int8", shapes=["images:2x3x16x16"], max_memory=40_000,
                     reference_provider="cpu")
    assert report.capture.chunks > 1 and report.output_metrics("scores").cosine > 0.999


def test_if_layer_local_error_is_its_branch_on_the_candidates_input():
    """The If layer (then: h * 2) recomputed in float64 numpy on the candidate's h, against the candidate's
    branch output."""
    session = layerdiff.prepare(FIXTURES / "if_model.onnx", seed=4, reference_provider="cpu")
    cand = session.candidate("ort-fp16")
    report = session.compare(cand)
    if_row = next(lay for lay in report.layers if lay.op == "If")
    x = session.samples.feeds[0]["x"]
    assert x.sum() > 0  # the then branch runs
    with cand.deployment().open(["h", "branch"]) as source:
        values = source.infer(session.samples.feeds[0])
    want = values["h"].astype(np.float64) * 2.0
    local = if_row.outputs[0].local.worst
    assert local.max_abs == pytest.approx(float(np.abs(values["branch"].astype(np.float64) - want).max()), abs=1e-7)
    assert if_row.outputs[0].accumulated.worst.cosine > 0.999


def test_a_branch_reading_two_outer_tensors_is_fed_each_its_own_value(tmp_path):
    """The trial's finding (silero-vad): an If whose branch reads two tensors of the outer scope was fed
    one value for both in its local run. With a candidate equal to the model (zero injected error) the
    If row's local error is zero, and its branch's Sub(a, b) is far from zero."""
    from onnx import TensorProto, helper

    then = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["t"], name="sub")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Add", ["a", "b"], ["e"], name="add")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Sigmoid", ["x"], ["b"], name="sig"),
         helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
         helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.float32(-100), "zero")])
    path = tmp_path / "if2.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    session = layerdiff.prepare(path, reference_provider="cpu")
    report = session.compare(session.realise(PrecisionPlan.uniform("fp16"), layerdiff.FakeBackend(session.model,
                                                                                               default_error=0.0)))
    row = _layer(report, "if")
    assert row.outputs[0].local is not None and row.outputs[0].local.worst.max_abs == 0
    assert np.abs(run_plain(path, session.samples.feeds[0])["y"]).max() > 0.1


def test_calibration_methods_give_different_ranges():
    a = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", calibration="minmax", reference_provider="cpu")
    b = compare(CNN, "ort-int8", inputs=FIXTURES / "cnn_inputs", calibration="percentile", reference_provider="cpu")
    assert a.candidate.get("calibration")["method"] == "minmax"
    assert a.output_metrics("probs") != b.output_metrics("probs")


def test_report_json_contract(int8_cnn, tmp_path):
    report, _, _ = int8_cnn
    layerdiff.write_report(report, tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema"] == "layerdiff.report/1"
    assert set(d["model"]) >= {"path", "sha256", "layers", "opset"} and len(d["model"]["sha256"]) == 64
    assert set(d["candidate"]) >= {"spec", "kind", "runtime", "provider", "calibration", "pinned_fp32"}
    assert d["candidate"]["ort_optimization"] == "all"
    assert set(d["capture"]) >= {"mode", "matches_plain_engine", "chunks", "max_memory", "exposed_vs_plain_max_abs",
                                 "interrupted", "samples_done"}
    assert set(d["counts"]) >= {"layers", "rows", "float_tensors", "compared", "unpaired", "fused_away",
                                "non_float_tensors", "exceeds_fp16", "local_errors"}
    layer = d["layers"][0]
    assert set(layer) >= {"index", "name", "op", "precision", "realised_precision", "requested_precision",
                          "onnx_nodes", "engine_layers", "diverges", "outputs", "kind", "kernels"}
    out = layer["outputs"][0]
    assert set(out) >= {"tensor", "shape", "paired", "candidate_tensor", "cosine", "max_abs", "mean_abs", "rel_rms",
                        "sqnr_db", "nonfinite", "ref_absmax", "exceeds_fp16", "mean", "samples", "local"}
    assert set(out["local"]) >= {"cosine", "max_abs", "mean_abs", "rel_rms", "sqnr_db", "mean"}
    assert set(d["outputs"][0]) >= {"tensor", "paired", "cosine", "max_abs", "nonfinite"}
    assert "first_divergence" in d and "precision_audit" in d and d["thresholds"]["divergence_cosine"] == 0.99
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_min_cosine_is_recorded_with_its_outcome():
    report = compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", min_cosine=0.99, reference_provider="cpu")
    assert report.thresholds.min_cosine == 0.99
    assert report.tolerance.passed is False and report.tolerance.failed == ("out",)
    d = report.to_dict()
    assert d["tolerance"] == {"min_cosine": 0.99, "passed": False, "failed": ["out"], "outputs": []}


def test_model_with_external_data(tmp_path):
    model = onnx.load(CNN)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=64)
    assert (tmp_path / "ext.data").stat().st_size > 1000
    a = compare(tmp_path / "ext.onnx", "ort-fp16", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    b = compare(CNN, "ort-fp16", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    assert a.output_metrics("probs") == b.output_metrics("probs")


def _tiny(nodes, inputs, outputs, inits=(), name="tiny"):
    m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_integer_outputs_are_compared_by_match_rate(tmp_path):
    """An ArgMax output: its cosine would mean nothing; the fraction of equal class indices does."""
    w = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
    m = _tiny([helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
               helper.make_node("ArgMax", ["logits"], ["label"], name="argmax", axis=1, keepdims=0)],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16])],
              [helper.make_tensor_value_info("label", TensorProto.INT64, [64]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [64, 10])],
              [onnx.numpy_helper.from_array(w, "w")])
    onnx.save(m, tmp_path / "cls.onnx")
    session = layerdiff.prepare(tmp_path / "cls.onnx", seed=2, reference_provider="cpu")
    cand = session.candidate("ort-int8")
    report = session.compare(cand)
    label = report.output("label")
    assert label.accumulated is None and label.paired
    ref = run_plain(tmp_path / "cls.onnx", session.samples.feeds[0])["label"]
    out = run_plain(cand.model.SerializeToString(), session.samples.feeds[0])["label"]
    assert label.match_rate == pytest.approx(float(np.mean(ref == out)))
    assert report.to_dict()["outputs"][0]["kind"] == "integer"


def test_a_candidate_whose_output_was_renamed(tmp_path):
    """The report's crash in the final-output pairing: the candidate has no graph output of that name."""
    model = onnx.load(CNN)
    model.graph.output[0].name = "probabilities"
    model.graph.node[-1].output[0] = "probabilities"
    onnx.save(model, tmp_path / "renamed.onnx")
    report = compare(CNN, str(tmp_path / "renamed.onnx"), inputs=FIXTURES / "cnn_inputs", reference_provider="cpu",
                     min_cosine=0.999)
    assert report.output_metrics("probs").max_abs <= 1e-6  # the renamed output, paired by structure
    assert report.tolerance.passed and report.capture.exposed_vs_plain_max_abs == 0.0
    assert _layer(report, "softmax").outputs[0].candidate_tensor == "probabilities"
    assert _layer(report, "softmax").outputs[0].accumulated.worst.max_abs <= 1e-6


def test_constants_are_counted_apart_and_their_rounding_is_their_readers(tmp_path):
    """A weight held by a Constant node (as PaddlePaddle exports BatchNorm parameters) that FP16 cannot hold:
    its error belongs to the layer that reads it; Constants are not layers, and in an INT8 run their FP16
    range does not matter."""
    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=onnx.numpy_helper.from_array(
                 np.array([100000.0, 60000.0], np.float32))),
             helper.make_node("Mul", ["x", "c"], ["y"], name="scale"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    m = _tiny(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 2])])
    onnx.save(m, tmp_path / "c.onnx")
    np.savez(tmp_path / "x.npz", x=np.full((4, 2), 1e-3, np.float32))
    report = compare(tmp_path / "c.onnx", "ort-fp16", inputs=tmp_path / "x.npz", reference_provider="cpu")
    scale = _layer(report, "scale").outputs[0].local.worst
    assert scale.max_abs == pytest.approx((100000.0 - 65504.0) * 1e-3, rel=1e-2)  # the clamped weight, seen by Mul
    assert [lay.name for lay in layerdiff.rank_layers(report)][0] == "scale"
    const = _layer(report, "const")
    assert const.kind == "constant" and not const.diverges and "const" not in [lay.name for lay in
                                                                               layerdiff.rank_layers(report)]
    assert report.counts.layers == 2 and report.counts.constants == 1
    assert report.first_divergence.layer == "scale"
    int8 = compare(tmp_path / "c.onnx", "ort-int8", inputs=tmp_path / "x.npz", reference_provider="cpu")
    assert not any("FP16 range" in w for w in int8.warnings)


@pytest.mark.skipif(not (MODELS / "ppocr_cls" / "model.onnx").is_file(),
                    reason="real models not fetched: python scripts/get_models.py")
def test_real_model_final_output_matches_plain_run_of_saved_candidate(tmp_path):
    """PP-OCR's direction classifier (a real trained model from the rapidocr-onnxruntime wheel) on crops
    of skimage's text photos."""
    d = MODELS / "ppocr_cls"
    session = layerdiff.prepare(d / "model.onnx", inputs=d / "inputs", calib=d / "calib", reference_provider="cpu")
    cand = session.candidate("ort-int8")
    report = session.compare(cand)
    saved = tmp_path / "int8.onnx"
    onnx.save(cand.model, saved)
    name = report.outputs[0].tensor
    cosines = [cosine64(run_plain(d / "model.onnx", feed)[name], run_plain(saved, feed)[name])
               for feed in session.samples.feeds]
    # (the report's FP32 reference runs with ONNX Runtime's optimizations off, run_plain with them on: the
    # FP32 MatMul+Add fused into one Gemm rounds apart by ~1e-8 in cosine)
    assert report.output_metrics(name).cosine == pytest.approx(min(cosines), abs=1e-7)
    assert report.counts.compared + report.counts.fused_away == report.counts.float_tensors
    fp32 = [lay for lay in report.layers if lay.kind == "layer" and lay.precision == "fp32" and not lay.dequantized_inputs
            and lay.op in ("BatchNormalization", "Relu", "HardSigmoid")]
    assert fp32 and all(lay.local_rel_rms is not None and lay.local_rel_rms < 1e-5 for lay in fp32)


def test_fp16_emulation_of_a_node_reading_one_tensor_twice(tmp_path):
    """x * x (variance, GELU, a square): one widening cast for both slots (two casts of one name made a model
    ONNX Runtime refused)."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["y"], name="mean", keepdims=1)]
    m = _tiny(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(m, tmp_path / "sq.onnx")
    report = compare(tmp_path / "sq.onnx", "ort-fp16", seed=1, reference_provider="cpu")
    square = _layer(report, "square")
    assert square.precision == "fp16" and square.outputs[0].paired
    x = layerdiff.prepare(tmp_path / "sq.onnx", seed=1).samples.feeds[0]["x"]
    want = (x.astype(np.float16).astype(np.float32) ** 2).astype(np.float16)
    got = layerdiff.prepare(tmp_path / "sq.onnx", seed=1, reference_provider="cpu")
    cand = got.candidate("ort-fp16")
    with cand.deployment().open([square.outputs[0].candidate_tensor]) as source:
        value = source.infer(got.samples.feeds[0])[square.outputs[0].candidate_tensor]
    np.testing.assert_array_equal(value, want)


def test_an_fp16_candidate_with_fp16_inputs(tmp_path):
    """onnxconverter's default keeps no FP32 inputs: the samples are cast to the candidate's input type (as a
    user feeding it would), and the report says so, and that ONNX Runtime's CPU provider ran it in FP32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(CNN), keep_io_types=False), tmp_path / "fp16.onnx")
    report = compare(CNN, str(tmp_path / "fp16.onnx"), inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    assert report.output_metrics("probs").cosine > 0.9999
    assert ("the candidate takes input 'input' as float16: the samples (float32) are cast to it, and that rounding "
            "is in every row's error") in report.warnings
    assert any("ran in FP32 on ONNX Runtime's CPU provider" in w for w in report.warnings)


def test_fp16_of_a_model_whose_input_is_also_an_output(tmp_path):
    """The trial's finding: onnxruntime's FP16 converter cast such an input twice under one name."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "through.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    session = layerdiff.prepare(path, reference_provider="cpu")
    cand = session.candidate("ort-fp16")
    assert [o.name for o in cand.model.graph.output] == ["y", "x"]
    assert cand.model.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
    report = session.compare(cand)
    assert report.output_metrics("x").max_abs == 0
    x = session.samples.feeds[0]["x"]
    want = float(np.abs(np.maximum(x.astype(np.float16), 0).astype(np.float64) - np.maximum(x, 0)).max())
    assert report.output_metrics("y").max_abs == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("capture_mode", ["kernels", "mark-outputs"])
def test_a_gather_from_an_fp16_table_is_labelled_fp16(tmp_path, capture_mode):
    """The trial's finding: a Gather reading an FP16 embedding table by int64 ids was labelled fp32 (its
    only non-weight input is integer), while its local error was the table's FP16 rounding."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    emb = onnx.numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "emb")
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gather", ["emb", "ids"], ["g"], name="gather"),
                               helper.make_node("MatMul", ["g", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])], [emb, w])
    path = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    np.savez(tmp_path / "ids.npz", ids=np.array([[0, 3, 7, 15, 2]], np.int64))
    report = compare(path, "ort-fp16", inputs=tmp_path / "ids.npz", reference_provider="cpu",
                     capture_mode=capture_mode)
    gather = report.layer("gather")
    assert gather.precision == "fp16"
    table = onnx.numpy_helper.to_array(emb)[[0, 3, 7, 15, 2]]
    want = float(np.abs(table.astype(np.float16).astype(np.float64) - table).max())
    assert gather.outputs[0].local.worst.max_abs == pytest.approx(want, abs=1e-9)


def test_integer_kernels_that_miss_their_qdq_arithmetic_are_named(tmp_path):
    """A MatMul whose INT8 weights are all at full range (+-127): on x86 CPUs without VNNI, ONNX Runtime's
    u8s8 kernel adds pairs of products in 16 bits and saturates, so the deployed output differs from the
    Q/DQ model's own arithmetic (computed here by plain sessions with and without the fusions). The report
    warns exactly when the two differ, with those numbers; on a VNNI CPU they agree and it says nothing."""
    from onnx import TensorProto, helper

    from layerdiff.backends.ort import cpu_lacks_vnni

    rng = np.random.default_rng(0)
    w = np.sign(rng.standard_normal((64, 32))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
                              [onnx.numpy_helper.from_array(w, "w")])
    path = tmp_path / "sat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    (tmp_path / "in").mkdir()
    for i in range(3):
        np.savez(tmp_path / "in" / f"{i}.npz", x=rng.uniform(-1, 1, (8, 64)).astype(np.float32))
    session = layerdiff.prepare(path, inputs=tmp_path / "in", reference_provider="cpu")
    cand = session.candidate("ort-int8")
    report = session.compare(cand)
    saved = tmp_path / "q.onnx"
    onnx.save(cand.model, saved)

    def worst(level):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sess = ort.InferenceSession(str(saved), so, providers=["CPUExecutionProvider"])
        return min(cosine64(run_plain(path, f)["y"], sess.run(None, f)[0]) for f in session.samples.feeds)

    arith, deployed = worst(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC), worst(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    notes = [w for w in report.warnings if w.startswith("ONNX Runtime's fused INT8 kernels")]
    if 1 - deployed > max(2 * (1 - arith), 1e-4):
        assert len(notes) == 1 and f"worst cosine {deployed:.6f} as deployed, {arith:.6f} with Q/DQ unfused" in notes[0]
        assert ("this CPU has no VNNI" in notes[0]) == cpu_lacks_vnni()
    else:
        assert notes == []
    assert report.output_metrics("y").cosine == pytest.approx(deployed, abs=1e-6)
    basic = layerdiff.prepare(path, inputs=tmp_path / "in", reference_provider="cpu", optimization="basic")
    unfused = basic.compare(basic.candidate("ort-int8"))
    assert unfused.output_metrics("y").cosine == pytest.approx(arith, abs=1e-6)
    assert not [w for w in unfused.warnings if w.startswith("ONNX Runtime's fused INT8 kernels")]


def test_a_one_element_output_is_judged_by_its_relative_error(tmp_path):
    """The trial's finding (silero-vad's speech probability): the cosine of one number is 1 whenever the
    signs agree, so --min-cosine passed an output 30% off. It is judged by its relative error instead."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["p"], name="mean", keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [])])
    path = tmp_path / "one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    np.savez(tmp_path / "x.npz", x=np.linspace(1, 2, 64, dtype=np.float32))
    session = layerdiff.prepare(path, inputs=tmp_path / "x.npz", reference_provider="cpu")
    for error, passes in ((0.3, False), (1e-5, True)):
        cand = session.realise(PrecisionPlan("fp16"), layerdiff.FakeBackend(session.model, default_error=error))
        report = session.compare(cand, min_cosine=0.9999)
        out = report.output_metrics("p")
        assert report.tolerance.passed is passes
        assert bool(out.rel_rms <= np.sqrt(2 * (1 - 0.9999))) is passes
        # the report's cosine of the one element agrees with the tolerance: 1 - rel^2 / 2, not its sign
        assert out.cosine == pytest.approx(1 - out.rel_rms ** 2 / 2) and (out.cosine >= 0.9999) is passes
