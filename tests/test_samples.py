"""Samples, honestly: the report names the sample of the worst cosine and keeps each sample's figure,
and warns where a sample's reference output is all but zero (its cosine is noise: a blank image in a
detector's evaluation set decided the worst-of cosine)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import layerdiff
from tests.conftest import FIXTURES, cosine64, run_plain


def test_the_worst_sample_is_named_and_each_samples_cosine_kept(tmp_path):
    cand = tmp_path / "int8.onnx"
    report = layerdiff.compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    session = layerdiff.prepare(FIXTURES / "cnn.onnx", inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    onnx.save(session.candidate("ort-int8").model, str(cand))
    files = sorted((FIXTURES / "cnn_inputs").glob("*.npz"))
    oracle = []  # plain sessions of the model and of the saved candidate, cosine in float64
    for f in files:
        feed = dict(np.load(f))
        oracle.append(cosine64(run_plain(FIXTURES / "cnn.onnx", feed)["probs"], run_plain(cand, feed)["probs"]))
    out = report.outputs[0]
    np.testing.assert_allclose(out.per_sample_cosine, oracle, rtol=0, atol=1e-9)
    assert out.worst_sample == files[int(np.argmin(oracle))].name
    assert out.near_zero == ()


def test_a_sample_whose_reference_output_is_zero_is_said_to_be_noise(tmp_path):
    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(rng.normal(0, 1, (32, 8)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "lin.onnx"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(3):
        np.savez(inputs / f"s{k}.npz", x=rng.normal(0, 1, (1, 32)).astype(np.float32))
    np.savez(inputs / "blank.npz", x=np.zeros((1, 32), np.float32))
    report = layerdiff.compare(tmp_path / "lin.onnx", "ort-fp16", inputs=inputs, reference_provider="cpu")
    assert report.outputs[0].near_zero == ("blank.npz",)
    assert any("all but zero" in w and "blank.npz" in w for w in report.warnings)
    from layerdiff.report import load_report, write_report

    write_report(report, tmp_path / "r.json")  # the report keeps them: read back
    loaded = load_report(tmp_path / "r.json").outputs[0]
    assert loaded.near_zero == ("blank.npz",) and loaded.per_sample_cosine == report.outputs[0].per_sample_cosine


def test_a_tensor_whose_shape_differs_between_samples_says_so(tmp_path):
    from layerdiff.report import load_report, write_report

    rng = np.random.default_rng(1)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k, batch in enumerate((1, 3)):
        np.savez(inputs / f"s{k}.npz", images=rng.uniform(0, 1, (batch, 3, 16, 16)).astype(np.float32))
    report = layerdiff.compare(FIXTURES / "dynamic_batch.onnx", "ort-fp16", inputs=inputs, reference_provider="cpu")
    shapes = {o.tensor: o.shapes for lay in report.layers for o in lay.outputs if o.shapes}
    assert shapes and all(s[0].startswith("1x") and s[1].startswith("3x") for s in shapes.values())
    assert any("change shape between samples" in w for w in report.warnings)
    write_report(report, tmp_path / "r.json")
    again = {o.tensor: o.shapes for lay in load_report(tmp_path / "r.json").layers for o in lay.outputs if o.shapes}
    assert again == shapes
