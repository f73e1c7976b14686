"""Naming the layers that multiply the error they inherit: a subtraction of two nearly equal values
introduces no error of its own (FP16 subtracts them exactly) yet turns the small relative error of its
inputs into a large one: it must lead 'amplifies most', ahead of the layer that made the error."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import layerdiff
from layerdiff.report import amplifiers


def _cancelling_model(path) -> None:
    """x [1,64] -> add (+1000) -> sub (-1000) -> mul (x2) -> y: the Add's FP16 rounding is 5e-4 of its
    output, the Sub leaves that error on values a thousand times smaller."""
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "big"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("Add", ["x", "big"], ["a"], name="add"),
             helper.make_node("Sub", ["a", "big"], ["s"], name="sub"),
             helper.make_node("Mul", ["s", "two"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_the_cancelling_subtraction_is_named_the_amplifier(tmp_path):
    _cancelling_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.uniform(-1, 1, (1, 64)).astype(np.float32))
    report = layerdiff.compare(tmp_path / "m.onnx", "ort-fp16", inputs=tmp_path / "in.npz", reference_provider="cpu")
    rows = {lay.name: lay for lay in report.layers if lay.kind == "layer"}
    sub, mul = rows["sub"], rows["mul"]
    assert sub.local_cosine > 0.9999  # it introduces (almost) nothing itself
    assert sub.amplification > 100  # ... and multiplies what it reads
    assert 0.5 < mul.amplification < 2  # a scaling by 2 keeps the relative error
    assert amplifiers(report.layers)[0].name == "sub"
    # the oracle: float64 numpy on the values each row reads and writes, as the report measured them
    x = np.load(tmp_path / "in.npz")["x"].astype(np.float64)
    a = x + 1000.0
    a16 = (x.astype(np.float16) + np.float16(1000.0)).astype(np.float64)  # the candidate's Add in FP16
    s16 = (a16 - 1000.0)
    rel = lambda got, ref: np.linalg.norm(got - ref) / np.linalg.norm(ref)  # noqa: E731
    expect = rel(s16, x) / rel(a16, a)
    assert abs(sub.amplification - expect) / expect < 0.05


def test_the_plot_marks_the_amplifier(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    from layerdiff.plot import plot_report

    _cancelling_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).uniform(-1, 1, (1, 64)).astype(np.float32))
    report = layerdiff.compare(tmp_path / "m.onnx", "ort-fp16", inputs=tmp_path / "in.npz", reference_provider="cpu")
    fig = plot_report(report, tmp_path / "p.png")
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "amplifies most: A1 sub" in caption
    assert any(t.get_text() == "A1" for t in fig.axes[0].texts)
