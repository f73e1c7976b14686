"""A candidate layerdiff made that computes nothing below FP32 says so: a new user's voice-activity
model, whose every op sits inside an If, came out of ort-int8 unquantized and the report read as a
perfect INT8 result."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import layerdiff
from tests.conftest import FIXTURES


def _if_only():
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "W")

    def branch(name, op):
        node = helper.make_node(op, ["x", "W"] if op == "MatMul" else ["x"], [name + "_y"])
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(name + "_y", TensorProto.FLOAT, [1, 8])])

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "low"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=branch("a", "MatMul"), else_branch=branch("b", "Relu"))],
        "if_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w, numpy_helper.from_array(np.array(-100.0, np.float32), "low")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_int8_candidate_that_quantized_nothing_says_so():
    report = layerdiff.compare(_if_only(), "ort-int8", reference_provider="cpu")
    (warning,) = [w for w in report.warnings if "nothing below FP32" in w]
    assert "If subgraphs" in warning
    assert all(lay.precision in ("fp32", "unknown") for lay in report.layers)  # the claim it rests on


def test_a_quantized_candidate_does_not():
    report = layerdiff.compare(FIXTURES / "cnn.onnx", "ort-int8", reference_provider="cpu")
    assert not any("nothing below FP32" in w for w in report.warnings)
