"""Pairing the model's layers with a candidate's by structure, never by names alone."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from layerdiff.graph import from_proto, load_model
from layerdiff.match import match_tensors
from tests.conftest import FIXTURES


def _chain(named: bool) -> onnx.ModelProto:
    """x -> Mul -> Mul -> Mul -> Mul -> y, weights w0..w3 (the converter below inserts Casts around it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    inits, nodes, prev = [], [], "x"
    for i in range(4):
        w = np.random.default_rng(i).normal(size=(8,)).astype(np.float32) + 1
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == 3 else f"t{i}"
        nodes.append(helper.make_node("Mul", [prev, f"w{i}"], [out], name=f"mul{i}" if named else ""))
        prev = out
    m = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_unnamed_chain_converted_by_onnxruntime_pairs_each_node_with_itself():
    """The report's finding: four unnamed Muls converted to FP16 by ONNX Runtime's converter paired every
    tensor with the previous one (names from each model's own topological index)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    ref = from_proto(_chain(named=False))
    cand = convert_float_to_float16(_chain(named=False), keep_io_types=True)
    assert [n.name for n in cand.graph.node if n.op_type == "Mul"] == ["", "", "", ""]
    pairing = match_tensors(ref, cand)
    assert {t: p.candidate for t, p in pairing.tensors.items()} == {
        "x": "x", "t0": "t0", "t1": "t1", "t2": "t2", "y": "graph_output_cast_0"}
    mul0 = ref.layers[0]
    assert pairing.read(mul0.name, 0, "x") == "graph_input_cast_0"  # what the candidate's first Mul reads


def test_a_name_that_contradicts_the_structure_is_ignored():
    """Candidate nodes renamed so that each carries the next node's name: structure wins."""
    ref = from_proto(_chain(named=True))
    cand = _chain(named=True)
    for i, node in enumerate(cand.graph.node):
        node.name = f"mul{(i + 1) % 4}"
    pairing = match_tensors(ref, cand)
    assert pairing.nodes == {"mul0": "mul1", "mul1": "mul2", "mul2": "mul3", "mul3": "mul0"}
    assert pairing.candidate("t1") == "t1"


def test_quantized_candidate_pairs_through_qdq_and_reads_the_dequantized_value():
    from layerdiff.backends.int8 import Int8Quantizer
    from layerdiff.inputs import load_samples

    model = load_model(FIXTURES / "cnn.onnx")
    q = Int8Quantizer(model, load_samples(FIXTURES / "cnn_inputs", model.inputs, {}))
    pairing = match_tensors(model, q.base)
    assert all(pairing.candidate(t) == t for lay in model.layers for t in lay.outputs)
    assert pairing.read("conv2", 0, "relu1") == "relu1_DequantizeLinear_Output"
    assert pairing.read("conv1_bn", 0, "conv1_out") == "conv1_out"  # an FP32 node reads the FP32 tensor


def test_a_candidate_from_onnxruntimes_default_quantizer_pairs_every_tensor(tmp_path):
    """onnxruntime.quantization's defaults drop the Relus (an unsigned INT8 range clips anyway) and an Identity
    may be gone: pairing continues past the missing node, and the Relu's row is the QuantizeLinear that does
    its work, with its rounding as local error, never a false divergence."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_static,
    )

    import layerdiff

    quantize_static(str(FIXTURES / "cnn.onnx"), str(tmp_path / "qs.onnx"), _cnn_reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    cand = onnx.load(tmp_path / "qs.onnx")
    assert "Relu" not in {n.op_type for n in cand.graph.node}
    report = layerdiff.compare(FIXTURES / "cnn.onnx", str(tmp_path / "qs.onnx"), inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    # the residual Add's INT8 kernel (QLinearAdd) writes Relu(Add) rounded: the Add's own output exists
    # nowhere, so Add and Relu are one row (it was compared with the clipped value: local cosine 0.927)
    assert report.counts.float_tensors == 18 and report.counts.compared == 17 and report.counts.fused_away == 1
    add = report.layer("residual_add")
    assert add.op == "Add+Relu" and add.kernels == ("QLinearAdd",) and add.local_cosine > 0.999
    relu1 = report.layer("relu1")
    assert relu1.precision == "int8" and relu1.kernels == ("QuantizeLinear",)
    assert relu1.outputs[0].view == "quantized" and relu1.local_cosine > 0.9999
    assert not any(lay.kind == "conversion" and lay.converts == "conv1_bn" for lay in report.layers)


def test_a_candidate_with_batchnorm_folded_into_its_convs_blames_no_conv(tmp_path):
    """The trial's finding: after onnxruntime's quant_pre_process (which folds each BatchNormalization into
    the Conv before it) the candidate's Conv was paired with the model's Conv alone, and its BatchNorm
    counted as a 0.83-cosine error. The folded Conv's value is the model's BatchNormalization output: the
    two are one row, the tensor between them is fused away, and no row diverges."""
    from onnxruntime.quantization import (
        QuantFormat,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import layerdiff

    quant_pre_process(str(FIXTURES / "cnn.onnx"), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(tmp_path / "pre.onnx").graph.node}
    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "q.onnx"), _cnn_reader(), quant_format=QuantFormat.QDQ)
    report = layerdiff.compare(FIXTURES / "cnn.onnx", str(tmp_path / "q.onnx"), inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    assert report.first_divergence is None
    conv1 = report.layer("conv1")
    assert [n for n in conv1.onnx_nodes] == ["conv1", "conv1_bn"]
    between = next(o for o in conv1.outputs if o.tensor == "conv1_out")
    assert not between.paired and between.unpaired_reason.startswith("fused inside the candidate's Conv node")
    assert min(lay.local_cosine for lay in report.layers if lay.local_cosine is not None) > 0.999
    assert report.counts.unpaired == 0


def test_a_removed_identity_does_not_break_the_pairing():
    ref = from_proto(_with_identity())
    cand = _with_identity()
    ident = next(n for n in cand.graph.node if n.op_type == "Identity")
    for n in cand.graph.node:
        n.input[:] = [ident.input[0] if t == ident.output[0] else t for t in n.input]
    cand.graph.node.remove(ident)
    pairing = match_tensors(ref, cand)
    assert pairing.candidate("t1") == "t0" and pairing.candidate("y") == "y"  # the Identity's value: its input's


def _with_identity() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("Relu", ["x"], ["t0"], name="relu"),
             helper.make_node("Identity", ["t0"], ["t1"], name="ident"),
             helper.make_node("Neg", ["t1"], ["y"], name="neg")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_qoperator_candidate_says_why_few_layers_pair(tmp_path):
    from onnxruntime.quantization import (
        QuantFormat,
        quantize_static,
    )

    import layerdiff

    quantize_static(str(FIXTURES / "cnn.onnx"), str(tmp_path / "qop.onnx"), _cnn_reader(), quant_format=QuantFormat.QOperator)
    report = layerdiff.compare(FIXTURES / "cnn.onnx", str(tmp_path / "qop.onnx"), inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    note = next(w for w in report.warnings if w.startswith("the candidate computes with integer operators"))
    paired = sum(1 for lay in report.layers if lay.kind == "layer" and any(o.paired for o in lay.outputs))
    assert "QLinearConv" in note and f"of {report.counts.layers} layers could be paired" in note
    assert paired < report.counts.layers


def _cnn_reader():
    """onnxruntime.quantization's calibration reader over the CNN fixture's samples."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": np.load(f)["input"]} for f in sorted((FIXTURES / "cnn_inputs").glob("*.npz"))])

        def get_next(self):
            return next(self.feeds, None)

    return Reader()
