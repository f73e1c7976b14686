import json

import numpy as np
import onnx
import pytest

import layerdiff
from layerdiff import PrecisionPlan, compare
from layerdiff.metrics import diff_metrics
from tests.conftest import FIXTURES, cosine64, run_plain


def _layer(report, name):
    return next(lay for lay in report.layers if lay.name == name)


def _feeds(directory):
    out = []
    for f in sorted(directory.glob("*.npz")):
        with np.load(f) as d:
            out.append({"input": d["input"]})
    return out


@pytest.fixture(scope="module")
def int8_cnn(tmp_path_factory):
    saved = tmp_path_factory.mktemp("int8") / "cand.onnx"
    report = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", save_candidate=saved)
    return report, saved


def test_final_output_matches_plain_run_of_saved_candidate(int8_cnn):
    report, saved = int8_cnn
    cosines, max_abs = [], []
    for feed in _feeds(FIXTURES / "cnn_inputs"):
        ref = run_plain(FIXTURES / "cnn.onnx", feed)["probs"]
        cand = run_plain(saved, feed)["probs"]
        cosines.append(cosine64(ref, cand))
        max_abs.append(np.abs(ref.astype(np.float64) - cand).max())
    out = report.output_metrics("probs")
    assert out.cosine == pytest.approx(min(cosines), abs=1e-9)
    assert out.max_abs == pytest.approx(max(max_abs), rel=1e-6)
    assert out.cosine < 1.0  # int8 really changed something


def test_int8_precisions_are_read_from_the_candidate_graph(int8_cnn):
    report, _ = int8_cnn
    prec = {lay.name: lay.precision for lay in report.layers}
    assert {prec[n] for n in ("conv1", "conv2", "conv3", "conv4", "fc")} == {"int8"}
    assert prec["softmax"] == "fp32" and prec["conv1_bn"] == "fp32"
    assert report.counts["compared"] == report.counts["float_tensors"] == 18


def test_accumulated_error_matches_an_independent_run(int8_cnn):
    """Accumulated error of an intermediate tensor, recomputed by exposing it with plain onnx/ORT."""
    report, saved = int8_cnn
    feed = _feeds(FIXTURES / "cnn_inputs")[0]
    ref_model = onnx.load(FIXTURES / "cnn.onnx")
    ref_model.graph.output.append(onnx.helper.make_empty_tensor_value_info("relu2"))
    cand_model = onnx.load(saved)
    cand_model.graph.output.append(onnx.helper.make_empty_tensor_value_info("relu2"))
    ref = run_plain(ref_model.SerializeToString(), feed)["relu2"]
    cand = run_plain(cand_model.SerializeToString(), feed)["relu2"]
    sample0 = diff_metrics(ref, cand)
    worst = _layer(report, "relu2").outputs[0].accumulated.worst
    # worst over 4 samples bounds sample 0; fusions differ between the two runs by float32 rounding only
    assert worst.max_abs >= sample0.max_abs - 1e-5
    assert worst.cosine <= sample0.cosine + 1e-9


def test_local_error_of_softmax_matches_numpy_recomputation(int8_cnn):
    """Local error = candidate's softmax output vs softmax in float64 on the candidate's own logits."""
    report, saved = int8_cnn
    cand_model = onnx.load(saved)
    sm = next(n for n in cand_model.graph.node if n.name == "softmax")
    for t in ("logits", sm.output[0]):
        cand_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    worst = 0.0
    for feed in _feeds(FIXTURES / "cnn_inputs"):
        out = run_plain(cand_model.SerializeToString(), feed, ["logits", sm.output[0]])
        z = out["logits"].astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        worst = max(worst, np.abs(out[sm.output[0]] - e / e.sum(axis=1, keepdims=True)).max())
    local = _layer(report, "softmax").outputs[0].local.worst
    assert local.max_abs == pytest.approx(worst, abs=2e-7)


def test_candidate_identical_to_model_has_zero_error(tmp_path):
    report = compare(FIXTURES / "transformer.onnx", str(FIXTURES / "transformer.onnx"), seed=5)
    for lay in report.layers:
        for o in lay.outputs:
            assert o.accumulated.worst.max_abs == 0.0, o.tensor
            assert o.local.worst.max_abs <= 1e-6, o.tensor
    assert report.first_divergence is None
    assert {lay.precision for lay in report.layers} == {"fp32"}
    assert report.inputs["random"] and report.warnings[0].startswith("no --inputs given")


def test_pinned_node_stays_fp32():
    plan = PrecisionPlan.uniform("int8", pin_fp32={"conv2", "fc"})
    report = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", plan=plan)
    assert _layer(report, "conv2").precision == "fp32" and _layer(report, "fc").precision == "fp32"
    assert _layer(report, "conv1").precision == "int8"
    assert report.candidate["pinned_fp32"] == ["conv2", "fc"]


def test_fp16_overflow_is_the_first_divergence():
    report = compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16")
    fd = report.first_divergence
    assert fd["layer"] == "big_matmul" and "non-finite" in fd["reason"]
    huge = _layer(report, "big_matmul").outputs[0]
    assert huge.accumulated.worst.exceeds_fp16 and huge.accumulated.worst.cand_nonfinite > 0
    assert report.counts["exceeds_fp16"] >= 1
    assert _layer(report, "big_matmul").precision == "fp16"


def test_fp16_emulation_rounds_like_numpy():
    """ONNX Runtime's CPU provider has no FP16 MatMul: layerdiff emulates it, and the candidate's value is
    the FP32 product of FP16-rounded operands, rounded to FP16 (so it overflows as real FP16 would)."""
    report = compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", seed=3)
    big = _layer(report, "big_matmul")
    assert big.precision_emulated
    w = onnx.numpy_helper.to_array(next(t for t in onnx.load(FIXTURES / "fp16_overflow.onnx").graph.initializer
                                        if t.name == "big_w"))
    x = np.random.default_rng(3).random((1, 64), dtype=np.float64).astype(np.float32)
    with np.errstate(over="ignore"):
        emulated = (x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)).astype(np.float16)
    assert big.outputs[0].accumulated.worst.cand_nonfinite == int(np.isinf(emulated).sum()) > 0


def test_fp16_transformer_candidate():
    report = compare(FIXTURES / "transformer.onnx", "ort-fp16", seed=2)
    assert report.output_metrics("y").cosine > 0.9999
    assert report.output_metrics("y").max_abs > 0  # FP16 rounding really happened
    assert {lay.precision for lay in report.layers} == {"fp16"}
    emulated = set(report.candidate["fp16_emulated"])
    assert {lay.name for lay in report.layers if lay.precision_emulated} == emulated


def test_chunked_capture_equals_single_pass():
    whole = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs")
    # the CNN's activations are ~75 kB in all: a 20 kB budget forces several chunks
    parts = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", max_memory=20_000)
    assert parts.capture["chunks"] > 2 and whole.capture["chunks"] == 1
    # final outputs come from plain runs of both models: identical whatever the chunks
    assert parts.output_metrics("probs") == whole.output_metrics("probs")
    # the same tensors, up to float32 rounding: ONNX Runtime fuses differently when fewer tensors are outputs
    for a, b in zip(whole.layers, parts.layers, strict=True):
        for oa, ob in zip(a.outputs, b.outputs, strict=True):
            for x, y in ((oa.accumulated.worst, ob.accumulated.worst), (oa.local.worst, ob.local.worst)):
                assert x.count == y.count
                assert x.cosine == pytest.approx(y.cosine, abs=1e-7)
                assert x.max_abs == pytest.approx(y.max_abs, rel=1e-3, abs=1e-6)


def test_chunks_respect_the_budget():
    from layerdiff.capture import plan_chunks, tensor_sizes
    from layerdiff.graph import load_model
    from layerdiff.match import match_tensors

    model = load_model(FIXTURES / "cnn.onnx")
    pairs = match_tensors(model, model.proto)
    sizes = tensor_sizes(model, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert sizes["conv1_out"] == 8 * 32 * 32 * 4
    units = [(lay,) for lay in model.layers]
    total = plan_chunks(model, units, pairs, sizes, None, {})[0].estimated_bytes
    budget = total // 4
    chunks = plan_chunks(model, units, pairs, sizes, budget, {})
    assert sum(len(c.layers) for c in chunks) == len(model.layers)
    assert all(c.estimated_bytes <= budget for c in chunks)


def test_dynamic_batch_and_integer_tensors():
    report = compare(FIXTURES / "dynamic_batch.onnx", "ort-int8", shapes=["images:3x3x16x16"])
    assert report.counts["non_float_tensors"] == 3
    assert next(o for o in _layer(report, "conv").outputs).shape == (3, 8, 16, 16)
    assert report.output_metrics("scores").cosine > 0.999


def test_if_layer_gets_a_local_error():
    report = compare(FIXTURES / "if_model.onnx", "ort-fp16", seed=4)
    if_layer = next(lay for lay in report.layers if lay.op == "If")
    assert if_layer.outputs[0].local is not None
    assert if_layer.outputs[0].accumulated.worst.cosine > 0.999


def test_samples_are_aggregated_worst_and_mean(int8_cnn):
    report, _ = int8_cnn
    agg = _layer(report, "conv3").outputs[0].accumulated
    assert agg.samples == 4
    assert agg.worst.cosine <= agg.mean.cosine and agg.worst.max_abs >= agg.mean.max_abs


def test_calibration_methods_give_different_ranges():
    a = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", calibration="minmax")
    b = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", calibration="percentile")
    assert a.candidate["calibration"]["method"] == "minmax"
    assert a.output_metrics("probs") != b.output_metrics("probs")


def test_report_json_contract(int8_cnn, tmp_path):
    report, _ = int8_cnn
    layerdiff.write_report(report, tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema"] == "layerdiff.report/1"
    assert set(d["model"]) >= {"path", "sha256"} and len(d["model"]["sha256"]) == 64
    assert "spec" in d["candidate"] and d["reference"]
    layer = d["layers"][0]
    assert set(layer) >= {"index", "name", "op", "precision", "outputs"}
    out = layer["outputs"][0]
    assert set(out) >= {"tensor", "shape", "cosine", "max_abs", "mean_abs", "rel_rms", "sqnr_db", "nonfinite",
                        "ref_absmax", "local"}
    assert set(out["local"]) >= {"cosine", "max_abs", "rel_rms"}
    assert set(d["outputs"][0]) >= {"tensor", "cosine", "max_abs"}
    assert "first_divergence" in d
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_precision_audit_flags_requests_not_realised():
    """fc asks for FP16 in an INT8 plan; the ORT INT8 backend can only leave it unquantized (FP32)."""
    plan = PrecisionPlan("int8", {"conv2": "fp32", "fc": "fp16"})
    report = compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs", plan=plan)
    audit = {a["layer"]: a for a in report.to_dict()["precision_audit"]}
    assert set(audit) == {"conv2", "fc"}
    assert audit["conv2"]["realised_as_requested"] is True and audit["conv2"]["realised"] == "fp32"
    assert audit["fc"] == {"layer": "fc", "index": 16, "requested": "fp16", "realised": "fp32",
                           "realised_as_requested": False}
    assert "1 requested precision(s) not realised: fc (fp16 requested, fp32 realised)" in report.warnings
    assert _layer(report, "conv1").requested_precision is None  # not pinned: nothing to audit


def test_model_with_external_data(tmp_path):
    model = onnx.load(FIXTURES / "cnn.onnx")
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=64)
    assert (tmp_path / "ext.data").stat().st_size > 1000
    a = compare(tmp_path / "ext.onnx", "ort-fp16", inputs=FIXTURES / "cnn_inputs")
    b = compare(FIXTURES / "cnn.onnx", "ort-fp16", inputs=FIXTURES / "cnn_inputs")
    assert a.output_metrics("probs") == b.output_metrics("probs")


MODELS = FIXTURES.parent / "models"


@pytest.mark.skipif(not (MODELS / "ppocr_cls" / "model.onnx").is_file(),
                    reason="real models not fetched: python scripts/get_models.py")
def test_real_model_final_output_matches_plain_run_of_saved_candidate(tmp_path):
    """PP-OCR's direction classifier (a real trained model from the rapidocr-onnxruntime wheel) on crops
    of skimage's text photos."""
    d = MODELS / "ppocr_cls"
    saved = tmp_path / "int8.onnx"
    report = compare(d / "model.onnx", "ort-int8", inputs=d / "inputs", calib=d / "calib", save_candidate=saved)
    name = report.outputs[0][0]
    cosines = []
    for f in sorted((d / "inputs").glob("*.npz")):
        with np.load(f) as data:
            feed = {"x": data["x"]}
        cosines.append(cosine64(run_plain(d / "model.onnx", feed)[name], run_plain(saved, feed)[name]))
    assert report.output_metrics(name).cosine == pytest.approx(min(cosines), abs=1e-9)
    assert report.counts["compared"] == report.counts["float_tensors"]


def test_constant_node_rounding_counts_against_its_consumer(tmp_path):
    """A weight held by a Constant node (as PaddlePaddle exports BatchNorm parameters) that FP16 cannot
    hold: its error belongs to the layer that reads it, as it would for an initializer."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=onnx.numpy_helper.from_array(
                 np.array([100000.0, 60000.0], np.float32))),
             helper.make_node("Mul", ["x", "c"], ["y"], name="scale"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "c.onnx")
    np.savez(tmp_path / "x.npz", x=np.full((4, 2), 1e-3, np.float32))
    report = compare(tmp_path / "c.onnx", "ort-fp16", inputs=tmp_path / "x.npz")
    scale = _layer(report, "scale").outputs[0].local.worst
    assert scale.max_abs == pytest.approx((100000.0 - 65504.0) * 1e-3, rel=1e-2)  # the clamped weight, seen by Mul
    assert [lay.name for lay in layerdiff.rank_layers(report)][0] == "scale"
    assert "const" not in [lay.name for lay in layerdiff.rank_layers(report)]
    # the Constant's own local cosine is below the threshold (100000 clamped to 65504), yet it is not a divergence
    assert _layer(report, "const").outputs[0].local.worst.cosine < 0.99 and not _layer(report, "const").diverges
    assert report.first_divergence["layer"] == "scale"  # the layer that reads the clamped weight
