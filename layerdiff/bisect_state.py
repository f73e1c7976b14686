"""bisect's state file (`--resume STATE.json`, schema layerdiff.bisect-state/1): every evaluation of
one search, written atomically after each, so that an interrupted search resumes without repeating
one. A file written by another search (model, candidate, samples, metric...) is refused."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from layerdiff.errors import BadInput
from layerdiff.files import write_atomic
from layerdiff.jsonread import is_number, read_json, short
from layerdiff.search import Outcome
from layerdiff.target import Target

STATE_SCHEMA = "layerdiff.bisect-state/1"
_DAMAGED = "--resume {path} is damaged ({reason}); delete it or give another path"
_NONFINITE = ("inf", "-inf", "nan")  # how add() writes the values JSON has no number for


class SearchState:
    """The outcomes of one search, kept in a JSON file (written atomically after each evaluation)."""

    def __init__(self, path: Path | None, identity: dict[str, Any]):
        self.path, self.identity = path, identity
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def load(self, target: Target, samples: int | None = None) -> list[Outcome]:
        """The outcomes the file holds ([] when there is none). A file of another search (its identity
        differs), or a damaged one, is BadInput; so is an evaluation without exactly one value per sample
        (`samples`, else the identity's "sample_count", else as many as the file's first evaluation)."""
        if self.path is None or not self.path.exists():
            return []
        data = read_json(self.path, "bisect state file", BadInput, not_json=_DAMAGED, damaged=_DAMAGED, top=None)
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise BadInput(f"--resume {self.path} is not a layerdiff bisect state file (schema "
                           f"{short(data.get('schema')) if isinstance(data, dict) else None}); give another path")
        for key, want in self.identity.items():
            if data.get(key) != want:
                raise BadInput(f"--resume {self.path} was written by another search ({key} differs: "
                               f"{short(data.get(key))}, this run {short(want)}); give another path or delete it")
        rows = data.get("evaluations")
        if not isinstance(rows, list):
            raise self._damaged("evaluations is not a list")
        count = samples if samples is not None else self.identity.get("sample_count")
        outcomes = []
        for i, row in enumerate(rows):
            pins, per, seconds = self._row(row, i)
            count = len(per) if count is None else count
            if len(per) != count:
                raise self._damaged(f"evaluations[{i}] has {len(per)} per-sample value(s), not one for each of "
                                    f"the {count} sample(s) of this search")
            value = target.worst(per)
            outcomes.append(Outcome(pins, value, per, target.passes(value), seconds))
        self.rows.extend(rows)
        return outcomes

    def _row(self, row: Any, i: int) -> tuple[frozenset[str], tuple[float, ...], float]:
        """(pins, per-sample values, seconds) of evaluation `i`, checked."""
        if not isinstance(row, dict):
            raise self._damaged(f"evaluations[{i}] is not an object")
        pins, per, seconds = row.get("pins"), row.get("per_sample"), row.get("seconds", 0)
        if not (isinstance(pins, list) and all(isinstance(p, str) and p for p in pins)):
            raise self._damaged(f"evaluations[{i}].pins is not a list of node names")
        if not (isinstance(per, list) and per and all(is_number(v) or v in _NONFINITE for v in per)):
            raise self._damaged(f"evaluations[{i}].per_sample is not a list of numbers (or \"inf\", \"-inf\", "
                                "\"nan\")")
        if not (is_number(seconds) and seconds >= 0):
            raise self._damaged(f"evaluations[{i}].seconds is {short(seconds)}, not a number of seconds")
        return frozenset(pins), tuple(float(v) for v in per), float(seconds)

    def _damaged(self, reason: str) -> BadInput:
        return BadInput(_DAMAGED.format(path=self.path, reason=reason))

    def add(self, outcome: Outcome) -> None:
        if self.path is None:
            return
        with self._lock:
            self.rows.append({"pins": sorted(outcome.pins), "per_sample": [_num(v) for v in outcome.per_sample],
                              "seconds": round(outcome.seconds, 4)})
            write_atomic(self.path, json.dumps({"schema": STATE_SCHEMA, **self.identity,
                                                "evaluations": self.rows}).encode())


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # json: "inf", "-inf", "nan" (float() reads them back)


def evaluation_identity(session: Any, candidate: str, precision: str, target: Target,
                        backend: Any) -> dict[str, Any]:
    """What else changes what an evaluation measures, for the --resume state's identity: ONNX Runtime's
    optimization level of the candidate, the reference's providers, the calibration ranges an ORT INT8
    candidate is quantized with (whether calibrated here or read from --cache-dir), the metric
    function's file, and the runtime's version."""
    import hashlib

    import onnxruntime

    ranges = None
    if precision == "int8" and backend is None and candidate.startswith("ort"):
        from layerdiff.backends.calibrate import ranges_to_json

        text = json.dumps(ranges_to_json(session.quantizer.ranges), sort_keys=True)
        ranges = hashlib.sha256(text.encode()).hexdigest()[:16]
    metric_fn = None
    if target.fn is not None:
        file = Path(target.metric.rpartition(":")[0])
        metric_fn = hashlib.sha256(file.read_bytes()).hexdigest()[:16] if file.is_file() else None
    return {"ort_optimization": session.optimization,
            "reference": [p if isinstance(p, str) else p[0] for p in session.reference_providers],
            "ranges": ranges, "metric_fn_sha256": metric_fn, "onnxruntime": onnxruntime.__version__}
