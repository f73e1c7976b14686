"""Engine layer information, tested on every real file in ../shared/fixtures/trt_engine_info/."""

import json
import re

import pytest
from onnx import TensorProto, helper

from layerdiff.engine_info import EngineInfoError, format_precision, parse_engine_info
from layerdiff.engine_info.origin import metadata_nodes, split_name
from layerdiff.graph import from_proto
from tests.conftest import FIXTURES, SHARED

INFO_DIR = SHARED / "fixtures" / "trt_engine_info"
LAYER_FILES = {
    "cookbook_mnist_fp32_trt10161.layerinfo.json": 9,
    "fuzzylabs_alexnet_fp16_trt10x.graph.json": 14,
    "fuzzylabs_resnet18_fp16_trt10x.graph.json": 26,
    "fuzzylabs_resnet18_onnx_pyapi_fp32_trt101.engine_info.json": 29,
    "fuzzylabs_resnet18_torchtrt_fp16_trt10x.engine_layer_information.json": 26,
    "trex_mobilenet_qat_int8_trt84.graph.json": 73,
    "trex_resnet18_a100_fp16_trt84.graph.json": 36,
    "trex_resnet18_a100_fp32_trt84.graph.json": 32,
    "trex_resnet18_a100_qat_int8_trt84.graph.json": 37,
    "trex_tf_resnet50_rtx3090_qat_int8_trt84ea.graph.json": 63,
    "trex_v010_mobilenet_qat_int8_trt82.graph.json": 85,
    "trt2023_controlnet_fp16_trt86.layerinfo.json": 388,
}
KNOWN = {"fp32", "tf32", "fp16", "bf16", "int8", "fp8", "int32", "int64"}


@pytest.fixture
def info_dir(shared_dir):
    return INFO_DIR


def _layer(info, name):
    return next(layer for layer in info.layers if layer.name == name)


# TRT 8.x files have no Metadata: their ONNX nodes come from the layer names alone. Which parts of a name are
# nodes follows from the exporter that named the model, independently of layerdiff's grammar:
#  - the legacy torch.onnx exporter names every node `<OpType>_<n>` (`Conv_9`, `QuantizeLinear_7`, `Clip_16`);
#    weights (`conv1.weight`) and TensorRT's names (`(Unnamed Layer* 849) [Shuffle]`, `reshape_after_Gemm_48`,
#    `copied_squeeze_after_...`) never have that form on their own;
#  - tf2onnx names nodes after TF ops (`resnet50/...`) or `QuantLinearNode__<n>`; `...:0` are tensors, and
#    `transpose_before_...`, `unsqueeze_node_after_...`, `(Unnamed Layer* n)` are TensorRT's.
_TORCH_NODE = re.compile(r"(?<![\w.])[A-Z][A-Za-z]*_\d+(?![\w.])")


def _torch_nodes(name: str) -> tuple[str, ...]:
    return tuple(_TORCH_NODE.findall(name))


def _tf2onnx_nodes(name: str) -> tuple[str, ...]:
    assert "PWN(" not in name and " || " not in name  # true of every name in that file: ' + ' splits it
    return tuple(p for p in name.split(" + ")
                 if re.fullmatch(r"resnet50/\S+|QuantLinearNode__\d+", p) and not p.endswith(":0"))


NAME_RULES = {
    "trex_v010_mobilenet_qat_int8_trt82.graph.json": _torch_nodes,
    "trex_mobilenet_qat_int8_trt84.graph.json": _torch_nodes,
    "trex_resnet18_a100_fp16_trt84.graph.json": _torch_nodes,
    "trex_resnet18_a100_fp32_trt84.graph.json": _torch_nodes,
    "trex_resnet18_a100_qat_int8_trt84.graph.json": _torch_nodes,
    "trex_tf_resnet50_rtx3090_qat_int8_trt84ea.graph.json": _tf2onnx_nodes,
}
_COPY = "Reformatting CopyNode for "


@pytest.mark.parametrize("name", sorted(LAYER_FILES))
def test_every_real_file_parses_with_known_precisions_and_onnx_nodes(info_dir, name):
    info = parse_engine_info(info_dir / name)
    raw = json.loads((info_dir / name).read_text())
    assert info.kind == "detailed-json" and len(info.layers) == LAYER_FILES[name]
    for layer, rec in zip(info.layers, raw["Layers"], strict=True):
        if layer.type == "shape_call":
            assert layer.precision == "unknown"  # explicitly unknown: it computes shapes, no tensor data
        else:
            assert layer.precision in KNOWN, (layer.name, layer.precision)
        recorded, _ = metadata_nodes(rec.get("Metadata"))
        if recorded:  # the file records ONNX nodes for this layer: all of them are found
            assert list(layer.onnx_nodes) == list(dict.fromkeys(recorded)) and layer.origin == "metadata"
        elif rec["Name"].startswith(_COPY):  # a TensorRT copy: serves the layer named after " to ", no node
            assert layer.serves == rec["Name"].partition(" to ")[2], layer.name
            assert layer.onnx_nodes == () and layer.origin == "none" and layer.is_reformat
        elif name in NAME_RULES:
            want = NAME_RULES[name](rec["Name"])
            assert layer.onnx_nodes == want and layer.serves is None, layer.name
            assert layer.origin == ("name" if want else "none")
        assert rec.get("Origin") != "REFORMAT" or rec["Name"].startswith(_COPY)


# a few layers per TRT 8.x file, typed out from the file: name -> ONNX nodes
TRT8_NAMES = {
    "trex_v010_mobilenet_qat_int8_trt82.graph.json": {
        "QuantizeLinear_2": ("QuantizeLinear_2",),  # a Scale layer in TRT 8.2
        "features.0.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)": ("QuantizeLinear_8", "Conv_12", "Clip_16"),
        "features.3.conv.2.weight + QuantizeLinear_138 + Conv_142 + Add_144":
            ("QuantizeLinear_138", "Conv_142", "Add_144"),
        "classifier.1.weight + QuantizeLinear_860 + Gemm_864 + classifier.1.bias + (Unnamed Layer* 849) [Shuffle] + "
        "unsqueeze_node_after_classifier.1.bias + (Unnamed Layer* 849) [Shuffle]_(Unnamed Layer* 849) "
        "[Shuffle]_output + (Unnamed Layer* 850) [ElementWise]": ("QuantizeLinear_860", "Gemm_864"),
        "copied_squeeze_after_(Unnamed Layer* 850) [ElementWise]": (),
    },
    "trex_mobilenet_qat_int8_trt84.graph.json": {
        "QuantizeLinear_2": ("QuantizeLinear_2",),  # a Reformat with Origin QDQ: the quantize node itself
        "features.1.conv.0.0.weight + QuantizeLinear_25 + Conv_29 + PWN(Clip_33)":
            ("QuantizeLinear_25", "Conv_29", "Clip_33"),
        "features.17.conv.2.weight + QuantizeLinear_820 + Conv_824": ("QuantizeLinear_820", "Conv_824"),
        "GlobalAveragePool_843": ("GlobalAveragePool_843",),
    },
    "trex_resnet18_a100_fp16_trt84.graph.json": {
        "Conv_5 + Add_6 + Relu_7": ("Conv_5", "Add_6", "Relu_7"),
        "MaxPool_2": ("MaxPool_2",),
        "Gemm_48": ("Gemm_48",),
        "reshape_after_Gemm_48": (),
    },
    "trex_resnet18_a100_fp32_trt84.graph.json": {
        "Conv_0 + Relu_1": ("Conv_0", "Relu_1"),
        "Conv_15": ("Conv_15",),
        "GlobalAveragePool_46": ("GlobalAveragePool_46",),
        "reshape_after_Gemm_48": (),
    },
    "trex_resnet18_a100_qat_int8_trt84.graph.json": {
        "conv1.weight + QuantizeLinear_7 + Conv_9": ("QuantizeLinear_7", "Conv_9"),
        "layer1.0.conv2.weight + QuantizeLinear_32 + Conv_34 + Add_36 + Relu_37":
            ("QuantizeLinear_32", "Conv_34", "Add_36", "Relu_37"),
        "fc.weight + QuantizeLinear_255 + Gemm_257 + fc.bias + (Unnamed Layer* 306) [Shuffle] + "
        "unsqueeze_node_after_fc.bias + (Unnamed Layer* 306) [Shuffle]_(Unnamed Layer* 306) [Shuffle]_output + "
        "(Unnamed Layer* 307) [ElementWise]": ("QuantizeLinear_255", "Gemm_257"),
        "copied_squeeze_after_(Unnamed Layer* 307) [ElementWise]": (),
    },
    "trex_tf_resnet50_rtx3090_qat_int8_trt84ea.graph.json": {
        "resnet50/conv1_pad/Pad": ("resnet50/conv1_pad/Pad",),
        "resnet50/quant_conv1_conv/BiasAdd__1121": ("resnet50/quant_conv1_conv/BiasAdd__1121",),
        "resnet50/quant_conv1_conv/LastValueQuant/QuantizeAndDequantizeV4/ReadVariableOp:0 + QuantLinearNode__622 + "
        "resnet50/quant_conv1_conv/BiasAdd": ("QuantLinearNode__622", "resnet50/quant_conv1_conv/BiasAdd"),
        "resnet50/quant_conv2_block1_3_conv/LastValueQuant/QuantizeAndDequantizeV4/ReadVariableOp:0 + "
        "QuantLinearNode__638 + resnet50/quant_conv2_block1_3_conv/Conv2D + resnet50/quant_conv2_block1_add/add + "
        "resnet50/conv2_block1_out/Relu": ("QuantLinearNode__638", "resnet50/quant_conv2_block1_3_conv/Conv2D",
                                           "resnet50/quant_conv2_block1_add/add", "resnet50/conv2_block1_out/Relu"),
        "resnet50/quant_predictions/LastValueQuant/QuantizeAndDequantizeV4/ReadVariableOp:0 + QuantLinearNode__834 + "
        "transpose_before_resnet50/quant_predictions/MatMul + resnet50/quant_predictions/MatMul + "
        "resnet50/quant_predictions/BiasAdd/ReadVariableOp:0 + (Unnamed Layer* 478) [Shuffle] + "
        "unsqueeze_node_after_resnet50/quant_predictions/BiasAdd/ReadVariableOp:0 + (Unnamed Layer* 478) "
        "[Shuffle]_(Unnamed Layer* 478) [Shuffle]_output + resnet50/quant_predictions/BiasAdd":
            ("QuantLinearNode__834", "resnet50/quant_predictions/MatMul", "resnet50/quant_predictions/BiasAdd"),
        "copied_squeeze_after_resnet50/quant_predictions/BiasAdd": (),
    },
}
TRT8_COPIES = {  # copy layers typed out from the files -> the layer they serve
    "trex_v010_mobilenet_qat_int8_trt82.graph.json": {
        "Reformatting CopyNode for Output Tensor 0 to features.2.conv.2.weight + QuantizeLinear_90 + Conv_94":
            "features.2.conv.2.weight + QuantizeLinear_90 + Conv_94"},
    "trex_mobilenet_qat_int8_trt84.graph.json": {
        "Reformatting CopyNode for Input Tensor 0 to GlobalAveragePool_843": "GlobalAveragePool_843"},
    "trex_resnet18_a100_fp16_trt84.graph.json": {
        "Reformatting CopyNode for Input Tensor 1 to Conv_5 + Add_6 + Relu_7": "Conv_5 + Add_6 + Relu_7"},
    "trex_resnet18_a100_fp32_trt84.graph.json": {
        "Reformatting CopyNode for Output Tensor 0 to MaxPool_2": "MaxPool_2"},
    "trex_resnet18_a100_qat_int8_trt84.graph.json": {
        "Reformatting CopyNode for Output Tensor 0 to MaxPool_12": "MaxPool_12"},
    "trex_tf_resnet50_rtx3090_qat_int8_trt84ea.graph.json": {
        "Reformatting CopyNode for Input Tensor 0 to copied_squeeze_after_resnet50/quant_predictions/BiasAdd":
            "copied_squeeze_after_resnet50/quant_predictions/BiasAdd"},
}


@pytest.mark.parametrize("name", sorted(TRT8_NAMES))
def test_trt8_onnx_nodes_from_layer_names(info_dir, name):
    """TRT 8.2/8.4 files have no Metadata: the nodes are the node-like parts of each name, without a model."""
    info = parse_engine_info(info_dir / name)
    by_name = {layer.name: layer for layer in info.layers}
    for layer_name, want in TRT8_NAMES[name].items():
        layer = by_name[layer_name]  # KeyError: the name is not in the file as typed
        assert layer.onnx_nodes == want and layer.serves is None, layer_name
        assert layer.origin == ("name" if want else "none")
    for layer_name, served in TRT8_COPIES.get(name, {}).items():
        layer = by_name[layer_name]
        assert (layer.serves, layer.onnx_nodes, layer.is_reformat) == (served, (), True)


def test_trt84_qat_int8_conv_fuses_quantize_and_keeps_int8(info_dir):
    info = parse_engine_info(info_dir / "trex_resnet18_a100_qat_int8_trt84.graph.json")
    conv = _layer(info, "conv1.weight + QuantizeLinear_7 + Conv_9")
    assert conv.precision == "int8" and conv.onnx_nodes == ("QuantizeLinear_7", "Conv_9")
    assert conv.outputs[0].precision == "fp32"  # Int8 in -> FP32 out, as the file says
    copy = _layer(info, "Reformatting CopyNode for Output Tensor 0 to MaxPool_12")
    assert copy.serves == "MaxPool_12" and copy.onnx_nodes == () and copy.is_reformat


def test_fp32_engine_on_ampere_runs_tf32(info_dir):
    info = parse_engine_info(info_dir / "trex_resnet18_a100_fp32_trt84.graph.json")
    convs = [layer for layer in info.layers if layer.type == "CaskConvolution"]
    assert convs and {layer.precision for layer in convs} <= {"tf32", "fp32"}
    assert any(layer.precision == "tf32" for layer in convs)


def test_fp16_bindings_with_fp32_compute(info_dir):
    info = parse_engine_info(info_dir / "fuzzylabs_resnet18_onnx_pyapi_fp32_trt101.engine_info.json")
    convs = [layer for layer in info.layers if layer.type == "CaskConvolution"]
    assert {layer.precision for layer in convs} <= {"fp32", "tf32"}
    assert info.layers[0].inputs[0].precision == "fp16"  # the FP16 binding, reformatted to FP32


def test_myelin_records_and_bare_type_names(info_dir):
    alex = parse_engine_info(info_dir / "fuzzylabs_alexnet_fp16_trt10x.graph.json")
    gemm = _layer(alex, "/classifier/classifier_1/Gemm_myl9_2")
    assert gemm.onnx_nodes == ("/classifier/classifier.1/Gemm", "/classifier/classifier.2/Relu")
    assert gemm.precision == "fp16"  # the Float alpha/beta constants do not make it FP32
    mnist = parse_engine_info(info_dir / "cookbook_mnist_fp32_trt10161.layerinfo.json")
    assert _layer(mnist, "node_conv2d + node_relu").precision == "fp32"
    assert _layer(mnist, "node_conv2d + node_relu").onnx_nodes == ("node_conv2d", "node_relu")


def test_trt86_horizontal_merge_trailing_separator_and_myelin_regions(info_dir):
    info = parse_engine_info(info_dir / "trt2023_controlnet_fp16_trt86.layerinfo.json")
    merged = next(layer for layer in info.layers if layer.type == "CaskGemmConvolution" and " || " in layer.name)
    assert len(merged.onnx_nodes) == 10 and all(n.endswith("/Gemm") for n in merged.onnx_nodes)
    raw = json.loads((info_dir / "trt2023_controlnet_fp16_trt86.layerinfo.json").read_text())["Layers"]
    trailing = [r for r in raw if r.get("Metadata", "").endswith("\x1e")]
    assert len(trailing) == 27
    for rec in trailing:
        assert "" not in _layer(info, rec["Name"]).onnx_nodes
    regions = [layer for layer in info.layers if layer.type == "Myelin"]
    assert len(regions) == 7 and all(layer.origin == "name" and layer.onnx_nodes for layer in regions)


def test_torch_tensorrt_engine_has_no_onnx_nodes(info_dir):
    info = parse_engine_info(info_dir / "fuzzylabs_resnet18_torchtrt_fp16_trt10x.engine_layer_information.json")
    assert all(layer.onnx_nodes == () for layer in info.layers)
    assert {layer.precision for layer in info.layers} == {"fp16"}


def test_profile_and_metadata_files_are_refused(info_dir):
    with pytest.raises(EngineInfoError, match="is a trtexec --exportProfile timing file, not layer information"):
        parse_engine_info(info_dir / "trex_mobilenet_qat_int8_trt84.profile.json")
    for side in ("trex_mobilenet_qat_int8_trt84.build.metadata.json",
                 "trex_mobilenet_qat_int8_trt84.profile.metadata.json"):
        with pytest.raises(EngineInfoError, match="metadata file"):
            parse_engine_info(info_dir / side)


def test_truncated_file_is_refused(info_dir, tmp_path):
    cut = tmp_path / "cut.json"
    cut.write_text((info_dir / "trex_resnet18_a100_fp16_trt84.graph.json").read_text()[:5000])
    with pytest.raises(EngineInfoError, match="it may be truncated"):
        parse_engine_info(cut)


def test_per_layer_dumps_with_separators(info_dir, tmp_path):
    """Layer objects of a real file, dumped one by one as get_layer_information(i) users write them."""
    layers = json.loads((info_dir / "fuzzylabs_alexnet_fp16_trt10x.graph.json").read_text())["Layers"]
    dump = "".join(f"--- Layer {i} ---\n{json.dumps(layer, indent=2)}\n" for i, layer in enumerate(layers))
    (tmp_path / "dump.txt").write_text(dump)
    info = parse_engine_info(tmp_path / "dump.txt")
    whole = parse_engine_info(info_dir / "fuzzylabs_alexnet_fp16_trt10x.graph.json")
    assert info.kind == "per-layer-json"
    assert [(x.name, x.precision, x.onnx_nodes) for x in info.layers] == \
        [(x.name, x.precision, x.onnx_nodes) for x in whole.layers]
    (tmp_path / "one.json").write_text(json.dumps(layers[1]))
    assert parse_engine_info(tmp_path / "one.json").layers[0].precision == "fp16"


def test_names_only_json(tmp_path):
    """Variant B (trtexec without detailed verbosity): names, no types."""
    names = ["Reformatting CopyNode for Input Tensor 0 to conv1 + relu1", "conv1 + relu1",
             "PWN(PWN(/act/Sigmoid), /act/Mul)", "{ForeignNode[/fc1/MatMul.../fc2/Add]}"]
    (tmp_path / "names.json").write_text(json.dumps({"Layers": names, "Bindings": ["x", "y"]}))
    info = parse_engine_info(tmp_path / "names.json")
    assert info.kind == "names-only-json" and info.bindings == ("x", "y")
    assert [layer.precision for layer in info.layers] == ["unknown"] * 4
    assert [layer.onnx_nodes for layer in info.layers] == [
        (), ("conv1", "relu1"), ("/act/Sigmoid", "/act/Mul"), ("/fc1/MatMul", "/fc2/Add")]


def test_trtexec_verbose_log(tmp_path):
    """Variant H, in the two line shapes trtexec has printed (TRT 8.x and later)."""
    log = "\n".join([
        "[11/20/2026-10:00:00] [V] [TRT] Engine Layer Information:",
        "[11/20/2026-10:00:00] [V] [TRT] Layer(CaskConvolution): conv1_h + conv1_relu, Tactic: 1062367460111450758, "
        "data_bn[Float(-2,3,300,300)] -> conv1_h[Half(-2,32,150,150)]",
        "[11/20/2026-10:00:00] [V] [TRT] Layer(Reformat): Reformatting CopyNode for Output Tensor 0 to conv1_pool, "
        "Tactic: 0x0000000000000000, Reformatted Output Tensor 0 to conv1_pool (Float[1,32,75,75]) -> conv1_pool "
        "(Half[1,32:8,75,75])",
        "[11/20/2026-10:00:00] [V] [TRT] Layer(CaskConvolution): l1_conv2 + l1_sum, Tactic: 0x00000000000003ea, "
        "l1_conv1 (Int8[1,32:32,75,75]), conv1_pool (Int8[1,32:32,75,75]) -> l1_sum (Int8[1,32:32,75,75])",
        "[11/20/2026-10:00:01] [I] [TRT] [MemUsageChange] done",
    ])
    (tmp_path / "build.log").write_text(log)
    info = parse_engine_info(tmp_path / "build.log")
    assert info.kind == "verbose-log" and len(info.layers) == 3
    conv, copy, add = info.layers
    assert conv.onnx_nodes == ("conv1_h", "conv1_relu") and conv.precision == "fp32"
    assert conv.inputs[0].dims == (-2, 3, 300, 300) and conv.outputs[0].precision == "fp16"
    assert copy.serves == "conv1_pool" and copy.precision == "fp16"
    assert [t.name for t in add.inputs] == ["l1_conv1", "conv1_pool"] and add.precision == "int8"
    assert add.inputs[0].dims == (1, 32, 75, 75)


@pytest.mark.parametrize("fmt,want", [
    ("Row major linear FP32", "fp32"), ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"), ("Float", "fp32"), ("Half", "fp16"),
    ("Row major linear BFloat16 format", "bf16"), ("BFloat16", "bf16"), ("Row major linear FP8 format", "fp8"),
    ("Row major linear UInt8 format", "uint8"), ("Channel major INT8 format where channel % 16 == 0", "int8"),
    ("Int32", "int32"), ("Row major linear BOOL", "bool"), ("N/A due to dynamic shapes", "unknown"), ("", "unknown"),
])
def test_format_precision(fmt, want):
    assert format_precision(fmt) == want


def test_name_grammar():
    assert split_name("/conv/Conv + PWN(PWN(/act/Sigmoid), /act/Mul)") == ["/conv/Conv", "/act/Sigmoid", "/act/Mul"]
    assert split_name("a || b || c") == ["a", "b", "c"]
    assert split_name("(Unnamed Layer* 58) [ElementWise] + x") == ["(Unnamed Layer* 58) [ElementWise]", "x"]


def _chain_model(names):
    nodes, prev = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Relu", [prev], [f"t{i}"], name=name))
        prev = f"t{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return from_proto(m)


def test_with_model_myelin_names_and_foreign_node_ranges(tmp_path):
    model = _chain_model(["/fc1/MatMul", "/fc1/Relu", "/classifier/classifier.1/Gemm", "/fc2/Add"])
    names = ["{ForeignNode[/fc1/MatMul + conv.weight.../fc2/Add]}", "/classifier/classifier_1/Gemm_myl9_2"]
    (tmp_path / "n.json").write_text(json.dumps({"Layers": names}))
    info = parse_engine_info(tmp_path / "n.json", model)
    assert info.layers[0].onnx_nodes == ("/fc1/MatMul", "/fc1/Relu", "/classifier/classifier.1/Gemm", "/fc2/Add")
    assert info.layers[1].onnx_nodes == ("/classifier/classifier.1/Gemm",)


def _readers_model():
    """input -> Relu_1 -> Mul_2 (x input) -> Add_3 (+ conv1.weight) -> Relu_4 -> Mul_137 (x 270) -> Relu_138
    -> Add_139 (+ 270) -> Sub_140 (- conv1.weight). Each initializer and the graph input has two readers."""
    def node(op, ins, name):
        return helper.make_node(op, ins, [f"{name}_out"], name=name)
    nodes = [node("Relu", ["input"], "Relu_1"), node("Mul", ["Relu_1_out", "input"], "Mul_2"),
             node("Add", ["Mul_2_out", "conv1.weight"], "Add_3"), node("Relu", ["Add_3_out"], "Relu_4"),
             node("Mul", ["Relu_4_out", "270"], "Mul_137"), node("Relu", ["Mul_137_out"], "Relu_138"),
             node("Add", ["Relu_138_out", "270"], "Add_139"), node("Sub", ["Add_139_out", "conv1.weight"], "Sub_140")]
    weights = [helper.make_tensor(n, TensorProto.FLOAT, [1, 4], [0.5] * 4) for n in ("conv1.weight", "270")]
    g = helper.make_graph(nodes, "readers", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("Sub_140_out", TensorProto.FLOAT, [1, 4])], weights)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return from_proto(m)


def test_initializers_and_graph_inputs_in_layer_names_resolve_to_their_first_reader(tmp_path):
    """A trtexec --verbose log whose names hold an initializer at the start of a ForeignNode range (`270`, as in
    a real log's `{ForeignNode[270...Add_139]}`), a dotted initializer in a fusion and a graph input: each is
    the first node, in topological order, that reads it."""
    lines = [
        ("Myelin", "{ForeignNode[input...Mul_2]}", "input (Float[1,4]) -> Mul_2_out (Float[1,4])"),
        ("Reformat", "Reformatting CopyNode for Input Tensor 0 to conv1.weight + Relu_4",
         "Mul_2_out (Float[1,4]) -> Reformatted Input Tensor 0 to conv1.weight + Relu_4 (Half[1,4])"),
        ("ElementWise", "conv1.weight + Relu_4", "Mul_2_out (Half[1,4]) -> Relu_4_out (Half[1,4])"),
        ("Myelin", "{ForeignNode[270...Add_139]}", "Relu_4_out (Half[1,4]) -> Add_139_out (Half[1,4])"),
        ("ElementWise", "Sub_140", "Add_139_out (Half[1,4]) -> Sub_140_out (Float[1,4])"),
    ]
    log = "\n".join(["[V] [TRT] Engine Layer Information:"]
                    + [f"[V] [TRT] Layer({t}): {n}, Tactic: 0x0, {io}" for t, n, io in lines])
    (tmp_path / "build.log").write_text(log)
    info = parse_engine_info(tmp_path / "build.log", _readers_model())
    assert info.kind == "verbose-log"
    assert [layer.onnx_nodes for layer in info.layers] == [
        ("Relu_1", "Mul_2"),  # input: read by Relu_1, then Mul_2
        (),  # a copy
        ("Add_3", "Relu_4"),  # conv1.weight: read by Add_3, then Sub_140
        ("Mul_137", "Relu_138", "Add_139"),  # 270: read by Mul_137, then Add_139
        ("Sub_140",),
    ]
    assert info.layers[1].serves == "conv1.weight + Relu_4"
    # without a model, tensor-like parts cannot be resolved and are dropped (`input` looks like a node name)
    plain = parse_engine_info(tmp_path / "build.log")
    assert [layer.onnx_nodes for layer in plain.layers] == [
        ("input", "Mul_2"), (), ("Relu_4",), ("Add_139",), ("Sub_140",)]


@pytest.mark.parametrize("layer_name,want", [
    ("PWN(270, Relu_138)", ("Mul_137", "Relu_138")),  # a PWN argument
    ("Relu_4 || conv1.weight", ("Relu_4", "Add_3")),  # a horizontal-merge part, in the name's order
    ("{ForeignNode[Relu_138...270]}", ("Mul_137", "Relu_138")),  # the last end of a range; the range is ordered
    ("{ForeignNode[conv1.weight + (Unnamed Layer* 9) [Shuffle]...Relu_4]}", ("Add_3", "Relu_4")),
    ("input", ("Relu_1",)),
    ("Mul_2_out + Relu_4", ("Relu_4",)),  # an intermediate tensor is no initializer nor graph input
])
def test_first_reader_rule_applies_to_every_part(tmp_path, layer_name, want):
    (tmp_path / "names.json").write_text(json.dumps({"Layers": [layer_name]}))
    assert parse_engine_info(tmp_path / "names.json", _readers_model()).layers[0].onnx_nodes == want


def test_metadata_names_must_be_nodes_not_tensors(tmp_path):
    """Metadata records name ONNX nodes exactly: an initializer's name there is not resolved to its reader."""
    layer = {"Name": "x", "LayerType": "kgen", "Inputs": [], "Outputs": [], "Metadata": "[ONNX Layer: conv1.weight]"}
    (tmp_path / "md.json").write_text(json.dumps({"Layers": [layer]}))
    with pytest.raises(EngineInfoError, match=r"names 1 ONNX node\(s\) that <memory> does not have \(conv1.weight\)"):
        parse_engine_info(tmp_path / "md.json", _readers_model())


def test_engine_info_from_another_model(info_dir, cli):
    code, _, err = cli("inspect", info_dir / "fuzzylabs_alexnet_fp16_trt10x.graph.json", "--model", FIXTURES / "cnn.onnx")
    assert code == 2
    assert err == (f"layerdiff: error: engine info {info_dir / 'fuzzylabs_alexnet_fp16_trt10x.graph.json'} names 19 "
                   f"ONNX node(s) that {FIXTURES / 'cnn.onnx'} does not have (/features/features.0/Conv, "
                   "/features/features.1/Relu, /features/features.2/MaxPool, ...): it was built from another "
                   "model; give the ONNX model the engine was built from\n")


@pytest.mark.parametrize("name", ["trex_resnet18_a100_qat_int8_trt84.graph.json",
                                  "trex_tf_resnet50_rtx3090_qat_int8_trt84ea.graph.json",
                                  "trex_v010_mobilenet_qat_int8_trt82.graph.json"])
def test_a_names_only_file_from_another_model(info_dir, cli, name):
    """The trial's finding: files without Metadata (TREx, TensorRT 8) were resolved against any model
    silently, one layer even mapped to a node by a coincidence of weight names."""
    code, _, err = cli("inspect", info_dir / name, "--model", FIXTURES / "cnn.onnx")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"layerdiff: error: engine info {info_dir / name} names ")
    assert err.endswith("it was built from another model; give the ONNX model the engine was built from\n")


def test_a_names_only_file_with_its_model_resolves_without_complaint(tmp_path):
    names = ["Relu_1 + Mul_2", "Reformatting CopyNode for Input Tensor 0 to Add_3", "Add_3", "Renamed_by_trt_77"]
    (tmp_path / "n.json").write_text(json.dumps({"Layers": names}))
    info = parse_engine_info(tmp_path / "n.json", _readers_model())
    assert [layer.onnx_nodes for layer in info.layers] == [("Relu_1", "Mul_2"), (), ("Add_3",), ()]


def test_inspect_json(info_dir, cli):
    code, out, _ = cli("inspect", info_dir / "trex_resnet18_a100_qat_int8_trt84.graph.json", "--json")
    assert code == 0
    d = json.loads(out)
    layer = d["layers"][1]
    assert set(layer) >= {"name", "type", "precision", "onnx_nodes", "inputs", "outputs"}
    assert layer["precision"] == "int8" and layer["onnx_nodes"] == ["QuantizeLinear_7", "Conv_9"]


def test_inspect_table(info_dir, cli):
    code, out, _ = cli("inspect", info_dir / "fuzzylabs_alexnet_fp16_trt10x.graph.json")
    assert code == 0 and "14 engine layers; precisions: fp16 13, unknown 1" in out


def test_inspect_table_at_80_columns_keeps_names_whole(info_dir, cli, monkeypatch):
    """A new user read `QuantizeLinear_` and `2` on two lines of the 80-column table: short names stay
    whole, and the one-word columns keep to one line."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli("inspect", info_dir / "trex_mobilenet_qat_int8_trt84.graph.json")
    assert code == 0
    lines = out.splitlines()[1:]  # the summary line above it is prose, never broken when piped
    assert all(len(line.rstrip()) <= 80 for line in lines)
    first = next(line for line in lines if line.strip().startswith("0 "))
    assert first.split()[1:] == ["QuantizeLinear_2", "Reformat", "int8", "QuantizeLinear_2", "name"]


def test_missing_and_empty_engine_info(cli, tmp_path):
    code, _, err = cli("inspect", tmp_path / "none.json")
    assert (code, err) == (2, f"layerdiff: error: engine info not found: {tmp_path / 'none.json'}\n")
    (tmp_path / "empty.json").write_text("  \n")
    code, _, err = cli("inspect", tmp_path / "empty.json")
    assert (code, err) == (2, f"layerdiff: error: engine info {tmp_path / 'empty.json'} is empty\n")
