"""A failure while recomputing one row's local error costs that row's figure, with the reason in the
row and a warning, never the report."""

from __future__ import annotations

import pytest

import layerdiff
from layerdiff.errors import BackendError
from tests.conftest import FIXTURES


def test_a_row_onnx_runtime_cannot_recompute_costs_that_row_only(monkeypatch):
    import layerdiff.capture

    real = layerdiff.capture.make_session

    def refuse_conv2(blob, *args, **kwargs):
        if isinstance(blob, bytes) and b"conv2.weight" in blob and kwargs.get("level") == "disabled" \
                and args[1:2] == ("exploded reference",):
            raise BackendError("ONNX Runtime cannot load the exploded reference: (as on a model nobody tried)")
        return real(blob, *args, **kwargs)

    monkeypatch.setattr(layerdiff.capture, "make_session", refuse_conv2)
    report = layerdiff.compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    rows = {lay.name: lay for lay in report.layers if lay.kind == "layer"}
    assert rows["conv2"].local_cosine is None
    assert "its FP32 recomputation failed" in rows["conv2"].local_unavailable
    assert rows["conv2"].cosine is not None  # its accumulated error is still there
    others = [lay for name, lay in rows.items() if name != "conv2" and not lay.local_unavailable]
    assert len(others) >= 8 and all(lay.local_cosine is not None for lay in others)
    assert any("could not be computed" in w and "conv2" in w for w in report.warnings)


def _tiny(shape_after: list[int]) -> bytes:
    """x [2, 3] -> Relu -> Reshape to `shape_after`: runs only where that shape holds six numbers."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.INT64, [len(shape_after)], shape_after)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def test_a_built_graph_that_fails_where_the_model_runs_is_an_internal_error():
    """A graph layerdiff built failing to run was exit 2 (bad input) though the user's model ran."""
    import numpy as np

    from layerdiff.backends.ort import make_session
    from layerdiff.errors import BackendError

    feed = {"x": np.ones((2, 3), np.float32)}
    built = make_session(_tiny([4, 4]), derived_from=_tiny([3, 2]))
    with pytest.raises(RuntimeError, match="layerdiff built from the model, which itself runs"):
        built.run(["y"], feed)
    both_fail = make_session(_tiny([4, 4]), derived_from=_tiny([5, 5]))
    with pytest.raises(BackendError, match="failed to run the model"):
        both_fail.run(["y"], feed)
