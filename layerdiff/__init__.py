"""layerdiff: find where, and why, a reduced-precision deployment of an ONNX model stops agreeing with
the FP32 model, layer by layer.

    import layerdiff
    report = layerdiff.compare("model.onnx", "ort-int8", inputs="samples/")
    print(report.first_divergence)

    session = layerdiff.prepare("model.onnx", inputs="samples/")    # many plans of one model
    cand = session.realise(layerdiff.PrecisionPlan.uniform("int8", pin_fp32={"conv7"}))
    print(session.evaluate(cand).cosine)

Importing layerdiff imports neither textual nor tensorrt.
"""

from __future__ import annotations

from layerdiff._version import __version__
from layerdiff.backends.base import Candidate, CandidateSource, Kernel
from layerdiff.backends.fake import FakeBackend
from layerdiff.compare import compare
from layerdiff.errors import (
    BackendError,
    BadInput,
    Cancelled,
    EngineInfoError,
    InputDataError,
    LayerdiffError,
    ModelError,
    OutputPathError,
    PlanError,
    ReportError,
)
from layerdiff.plan import PrecisionPlan
from layerdiff.report import (
    CandidateInfo,
    CaptureInfo,
    Counts,
    Divergence,
    InputsInfo,
    LayerDiff,
    ModelInfo,
    OutputDiff,
    ReferenceInfo,
    Report,
    TensorDiff,
    Thresholds,
    Tolerance,
    load_report,
    rank_layers,
    write_report,
)
from layerdiff.session import Evaluation, Session, prepare

__all__ = [
    "BackendError",
    "BadInput",
    "Cancelled",
    "Candidate",
    "CandidateInfo",
    "CandidateSource",
    "CaptureInfo",
    "Counts",
    "Divergence",
    "EngineInfoError",
    "Evaluation",
    "FakeBackend",
    "InputDataError",
    "InputsInfo",
    "Kernel",
    "LayerDiff",
    "LayerdiffError",
    "ModelError",
    "ModelInfo",
    "OutputDiff",
    "OutputPathError",
    "PlanError",
    "PrecisionPlan",
    "ReferenceInfo",
    "Report",
    "ReportError",
    "Session",
    "TensorDiff",
    "Thresholds",
    "Tolerance",
    "__version__",
    "compare",
    "load_report",
    "prepare",
    "rank_layers",
    "write_report",
]
