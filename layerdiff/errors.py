"""The one exception hierarchy of layerdiff. The CLI is the only place that catches it.

    LayerdiffError                 anything layerdiff reports to a user
    ├── BadInput                   the user's input is wrong: one line, exit 2
    │   ├── ModelError             the model file: missing, not ONNX, IR too new
    │   ├── InputDataError         --inputs / --calib / --shape
    │   ├── OutputPathError        where a report or model is to be written
    │   ├── PlanError              a precision plan: unknown precision, nodes the model lacks
    │   ├── ReportError            a saved report: missing, corrupt, unknown schema
    │   └── EngineInfoError        TensorRT layer information that cannot be read
    ├── BackendError               a runtime could not run the model, or cannot realise a plan (exit 2)
    └── Cancelled                  a run was cancelled (by an event or Ctrl-C) before it could finish

Every message is one line: what was wrong, and what to do about it. Functions a user calls raise only
these (never a bare ValueError).
"""

from __future__ import annotations


class LayerdiffError(Exception):
    """Base class; `str(err)` is the one line shown to the user."""


class BadInput(LayerdiffError):
    pass


class ModelError(BadInput):
    pass


class InputDataError(BadInput):
    pass


class OutputPathError(BadInput):
    pass


class PlanError(BadInput):
    pass


class ReportError(BadInput):
    pass


class EngineInfoError(BadInput):
    pass


class BackendError(LayerdiffError):
    pass


class Cancelled(LayerdiffError):
    pass


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of `err`'s message, for a one-line report of it; `default` (else the exception's
    type name) where it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0] if text else (type(err).__name__ if default is None else default)

