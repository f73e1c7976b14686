import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from layerdiff.backends.ort import make_session
from layerdiff.graph import LOCAL_SUFFIX, explode, expose_tensors, load_model
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
    from layerdiff.graph import from_proto

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
    names = [t for lay in model.layers for t in lay.outputs if model.is_float(t)]
    ours = make_session(expose_tensors(model.proto, names, model.tensor_types)).run(names, feed)
    inter = ReferenceEvaluator(onnx.load(FIXTURES / name)).run(None, feed, intermediate=True)
    for t in names:
        np.testing.assert_allclose(ours[t], inter[t], rtol=1e-4, atol=1e-5, err_msg=t)
    assert len(model.proto.graph.output) == 1  # the loaded model is left as it was


def test_exploded_graph_recomputes_each_layer_from_its_inputs():
    model = load_model(FIXTURES / "transformer.onnx")
    feed = {"x": np.random.default_rng(3).random((1, 16, 32), dtype=np.float32)}
    inter = ReferenceEvaluator(onnx.load(FIXTURES / "transformer.onnx")).run(None, feed, intermediate=True)
    blob, outputs = explode(model, list(model.layers))
    sess = make_session(blob)
    local = sess.run(list(outputs.values()), {n: np.asarray(inter[n], np.float32) for n in sess.input_names})
    assert set(outputs) == {t for lay in model.layers for t in lay.outputs}
    for t, lt in outputs.items():
        assert lt == t + LOCAL_SUFFIX
        np.testing.assert_allclose(local[lt], inter[t], rtol=1e-4, atol=1e-5, err_msg=t)
