"""Values ONNX Runtime computes once or before the run, paired by structure: a tensor its
common-subexpression elimination dropped is read from the twin it kept; a state folded into an
initializer is that initializer. So an LSTM whose two zero initial states became one is a row of its
own, named after the LSTM (it was one row with its initial-state ConstantOfShape, named after that)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import layerdiff
from tests.conftest import FIXTURES


def _optimized(path, tmp_path) -> onnx.GraphProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "opt.onnx")).graph


@pytest.mark.parametrize("candidate", ["ort-int8", "ort-fp16"])
def test_the_lstm_is_its_own_row_and_every_tensor_is_read(candidate):
    report = layerdiff.compare(FIXTURES / "lstm_state.onnx", candidate, reference_provider="cpu")
    lstm = report.layer("lstm")
    assert lstm.onnx_nodes == ("lstm",) and lstm.op == "LSTM" and lstm.kernels == ("LSTM",)
    assert report.counts.compared == report.counts.float_tensors and report.counts.fused_away == 0
    assert report.layer("c0_zeros").precision == "unknown"  # folded into an initializer before the run
    assert lstm.amplification is not None and lstm.input_cosine is not None
    assert report.capture.exposed_vs_plain_max_abs == 0.0


def test_the_fixture_has_its_states_folded_into_one(tmp_path):
    graph = _optimized(FIXTURES / "lstm_state.onnx", tmp_path)
    (lstm,) = [n for n in graph.node if n.op_type == "LSTM"]
    assert lstm.input[5] == lstm.input[6] and lstm.input[5] in {t.name for t in graph.initializer}


def test_a_tensor_dropped_as_a_common_subexpression_is_read_from_its_twin(tmp_path):
    graph = _optimized(FIXTURES / "cse_twins.onnx", tmp_path)
    assert len([n for n in graph.node if n.op_type == "Sigmoid"]) == 1  # one was dropped
    session = layerdiff.prepare(FIXTURES / "cse_twins.onnx", reference_provider="cpu")
    view = session.candidate("ort-fp16").deployment()
    assert view.available("s1") and view.available("s2")
    with view.open(["s1", "s2"]) as source:
        values = source.infer(session.samples.feeds[0])
    np.testing.assert_array_equal(values["s1"], values["s2"])
    report = session.compare(session.candidate("ort-fp16"))
    assert report.counts.compared == report.counts.float_tensors == 4
    assert report.layer("sig2").cosine == report.layer("sig1").cosine


def test_a_named_dimension_of_size_one_agrees_with_the_one_onnx_runtime_states():
    """A new user's FP16 silero-vad: the candidate said [unk, 64, unk] where ONNX Runtime stated
    [sequence_length, 64, 1]; dropping the 1s first miscounted, and 13 tensors were said not to exist."""
    from layerdiff.backends.ortstructure import same_shape

    assert same_shape(("unk__0", 64, "unk__8"), ["sequence_length", 64, 1])
    assert same_shape((1, 8, 1, 1), [1, 1, 1, 8])  # channels-last [N, C, 1, 1]: the same values in order
    assert not same_shape((1, 8, 4), [1, 4, 8])


def test_structural_keys_do_not_nest():
    """Each key names its inputs by number: nested keys grew with every path through a SiLU chain
    (Mul(x, Sigmoid(x))) and hashing them hung a new user's YOLOX detector for minutes."""
    from onnx import TensorProto, helper

    from layerdiff.backends.ortstructure import _structure

    nodes, x = [], "x"
    for i in range(60):
        nodes += [helper.make_node("Sigmoid", [x], [f"s{i}"]), helper.make_node("Mul", [x, f"s{i}"], [f"m{i}"])]
        x = f"m{i}"
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4])])
    keys = _structure(graph)
    assert all(isinstance(i, int) for key in keys.values() for i in key[3])
    assert len({keys[f"m{i}"] for i in range(60)}) == 60


def test_two_random_draws_are_never_twins():
    from onnx import TensorProto, helper

    from layerdiff.backends.ortstructure import _structure

    nodes = [helper.make_node("RandomNormalLike", ["x"], ["r1"]), helper.make_node("RandomNormalLike", ["x"], ["r2"]),
             helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])])
    keys = _structure(graph)
    assert keys["r1"] is None and keys["r2"] is None and keys["a"] == keys["b"]
