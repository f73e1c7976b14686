"""layerdiff: find where, and why, a reduced-precision deployment of an ONNX model stops agreeing with
the FP32 model, layer by layer.

    import layerdiff
    report = layerdiff.compare("model.onnx", "ort-int8", inputs="samples/")
    print(report.first_divergence)

Importing layerdiff imports neither textual nor tensorrt.
"""

from __future__ import annotations

from layerdiff._version import __version__

from layerdiff.compare import compare  # noqa: E402
from layerdiff.errors import BackendError, BadInput, LayerdiffError  # noqa: E402
from layerdiff.plan import PrecisionPlan  # noqa: E402
from layerdiff.report import LayerDiff, Report, TensorDiff, rank_layers, write_report  # noqa: E402

__all__ = [
    "BackendError",
    "BadInput",
    "LayerDiff",
    "LayerdiffError",
    "PrecisionPlan",
    "Report",
    "TensorDiff",
    "__version__",
    "compare",
    "rank_layers",
    "write_report",
]
