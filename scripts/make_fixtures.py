"""Build layerdiff's small test models, deterministically, into fixtures/.

Every model has seeded weights, opset 17 and IR version 8 (ONNX Runtime 1.31 reads at most IR 13;
onnx 1.23 would write 14 by default). Run from the repository root:

    python scripts/make_fixtures.py            # (re)write fixtures/
    python scripts/make_fixtures.py --check    # exit 1 if fixtures/ differs from what this builds

One function per model, each with a diagram; main() is the only caller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="layerdiff-fixtures"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv_bn(rng, prefix: str, x: str, cin: int, cout: int, stride: int = 1):
    """Conv 3x3 (pad 1) -> BatchNormalization; returns (nodes, initializers, output name)."""
    w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.05, cout).astype(np.float32)
    inits = [
        _init(f"{prefix}.weight", w),
        _init(f"{prefix}.bias", b),
        _init(f"{prefix}.bn.scale", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
        _init(f"{prefix}.bn.bias", rng.normal(0, 0.1, cout).astype(np.float32)),
        _init(f"{prefix}.bn.mean", rng.normal(0, 0.1, cout).astype(np.float32)),
        _init(f"{prefix}.bn.var", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
    ]
    nodes = [
        helper.make_node(
            "Conv", [x, f"{prefix}.weight", f"{prefix}.bias"], [f"{prefix}_out"], name=f"{prefix}",
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride],
        ),
        helper.make_node(
            "BatchNormalization",
            [f"{prefix}_out", f"{prefix}.bn.scale", f"{prefix}.bn.bias", f"{prefix}.bn.mean", f"{prefix}.bn.var"],
            [f"{prefix}_bn"], name=f"{prefix}_bn",
        ),
    ]
    return nodes, inits, f"{prefix}_bn"


def make_cnn() -> onnx.ModelProto:
    """A small residual CNN classifier.

        input [1,3,32,32]
          conv1 -> bn -> relu1 ─────────────┐
          conv2 -> bn -> relu2 -> conv3 -> bn -> add -> relu3
          maxpool 2x2 -> conv4 (stride 2) -> bn -> relu4
          globalavgpool -> flatten -> gemm [16->10] -> softmax -> probs [1,10]
    """
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    n, i, x = _conv_bn(rng, "conv1", "input", 3, 8)
    nodes += n + [helper.make_node("Relu", [x], ["relu1"], name="relu1")]
    inits += i
    n, i, x = _conv_bn(rng, "conv2", "relu1", 8, 8)
    nodes += n + [helper.make_node("Relu", [x], ["relu2"], name="relu2")]
    inits += i
    n, i, x = _conv_bn(rng, "conv3", "relu2", 8, 8)
    nodes += n + [
        helper.make_node("Add", [x, "relu1"], ["residual"], name="residual_add"),
        helper.make_node("Relu", ["residual"], ["relu3"], name="relu3"),
        helper.make_node("MaxPool", ["relu3"], ["pool"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits += i
    n, i, x = _conv_bn(rng, "conv4", "pool", 8, 16, stride=2)
    nodes += n + [
        helper.make_node("Relu", [x], ["relu4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["relu4"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits += i + [
        _init("fc.weight", rng.normal(0, 0.4, (10, 16)).astype(np.float32)),
        _init("fc.bias", rng.normal(0, 0.1, 10).astype(np.float32)),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return _model(graph)


def make_transformer() -> onnx.ModelProto:
    """One pre-norm transformer encoder block, single head.

        x [1,16,32]
          ln1 -> q,k,v = matmul x3 -> scores = q @ k^T / sqrt(32) -> softmax -> @ v -> proj
          + x (residual) = h
          ln2 -> matmul [32->64] + bias -> GELU (erf form) -> matmul [64->32] + bias
          + h (residual) -> y [1,16,32]
    """
    rng = np.random.default_rng(2)
    d, f = 32, 64

    def w(name, shape, scale):
        return _init(name, rng.normal(0, scale, shape).astype(np.float32))

    inits = [
        _init("ln1.scale", rng.uniform(0.8, 1.2, d).astype(np.float32)),
        _init("ln1.bias", rng.normal(0, 0.05, d).astype(np.float32)),
        w("wq", (d, d), 0.3), w("wk", (d, d), 0.3), w("wv", (d, d), 0.2), w("wo", (d, d), 0.2),
        _init("inv_sqrt_d", np.array(1.0 / np.sqrt(d), np.float32)),
        _init("ln2.scale", rng.uniform(0.8, 1.2, d).astype(np.float32)),
        _init("ln2.bias", rng.normal(0, 0.05, d).astype(np.float32)),
        w("w1", (d, f), 0.2), w("b1", (f,), 0.05), w("w2", (f, d), 0.15), w("b2", (d,), 0.05),
        _init("half", np.array(0.5, np.float32)),
        _init("one", np.array(1.0, np.float32)),
        _init("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32)),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln1.scale", "ln1.bias"], ["ln1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["ln1", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["ln1", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["ln1", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kT"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kT"], ["scores_raw"], name="qk"),
        helper.make_node("Mul", ["scores_raw", "inv_sqrt_d"], ["scores"], name="scale"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="attn_softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"], name="attn_v"),
        helper.make_node("MatMul", ["ctx", "wo"], ["attn_out"], name="o_proj"),
        helper.make_node("Add", ["attn_out", "x"], ["h"], name="residual1"),
        helper.make_node("LayerNormalization", ["h", "ln2.scale", "ln2.bias"], ["ln2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["ln2", "w1"], ["ff1_mm"], name="ff1"),
        helper.make_node("Add", ["ff1_mm", "b1"], ["ff1"], name="ff1_bias"),
        helper.make_node("Mul", ["ff1", "inv_sqrt2"], ["gelu_s"], name="gelu_scale"),
        helper.make_node("Erf", ["gelu_s"], ["gelu_erf"], name="gelu_erf"),
        helper.make_node("Add", ["gelu_erf", "one"], ["gelu_1p"], name="gelu_add1"),
        helper.make_node("Mul", ["ff1", "gelu_1p"], ["gelu_xm"], name="gelu_mul"),
        helper.make_node("Mul", ["gelu_xm", "half"], ["gelu"], name="gelu_half"),
        helper.make_node("MatMul", ["gelu", "w2"], ["ff2_mm"], name="ff2"),
        helper.make_node("Add", ["ff2_mm", "b2"], ["ff2"], name="ff2_bias"),
        helper.make_node("Add", ["ff2", "h"], ["y"], name="residual2"),
    ]
    graph = helper.make_graph(
        nodes, "transformer_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, d])],
        inits,
    )
    return _model(graph)


def make_fp16_overflow() -> onnx.ModelProto:
    """An MLP whose hidden activation exceeds the FP16 range (65504) and is scaled back down.

        x [1,64] in [0,1) -> matmul big_w [64->32] (positive; sums ~1e5) -> mul 1e-4 -> relu -> gemm [32->8] -> out
    """
    rng = np.random.default_rng(3)
    big = np.abs(rng.normal(0, 1, (64, 32))).astype(np.float32) * 6000.0
    inits = [
        _init("big_w", big),
        _init("shrink", np.array(1e-4, np.float32)),
        _init("head.weight", rng.normal(0, 0.5, (8, 32)).astype(np.float32)),
        _init("head.bias", rng.normal(0, 0.1, 8).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "big_w"], ["huge"], name="big_matmul"),
        helper.make_node("Mul", ["huge", "shrink"], ["scaled"], name="shrink"),
        helper.make_node("Relu", ["scaled"], ["act"], name="relu"),
        helper.make_node("Gemm", ["act", "head.weight", "head.bias"], ["out"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fp16_overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    return _model(graph)


def make_dynamic_batch() -> onnx.ModelProto:
    """A CNN with a dynamic batch dimension and a shape subgraph (integer tensors).

        images [N,3,16,16] -> conv [3->8] -> relu -> globalavgpool ─> reshape(to [N, 8]) -> gemm [8->4] -> scores
        images -> Shape -> Gather([0]) -> Concat([N], [8]) ─────^
    """
    rng = np.random.default_rng(4)
    inits = [
        _init("conv.weight", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
        _init("conv.bias", rng.normal(0, 0.05, 8).astype(np.float32)),
        _init("idx0", np.array([0], np.int64)),
        _init("eight", np.array([8], np.int64)),
        _init("fc.weight", rng.normal(0, 0.4, (4, 8)).astype(np.float32)),
        _init("fc.bias", rng.normal(0, 0.1, 4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "conv.weight", "conv.bias"], ["conv"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Shape", ["images"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx0"], ["batch"], name="gather_batch", axis=0),
        helper.make_node("Concat", ["batch", "eight"], ["newshape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["gap", "newshape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["scores"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "dynamic_batch",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _model(graph)


def make_if_model() -> onnx.ModelProto:
    """A model with an If node whose branches read a tensor from the outer scope.

        x [1,8] -> matmul w [8->8] -> h
        cond = reduce_sum(x) > 0
        If(cond): then h * 2  else  h + 1        (both branches read h from the outer scope)
        -> relu -> matmul w2 [8->4] -> y
    """
    rng = np.random.default_rng(5)
    inits = [
        _init("w", rng.normal(0, 0.5, (8, 8)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.5, (8, 4)).astype(np.float32)),
        _init("zero", np.array(0.0, np.float32)),
    ]
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["h", "two"], ["then_out"], name="then_mul")],
        "then_branch", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8])],
        [_init("two", np.array(2.0, np.float32))],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Add", ["h", "one"], ["else_out"], name="else_add")],
        "else_branch", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8])],
        [_init("one", np.array(1.0, np.float32))],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("ReduceSum", ["x"], ["xsum"], name="reduce_sum", keepdims=0),
        helper.make_node("Greater", ["xsum", "zero"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Relu", ["branch"], ["act"], name="relu"),
        helper.make_node("MatMul", ["act", "w2"], ["y"], name="matmul2"),
    ]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return _model(graph)


def make_qlinear_chain() -> onnx.ModelProto:
    """Three Conv+Relu layers in a row (the shape ONNX Runtime turns into a chain of channels-last
    QLinearConv kernels once quantized), then a pooled head.

        input [1,3,32,32]
          conv0 -> relu0 -> conv1 -> relu1 -> conv2 -> relu2     (8, 16, 16 channels, 3x3)
          globalavgpool -> flatten -> y [1,16]
    """
    rng = np.random.default_rng(7)
    nodes, inits, x, cin = [], [], "input", 3
    for i, cout in enumerate((8, 16, 16)):
        inits += [_init(f"w{i}", rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)),
                  _init(f"b{i}", rng.normal(0, 0.05, cout).astype(np.float32))]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}")]
        x, cin = f"relu{i}", cout
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "qlinear_chain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    return _model(graph)


def make_qlinear_chain_qdq(fp32: onnx.ModelProto, samples: dict[str, np.ndarray]) -> onnx.ModelProto:
    """qlinear_chain quantized as onnxruntime.quantization's QDQ defaults leave it: uint8 activations
    (zero point 0 after a Relu, which is then dropped: the rounding clips; the input's from its range),
    int8 weights, int32 biases,
    ranges from the bundled samples (min/max, computed here with onnx.reference). At ONNX Runtime's level
    `all` each DequantizeLinear -> Conv -> QuantizeLinear becomes a QLinearConv, moved to channels-last
    between one Transpose in and one out: its outputs are NHWC values under the names of the model's.

        input -> Q/DQ -> conv0 (w0, b0 via DQ) -> Q/DQ(relu0's range) -> conv1 -> Q/DQ -> conv2 -> Q/DQ
          -> globalavgpool -> Q/DQ -> flatten -> y
    """
    from onnx.reference import ReferenceEvaluator

    names = ["relu0", "relu1", "relu2", "gap"]
    runs = [ReferenceEvaluator(fp32).run(names, {"input": v}) for v in samples.values()]
    top = {n: max(float(np.max(r[i])) for r in runs) for i, n in enumerate(names)}
    weights = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    nodes, inits = [], []

    def qdq(tensor: str, scale: float, out: str, zero: int = 0) -> None:
        inits.extend([_init(f"{tensor}_scale", np.array(scale, np.float32)),
                      _init(f"{tensor}_zero_point", np.array(zero, np.uint8))])
        nodes.extend([helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zero_point"],
                                       [f"{tensor}_q"], name=f"{tensor}_QuantizeLinear"),
                      helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zero_point"],
                                       [out], name=f"{tensor}_DequantizeLinear")])

    lo = min(0.0, min(float(v.min()) for v in samples.values()))
    x_scale = (max(float(v.max()) for v in samples.values()) - lo) / 255
    qdq("input", x_scale, "input_dq", int(round(-lo / x_scale)))
    x = "input_dq"
    for i in range(3):
        w, b = weights[f"w{i}"], weights[f"b{i}"]
        w_scale = float(np.abs(w).max()) / 127
        b_scale = x_scale * w_scale
        inits += [_init(f"w{i}_q", np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)),
                  _init(f"w{i}_scale", np.array(w_scale, np.float32)), _init(f"w{i}_zero_point", np.array(0, np.int8)),
                  _init(f"b{i}_q", np.rint(b / b_scale).astype(np.int32)),
                  _init(f"b{i}_scale", np.array(b_scale, np.float32)), _init(f"b{i}_zero_point", np.array(0, np.int32))]
        nodes += [helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale", f"w{i}_zero_point"], [f"w{i}_dq"],
                                   name=f"w{i}_DequantizeLinear"),
                  helper.make_node("DequantizeLinear", [f"b{i}_q", f"b{i}_scale", f"b{i}_zero_point"], [f"b{i}_dq"],
                                   name=f"b{i}_DequantizeLinear"),
                  # the quantizer drops the Relu and writes the Conv's output under the Relu's name
                  helper.make_node("Conv", [x, f"w{i}_dq", f"b{i}_dq"], [f"relu{i}"], name=f"conv{i}",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
        x_scale = top[f"relu{i}"] / 255
        qdq(f"relu{i}", x_scale, f"relu{i}_dq")
        x = f"relu{i}_dq"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    qdq("gap", top["gap"] / 255, "gap_dq")
    nodes.append(helper.make_node("Flatten", ["gap_dq"], ["y"], name="flat"))
    graph = helper.make_graph(nodes, "qlinear_chain_qdq",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    return _model(graph)


def make_lstm_state() -> onnx.ModelProto:
    """A recurrent head whose initial states are computed from the input's shape, as exports write them
    (ONNX Runtime folds both zero states into one initializer: constant folding, then common-subexpression
    elimination, and the LSTM reads that one twice).

        x [1,3,6] -> conv (1x1, 8 channels) -> transpose -> seq [6,1,8]
          shape(seq) -> gather(1) -> unsqueeze -> concat([1], b, [16]) -> constantofshape -> h0
          (the same again)                                                              -> c0
        lstm(seq, h0, c0; hidden 16) -> Yh [1,1,16] -> squeeze -> matmul [16->5] -> softmax -> probs [1,5]
    """
    rng = np.random.default_rng(3)
    hidden, feat, steps = 16, 8, 6
    inits = [_init("W", rng.normal(0, 0.4, (1, 4 * hidden, feat)).astype(np.float32)),
             _init("R", rng.normal(0, 0.4, (1, 4 * hidden, hidden)).astype(np.float32)),
             _init("B", rng.normal(0, 0.1, (1, 8 * hidden)).astype(np.float32)),
             _init("Wc", rng.normal(0, 0.5, (feat, 3, 1)).astype(np.float32)),
             _init("Wo", rng.normal(0, 0.3, (hidden, 5)).astype(np.float32)),
             _init("one", np.array([1], np.int64)), _init("hid", np.array([hidden], np.int64)),
             numpy_helper.from_array(np.array(1, np.int64), "idx1"), _init("ax0", np.array([0], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["feat"], name="conv", kernel_shape=[1]),
             helper.make_node("Transpose", ["feat"], ["seq"], name="to_seq", perm=[2, 0, 1])]
    for state in ("h0", "c0"):
        nodes += [helper.make_node("Shape", ["seq"], [f"{state}_shape"], name=f"{state}_shape"),
                  helper.make_node("Gather", [f"{state}_shape", "idx1"], [f"{state}_b"], name=f"{state}_gather", axis=0),
                  helper.make_node("Unsqueeze", [f"{state}_b", "ax0"], [f"{state}_bu"], name=f"{state}_unsqueeze"),
                  helper.make_node("Concat", ["one", f"{state}_bu", "hid"], [f"{state}_dims"], name=f"{state}_concat",
                                   axis=0),
                  helper.make_node("ConstantOfShape", [f"{state}_dims"], [state], name=f"{state}_zeros",
                                   value=numpy_helper.from_array(np.array([0], np.float32)))]
    nodes += [helper.make_node("LSTM", ["seq", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], name="lstm",
                               hidden_size=hidden),
              helper.make_node("Squeeze", ["Yh", "ax0"], ["last"], name="squeeze"),
              helper.make_node("MatMul", ["last", "Wo"], ["logits"], name="head"),
              helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "lstm_state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, steps])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])], inits)
    return _model(graph)


def make_cse_twins() -> onnx.ModelProto:
    """Two identical nodes on one value (an export that computes a thing twice): ONNX Runtime's
    common-subexpression elimination keeps one, so the other tensor's value is its twin's.

        x [1,16] -> matmul [16->16] -> m -> sigmoid -> s1 -┐
                                         -> sigmoid -> s2 -┴-> mul -> y [1,16]
    """
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "Wm"], ["m"], name="mm"),
             helper.make_node("Sigmoid", ["m"], ["s1"], name="sig1"),
             helper.make_node("Sigmoid", ["m"], ["s2"], name="sig2"),
             helper.make_node("Mul", ["s1", "s2"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "cse_twins", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [_init("Wm", rng.normal(0, 0.5, (16, 16)).astype(np.float32))])
    return _model(graph)


def make_split_heads() -> onnx.ModelProto:
    """Self-attention as exports write it: one MatMul makes q, k and v, which a Transpose splits into
    heads and Slice+Squeeze take apart; its input passes a SiLU written x*sigmoid(1*x). At level `all`
    ONNX Runtime moves the Transpose below the Slices (they slice the untransposed value, and a later
    Transpose puts it right), quantizes k ahead of its Squeeze, and fuses the SiLU into one QuickGelu
    kernel that keeps x*1 only as x.

        x [1,8,24] -> mul(x, 1) -> sigmoid -> mul(x, .) -> h -> matmul [24->48] -> reshape [1,8,3,2,8]
          -> transpose (2,0,3,1,4) -> t [3,1,2,8,8] -> slice 0 -> squeeze -> q ---------┐
                                                   -> slice 1 -> squeeze -> k -> kT -> matmul -> softmax -┐
                                                   -> slice 2 -> squeeze -> v --------------------------- matmul
          -> o [1,2,8,8] -> transpose (0,2,1,3) -> reshape [1,8,16] -> matmul [16->24] -> y [1,8,24]
    """
    rng = np.random.default_rng(11)
    inits = [_init("one", np.array(1.0, np.float32)), _init("Wqkv", rng.normal(0, 0.3, (24, 48)).astype(np.float32)),
             _init("Wo", rng.normal(0, 0.3, (16, 24)).astype(np.float32)),
             _init("heads", np.array([1, 8, 3, 2, 8], np.int64)), _init("merged", np.array([1, 8, 16], np.int64)),
             _init("axis0", np.array([0], np.int64))]
    nodes = [helper.make_node("Mul", ["x", "one"], ["xb"], name="beta"),
             helper.make_node("Sigmoid", ["xb"], ["sg"], name="gate"),
             helper.make_node("Mul", ["x", "sg"], ["h"], name="silu"),
             helper.make_node("MatMul", ["h", "Wqkv"], ["qkv"], name="qkv_proj"),
             helper.make_node("Reshape", ["qkv", "heads"], ["r"], name="split"),
             helper.make_node("Transpose", ["r"], ["t"], name="heads_first", perm=[2, 0, 3, 1, 4])]
    for i, part in enumerate("qkv"):
        inits += [_init(f"s{i}", np.array([i], np.int64)), _init(f"e{i}", np.array([i + 1], np.int64))]
        nodes += [helper.make_node("Slice", ["t", f"s{i}", f"e{i}", "axis0"], [f"{part}5"], name=f"take_{part}"),
                  helper.make_node("Squeeze", [f"{part}5", "axis0"], [part], name=f"squeeze_{part}")]
    nodes += [helper.make_node("Transpose", ["k"], ["kT"], name="k_t", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kT"], ["scores"], name="scores"),
              helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"], name="attend"),
              helper.make_node("Transpose", ["o"], ["ot"], name="heads_last", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merged"], ["m"], name="merge"),
              helper.make_node("MatMul", ["m", "Wo"], ["y"], name="out_proj")]
    graph = helper.make_graph(nodes, "split_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 24])], inits)
    return _model(graph)


def make_nhwc_pool() -> onnx.ModelProto:
    """A channels-last export (tf2onnx, keras2onnx): the image comes in NHWC and a Transpose makes it NCHW;
    two Convs share one bias, and a tensor is named as onnxruntime.quantization would name that bias's
    copy (`b` + `0`); a MaxPool follows each Conv+Relu. ONNX Runtime's QDQ propagation moves the
    QuantizeLinear above the Transpose and above each MaxPool, so the MaxPool runs on INT8.

        x [1,16,16,3] -> transpose (0,3,1,2) -> conv a (bias b) -> relu -> b0 -> maxpool -> p1
                                                 conv c (bias b) <- p1 -> relu -> maxpool -> y [1,4,4,4]
    """
    rng = np.random.default_rng(13)
    inits = [_init("wa", rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32)),
             _init("wc", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)),
             _init("b", rng.normal(0, 0.1, (4,)).astype(np.float32))]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "wa", "b"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ca"], ["b0"], name="relu_a"),
             helper.make_node("MaxPool", ["b0"], ["p1"], name="pool_a", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "wc", "b"], ["cc"], name="conv_c", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["cc"], ["rc"], name="relu_c"),
             helper.make_node("MaxPool", ["rc"], ["y"], name="pool_c", kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "nhwc_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    return _model(graph)


def make_cnn_inputs() -> dict[str, np.ndarray]:
    """Example inputs for cnn.onnx: four smooth synthetic 32x32 colour patterns (gradients and rings),
    one sample per file; they are test data, labelled as such, not photos."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
    samples = {}
    for k in range(4):
        r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        img = np.stack([
            np.sin((k + 1) * 3.0 * xx + k),
            np.cos((k + 2) * 2.5 * yy - k),
            np.cos(12.0 * r * (k + 1) / 2.0),
        ])
        samples[f"sample{k}"] = img[None].astype(np.float32)
    return samples


def build_all() -> dict[str, onnx.ModelProto]:
    return {
        "cnn.onnx": make_cnn(),
        "transformer.onnx": make_transformer(),
        "fp16_overflow.onnx": make_fp16_overflow(),
        "dynamic_batch.onnx": make_dynamic_batch(),
        "if_model.onnx": make_if_model(),
        "qlinear_chain.onnx": (chain := make_qlinear_chain()),
        "qlinear_chain_qdq.onnx": make_qlinear_chain_qdq(chain, make_cnn_inputs()),
        "lstm_state.onnx": make_lstm_state(),
        "cse_twins.onnx": make_cse_twins(),
        "split_heads.onnx": make_split_heads(),
        "nhwc_pool.onnx": make_nhwc_pool(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare fixtures/ with a fresh build; write nothing")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    models = build_all()
    inputs = make_cnn_inputs()
    if args.check:
        stale = [name for name, m in models.items() if onnx.load(args.out / name) != m]
        for name, arr in inputs.items():
            with np.load(args.out / "cnn_inputs" / f"{name}.npz") as f:
                if not np.array_equal(f["input"], arr):
                    stale.append(f"cnn_inputs/{name}.npz")
        if stale:
            print("stale fixtures: " + ", ".join(stale) + "; run python scripts/make_fixtures.py", file=sys.stderr)
            return 1
        print("fixtures are up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        onnx.save(model, args.out / name)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")
    (args.out / "cnn_inputs").mkdir(exist_ok=True)
    for name, arr in inputs.items():
        np.savez(args.out / "cnn_inputs" / f"{name}.npz", input=arr)
    print(f"wrote {len(inputs)} samples to {args.out / 'cnn_inputs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
