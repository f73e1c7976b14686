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
from layerdiff.search import Outcome
from layerdiff.target import Target

STATE_SCHEMA = "layerdiff.bisect-state/1"


class SearchState:
    """The outcomes of one search, kept in a JSON file (written atomically after each evaluation)."""

    def __init__(self, path: Path | None, identity: dict[str, Any]):
        self.path, self.identity = path, identity
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def load(self, target: Target) -> list[Outcome]:
        if self.path is None or not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
                raise BadInput(f"--resume {self.path} is not a layerdiff bisect state file (schema "
                               f"{data.get('schema') if isinstance(data, dict) else None!r}); give another path")
            for key, want in self.identity.items():
                if data.get(key) != want:
                    raise BadInput(f"--resume {self.path} was written by another search ({key} differs: "
                                   f"{data.get(key)!r}, this run {want!r}); give another path or delete it")
            outcomes = []
            for row in data["evaluations"]:
                pins = frozenset(row["pins"])
                if not all(isinstance(p, str) for p in pins):
                    raise ValueError("pins are node names")
                per = tuple(float(v) for v in row["per_sample"])
                value = target.worst(per)
                outcomes.append(Outcome(pins, value, per, target.passes(value), float(row.get("seconds", 0))))
                self.rows.append(row)
            return outcomes
        except BadInput:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BadInput(f"--resume {self.path} is damaged ({type(err).__name__}: {err}); delete it or give "
                           "another path") from None

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


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # json: "inf", "-inf", "nan" (float() reads them back)
