"""The one exception hierarchy of layerdiff. The CLI is the only place that catches it.

    LayerdiffError                 anything layerdiff reports to a user
    ├── BadInput                   the user's input is wrong: one line, exit 2
    │   ├── ModelError             the model file: missing, not ONNX, IR too new
    │   ├── InputDataError         --inputs / --calib / --shape
    │   └── OutputPathError        where a report or model is to be written
    └── BackendError               a runtime could not run the model (exit 2 too; the message says why)

Every message is one line: what was wrong, and what to do about it.
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


class BackendError(LayerdiffError):
    pass
