import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from layerdiff.backends.ort import make_session
from layerdiff.graph import LOCAL_SUFFIX, from_proto, load_model
from layerdiff.rewrite import explode, expose_tensors
from tests.conftest import FIXTURES


def test_layers_in_topological_order_with_names():
    model = load_model(FIXTURES / "cnn.onnx")
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["conv1", "conv1_bn", "relu1"] and names[-1] == "softmax"
    seen = set(model.initializers) | {i.name for i in model.inputs}
    for layer in model.layers:
        assert all(t in seen for t in layer.inputs), layer.name
        seen.update(layer.outputs)


def test_unsorted_graph_is_sorted_and_unnamed_nodes_get_names():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [onnx.helper.make_node("Relu", ["a"], ["y"]), onnx.helper.make_node("Neg", ["x"], ["a"])]
    m = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]),
                               opset_imports=[onnx.helper.make_opsetid("", 17)])
    loaded = from_proto(m)
    assert [(lay.name, lay.op) for lay in loaded.layers] == [("Neg_0", "Neg"), ("Relu_1", "Relu")]
    assert {n.name for n in loaded.proto.graph.node} == {"Neg_0", "Relu_1"}


def test_if_node_is_one_layer_reading_outer_scope():
    model = load_model(FIXTURES / "if_model.onnx")
    layer = next(lay for lay in model.layers if lay.op == "If")
    assert layer.has_subgraph and set(layer.inputs) == {"cond", "h"}


def test_integer_tensors_are_known_not_float():
    model = load_model(FIXTURES / "dynamic_batch.onnx")
    assert {t for lay in model.layers for t in lay.outputs if not model.is_float(t)} == {"shape", "batch", "newshape"}


@pytest.mark.parametrize("name,feed", [
    ("cnn.onnx", {"input": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}),
    ("transformer.onnx", {"x": np.random.default_rng(0).random((1, 16, 32), dtype=np.float32)}),
    ("if_model.onnx", {"x": np.random.default_rng(0).random((1, 8), dtype=np.float32)}),
])
def test_exposed_tensors_match_onnx_reference(name, feed):
    """Every intermediate tensor exposed through ONNX Runtime equals onnx.reference's (pure numpy)."""
    model = load_model(FIXTURES / name)
    before = model.proto.SerializeToString()
    names = [t for lay in model.layers for t in lay.outputs if model.is_float(t)]
    ours = make_session(expose_tensors(model, names)).run(names, feed)
    inter = ReferenceEvaluator(onnx.load(FIXTURES / name)).run(None, feed, intermediate=True)
    for t in names:
        np.testing.assert_allclose(ours[t], inter[t], rtol=1e-4, atol=1e-5, err_msg=t)
    assert model.proto.SerializeToString() == before  # the loaded model is never edited, not even for a while


def test_exploded_graph_recomputes_each_layer_from_its_inputs():
    model = load_model(FIXTURES / "transformer.onnx")
    feed = {"x": np.random.default_rng(3).random((1, 16, 32), dtype=np.float32)}
    inter = ReferenceEvaluator(onnx.load(FIXTURES / "transformer.onnx")).run(None, feed, intermediate=True)
    exploded = explode(model, [(lay,) for lay in model.layers])
    sess = make_session(exploded.blob)
    local = sess.run(list(exploded.local.values()), {n: np.asarray(inter[n], np.float32) for n in sess.input_names})
    assert set(exploded.local) == {t for lay in model.layers for t in lay.outputs}
    assert set(exploded.feeds) == set(sess.input_names)
    for t, lt in exploded.local.items():
        assert lt == t + LOCAL_SUFFIX
        np.testing.assert_allclose(local[lt], inter[t], rtol=1e-4, atol=1e-5, err_msg=t)


def test_exploded_layer_reads_the_tensor_it_is_told_to():
    """A layer recomputed on another tensor than the one it names (the DequantizeLinear output a
    candidate's node really reads): the exploded graph takes it as an input of that name."""
    model = load_model(FIXTURES / "cnn.onnx")
    conv2 = model.by_name["conv2"]
    exploded = explode(model, [(conv2,)], lambda layer, slot, t: "relu1_rounded" if t == "relu1" else t)
    assert exploded.feeds == {"relu1_rounded": "relu1_rounded"}
    x = np.random.default_rng(0).random((1, 8, 32, 32), dtype=np.float32)
    out = make_session(exploded.blob).run([exploded.local["conv2_out"]], {"relu1_rounded": x})
    ref_model = onnx.load(FIXTURES / "cnn.onnx")
    w = onnx.numpy_helper.to_array(next(t for t in ref_model.graph.initializer if t.name == "conv2.weight"))
    b = onnx.numpy_helper.to_array(next(t for t in ref_model.graph.initializer if t.name == "conv2.bias"))
    want = _conv3x3(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out[exploded.local["conv2_out"]], want, rtol=1e-5, atol=1e-5)


def _conv3x3(x, w, b):
    """Conv2d, stride 1, padding 1, in float64 numpy (the oracle)."""
    n, c, h, wd = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([p[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=2)  # n c 9 h w
    return np.einsum("nckhw,ock->nohw", cols, w.reshape(w.shape[0], c, 9)) + b[None, :, None, None]


def test_unnamed_and_duplicate_names_never_collide():
    """A node named `Mul_1` before an unnamed Mul that would be called `Mul_1` too, and two nodes of the
    same name: every layer gets a name of its own, and ONNX Runtime still reads the model."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"], name="Mul_1"),
             helper.make_node("Mul", ["a", "a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"], name="dup"),
             helper.make_node("Neg", ["c"], ["y"], name="dup")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    loaded = from_proto(m)
    names = [lay.name for lay in loaded.layers]
    assert names == ["Mul_1", "Mul_1_1", "dup", "Neg_3"]
    assert [lay.named for lay in loaded.layers] == [True, False, True, False]
    assert len({n.name for n in loaded.proto.graph.node}) == 4
    out = make_session(loaded.blob).run(["y"], {"x": np.array([1.0, -2.0], np.float32)})
    np.testing.assert_array_equal(out["y"], [-1.0, -16.0])
