"""A failure while recomputing one row's local error costs that row's figure, with the reason in the
row and a warning, never the report."""

from __future__ import annotations

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
