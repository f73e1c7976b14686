"""The `trt` INT8 placement (backends/placement.py): Q/DQ where TensorRT's INT8 toolchain (ModelOpt's
ONNX PTQ) puts them, the inputs of Conv, ConvTranspose, Gemm and MatMul, and of an Add or a pooling only
where TensorRT fuses it into a quantized producer; `ort-all` as before."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import layerdiff
from layerdiff.backends.placement import trt_nodes
from tests.conftest import FIXTURES


def _graph():
    """x -> conv a -> bn -> relu -> r -┬-> add_res (r + x2) -> maxpool -> p
    x2 = x * 2 (a Mul with a constant)  └-> (nothing else)
    x, x2 -> add_plain (no quantized producer) ; p -> add_bias (+ constant) ; x -> avgpool_in"""
    rng = np.random.default_rng(0)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [init("w", rng.normal(0, 0.3, (3, 3, 3, 3))), init("scale", np.ones(3)), init("bias", np.zeros(3)),
             init("mean", np.zeros(3)), init("var", np.ones(3)), init("two", 2.0), init("b", np.ones((1, 3, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Mul", ["x", "two"], ["x2"], name="double"),
             helper.make_node("Add", ["r", "x2"], ["res"], name="add_res"),
             helper.make_node("MaxPool", ["res"], ["p"], name="pool_after_add", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["r"], ["p2"], name="pool_after_conv", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["x", "x2"], ["plain"], name="add_plain"),
             helper.make_node("Add", ["p", "b"], ["biased"], name="add_bias"),
             helper.make_node("AveragePool", ["x"], ["a"], name="avgpool_in", kernel_shape=[2, 2], strides=[2, 2])]
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("biased", "p2", "plain", "a")]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                             outs, inits)


def test_the_rules():
    """ModelOpt's: the Conv; the residual Add, its Conv branch read unquantized (slot 0); a MaxPool after the
    Conv-BN-Relu is the Conv's kernel (not quantized), one after the Add is (its producer is quantized);
    an Add of two values no quantized op computes, a bias Add and a pooling of the raw input are not."""
    from layerdiff.backends.placement import Placement

    placement = Placement(_graph())
    assert placement.nodes == {"conv_a", "add_res", "pool_after_add"}
    assert placement.float_inputs == {("add_res", 0)}


def test_the_fixtures_keep_only_fusible_adds_and_pools():
    cnn = trt_nodes(onnx.load(FIXTURES / "cnn.onnx").graph)
    # the head's Gemm is a GEMV (1x32 by 32x10) and its GlobalAveragePool feeds it: both stay in float;
    # the MaxPool after the residual Add feeds conv4
    assert cnn == {"conv1", "conv2", "conv3", "conv4", "maxpool", "residual_add"}
    block = trt_nodes(onnx.load(FIXTURES / "transformer.onnx").graph)
    assert {"residual1", "residual2", "qk", "attn_v"} <= block
    assert not block & {"ff1_bias", "ff2_bias", "gelu_add1"}  # a bias Add and GELU's: fused, not quantized


def test_the_placement_is_the_candidates_and_the_recipes(tmp_path, cli):
    trt = layerdiff.prepare(FIXTURES / "transformer.onnx", reference_provider="cpu")
    every = layerdiff.prepare(FIXTURES / "transformer.onnx", reference_provider="cpu", int8_placement="ort-all")
    assert trt.quantizer.quantized == trt_nodes(trt.quantizer.source.graph)
    assert trt.quantizer.quantized < every.quantizer.quantized
    recipe = tmp_path / "r.json"
    code, _, err = cli("bisect", FIXTURES / "transformer.onnx", "--candidate", "ort-int8", "--min-cosine", "0.9",
                       "-o", recipe, "-q")
    assert code == 0, err
    import json

    data = json.loads(recipe.read_text())
    assert data["candidate"]["int8_placement"] == "trt"
    assert set(data["candidate"]["ort_quantize"]["nodes_to_quantize"]) == trt.quantizer.quantized
