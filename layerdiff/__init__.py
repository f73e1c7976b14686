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

import importlib
from typing import TYPE_CHECKING

from layerdiff._version import __version__

# the public names and the modules holding them: imported on first use, so that `import layerdiff`
# (and the command's start, and --help) loads neither ONNX Runtime nor numpy until they are needed
_WHERE = {
    "Candidate": "backends.base", "CandidateSource": "backends.base", "Kernel": "backends.base",
    "FakeBackend": "backends.fake", "compare": "compare", "PrecisionPlan": "plan",
    **dict.fromkeys(("BackendError", "BadInput", "Cancelled", "EngineInfoError", "InputDataError", "LayerdiffError",
                     "ModelError", "OutputPathError", "PlanError", "ReportError"), "errors"),
    **dict.fromkeys(("CandidateInfo", "CaptureInfo", "Counts", "Divergence", "InputsInfo", "LayerDiff", "ModelInfo",
                     "OutputDiff", "ReferenceInfo", "Report", "TensorDiff", "Thresholds", "Tolerance", "load_report",
                     "rank_layers", "write_report"), "report"),
    **dict.fromkeys(("Evaluation", "Session", "prepare"), "session"),
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'layerdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"layerdiff.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
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
