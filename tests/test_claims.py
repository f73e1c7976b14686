"""Every "no value of it exists" is checked against the values of the graph ONNX Runtime really runs
(backends/ortclaims.py) before a report says it. split_heads is self-attention as exports write it: at
level `all` ONNX Runtime fuses its three Slices into one Split, moves and rewrites the Transposes around
them and quantizes k ahead of its Squeeze, beyond what the structural pairing follows; the check finds
each of those tensors held by a deployed value and reads it from there. What a kernel really fuses (the
SiLU's Sigmoid inside QuickGelu, a Conv's output before the Relu QLinearConv applies) stays claimed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import layerdiff
from layerdiff.backends.kernels import OrtKernels
from tests.conftest import FIXTURES

MISSING = "no value of it exists"


def _plain_values(model: onnx.ModelProto, names: list[str], feed: dict) -> dict[str, np.ndarray]:
    """The candidate's own values (its graph as written, in a plain session with nothing fused)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = {i.name: i.type for i in sess.get_inputs()}
    fed = {k: v.astype(np.float16) if inputs[k] == "tensor(float16)" else v for k, v in feed.items() if k in inputs}
    return dict(zip(names, sess.run(names, fed)))


@pytest.mark.parametrize("candidate", ["ort-int8", "ort-fp16"])
def test_values_onnx_runtime_moved_beyond_the_structure_are_read_by_value(candidate):
    session = layerdiff.prepare(FIXTURES / "split_heads.onnx", reference_provider="cpu")
    cand = session.candidate(candidate)
    report = session.compare(cand)
    claimed = {o.tensor for lay in report.layers for o in lay.outputs if not o.paired}
    # only what a kernel truly fuses: the SiLU's Sigmoid inside ONNX Runtime's QuickGelu (INT8 only)
    assert claimed == ({"sg"} if candidate == "ort-int8" else set())
    assert any("read by their values" in w for w in report.warnings)
    assert report.capture.exposed_vs_plain_max_abs == 0.0
    # each tensor read, as the deployed graph holds it, against the candidate's own value (a plain
    # session of the candidate's graph): within one INT8 step where the deployed value is INT8
    names = ["q5", "k5", "v5", "q", "k", "v", "kT", "scores", "p", "o", "ot", "m"]
    with cand.deployment().open(names) as source:
        read = source.infer(session.samples.feeds[0])
    own = _plain_values(cand.executed, names, session.samples.feeds[0])
    for name in names:
        assert read[name].shape == own[name].shape, name
        span = float(np.max(np.abs(own[name])))
        np.testing.assert_allclose(read[name].astype(np.float64), own[name].astype(np.float64),
                                   atol=0.02 * span + 1e-6, err_msg=name)


def test_the_check_finds_what_the_structural_pairing_missed(monkeypatch):
    """With the structural pairing of renamed values switched off, every value ONNX Runtime renamed (the
    QLinearConv chain's INT8 outputs) is claimed missing; the check finds each held by the deployed graph
    and the report's figures are the ones the structural pairing gives."""
    def compare():
        return layerdiff.compare(FIXTURES / "qlinear_chain.onnx", str(FIXTURES / "qlinear_chain_qdq.onnx"),
                                 inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")

    paired = compare()
    assert not any("read by their values" in w for w in paired.warnings)
    monkeypatch.setattr(OrtKernels, "_find_aliases", lambda self: {})
    by_value = compare()
    assert any("read by their values" in w for w in by_value.warnings)
    for lay in paired.layers:
        other = by_value.layer(lay.name)
        for a, b in zip(lay.outputs, other.outputs):
            assert a.paired == b.paired, (lay.name, a.tensor)
            if a.paired:
                assert b.accumulated.worst.cosine == pytest.approx(a.accumulated.worst.cosine, abs=1e-4), a.tensor


def test_a_fused_pre_activation_value_stays_claimed_after_the_check():
    report = layerdiff.compare(FIXTURES / "qlinear_chain.onnx", str(FIXTURES / "qlinear_chain_qdq.onnx"),
                               inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    for conv in ("conv0", "conv1", "conv2"):
        (out,) = [o for o in report.layer(conv).outputs if o.tensor == conv]
        assert not out.paired and MISSING in out.unpaired_reason
    assert not any("read by their values" in w for w in report.warnings)


def test_holders_need_every_checked_sample():
    """A value that matches on one sample and not on the other does not hold the tensor."""
    from layerdiff.backends.ortclaims import _matches

    v = np.arange(12, dtype=np.float64).reshape(1, 3, 4)
    assert [h.perm for h in _matches("w", v, v.reshape(3, 1, 4), None, None)] == [(0, 1)]
    transposed = _matches("w", v, v.reshape(3, 4).T.copy(), None, None)
    assert [h.perm for h in transposed] == [(1, 0)]
    relu = np.maximum(v - 5, 0)
    assert _matches("w", v - 5, relu, None, None) == []  # a Relu's output does not hold its input
    rounded = np.round(v / 0.5) * 0.5
    assert _matches("w", v, (rounded + 0.3), 0.5, ("s", "z"))  # within a step of the kernel's rounding
    assert not _matches("w", v, rounded + 0.6, None, None)


def test_a_transpose_moved_below_a_slice_is_followed_by_structure():
    """PP-OCRv4's recogniser: the model slices t = Transpose(r) and squeezes the slice; ONNX Runtime
    slices r itself, quantizes, squeezes, and a rewritten Transpose puts the value right."""
    from onnx import TensorProto, helper

    from layerdiff.backends.ortlayout import follow_layouts

    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    model = [helper.make_node("Transpose", ["r"], ["t"], name="T1", perm=[2, 0, 3, 1, 4]),
             helper.make_node("Slice", ["t", "s", "e", "a0"], ["t5"], name="S1"),
             helper.make_node("Squeeze", ["t5", "a0"], ["q"], name="Q1"),
             helper.make_node("Transpose", ["q"], ["qT"], name="T2", perm=[0, 1, 3, 2])]
    optimized = helper.make_graph(
        [helper.make_node("Slice", ["r", "s", "e", "a2"], ["S1_out"], name="S1"),
         helper.make_node("QuantizeLinear", ["S1_out", "sc", "zp"], ["tok1"], name="S1_q"),
         helper.make_node("Squeeze", ["tok1", "a2"], ["tok2"], name="Q1"),
         helper.make_node("Transpose", ["tok2"], ["tok3"], name="T2", perm=[0, 2, 3, 1])],
        "opt", [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 3, 2, 8])],
        [helper.make_tensor_value_info("tok3", TensorProto.UINT8, None)],
        [i64("s", [0]), i64("e", [1]), i64("a0", [0]), i64("a2", [2]),
         helper.make_tensor("sc", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zp", TensorProto.UINT8, [], [0])])
    cproducer = {n.output[0]: n for n in model}
    layouts = follow_layouts(optimized, {}, cproducer, {n.name: n for n in model},
                             {i.name for i in optimized.initializer})
    # S1_out holds t5 (axes of t: 3,1,2,8,8) as r's slice (axes 1,8,1,2,8): t5's axes in order 1,3,0,2,4
    assert layouts["S1_out"] == (1, 3, 0, 2, 4) and layouts["tok1"] == layouts["S1_out"]
    assert layouts["tok2"] == (0, 2, 1, 3)  # q's axes, the sliced axis gone
    assert layouts["tok3"] is None  # the model's qT, in its own layout


def test_a_read_through_a_wrong_layout_is_caught(monkeypatch):
    """A square value transposed the wrong way passes every shape check: the structure read H and W
    swapped. Every read through a permutation is checked against the candidate's own value; a wrong one
    is dropped and the value found by its numbers, so the figures are the ones the right layout gives."""
    def compare():
        return layerdiff.compare(FIXTURES / "qlinear_chain.onnx", str(FIXTURES / "qlinear_chain_qdq.onnx"),
                                 inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")

    right = compare()
    real = OrtKernels.layout
    monkeypatch.setattr(OrtKernels, "layout",
                        lambda self, t: (0, 3, 2, 1) if real(self, t) == (0, 2, 3, 1) else real(self, t))
    checked = compare()
    assert any("read by their values" in w for w in checked.warnings)
    for lay in right.layers:
        for a, b in zip(lay.outputs, checked.layer(lay.name).outputs):
            assert a.paired == b.paired, a.tensor
            if a.paired:
                assert b.accumulated.worst.cosine == pytest.approx(a.accumulated.worst.cosine, abs=1e-6), a.tensor
