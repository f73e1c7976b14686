"""Reading JSON that users hand back to layerdiff (reports, later recipes): every field checked against
the type its dataclass gives it, so a damaged file is one ReportError naming the field
("layers[3].outputs[0].cosine is not a number or null"), never a KeyError or TypeError; and numbers
JSON does not have (NaN, Infinity, 1e999, integers of thousands of digits) refused as damage.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any

from layerdiff.errors import ReportError

# Reading a report back: every field is checked against the type its dataclass gives it, and a field
# that is missing or of another type is a ReportError naming it ("layers[3].outputs[0].cosine ...").
_FLOAT_MAX = sys.float_info.max
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and -_FLOAT_MAX <= v <= _FLOAT_MAX,
              "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "tuple[str, ...]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "tuple[int, ...]": (lambda v: isinstance(v, list) and all(_KINDS["int"][0](x) for x in v), "a list of integers"),
    "tuple[float, ...]": (lambda v: isinstance(v, list) and all(_KINDS["float"][0](x) for x in v), "a list of numbers"),
}


def field_name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def checked(v: Any, kind: str, name: str) -> Any:
    """`v` checked against `kind` (an annotation: "int", "float | None", "tuple[str, ...]"...), converted
    to what the dataclass holds (a list to a tuple, an integer to a float)."""
    base = kind.removesuffix(" | None")
    if v is None and base != kind:
        return None
    test, what = _KINDS[base]  # a field of a new type needs its entry in _KINDS
    if not test(v):
        raise ReportError(f"{name} is not {what}{' or null' if base != kind else ''}")
    return float(v) if base == "float" else tuple(v) if base.startswith("tuple") else v


def get_field(d: Mapping[str, Any], key: str, kind: str, where: str, default: Any = MISSING) -> Any:
    """Field `key` of the object at `where`, checked; `default` where it is absent (required if none)."""
    if key not in d:
        if default is MISSING:
            raise ReportError(f"{where or 'the report'} lacks {key}")
        return default
    return checked(d[key], kind, field_name(where, key))


def as_object(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise ReportError(f"{where} is not an object")
    return d


def pick(cls: type, d: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass `cls` (less `skip`) that the object `d` at `where` holds, each checked
    against its annotation; those without a default are required."""
    own = [f for f in fields(cls) if f.name not in skip]
    d = as_object(d, where)
    missing = sorted(f.name for f in own if f.default is MISSING and f.default_factory is MISSING and f.name not in d)
    if missing:
        raise ReportError(f"{where} lacks {', '.join(missing)}")
    return {f.name: checked(d[f.name], f.type, field_name(where, f.name)) for f in own if f.name in d}


class BadNumber(ValueError):
    pass


def refuse_number(token: str) -> float:
    raise BadNumber(f"it holds {token}, which is not a JSON number")


def finite_float(token: str) -> float:
    x = float(token)
    if not math.isfinite(x):
        raise BadNumber(f"it holds the number {token[:20]}, too large for a float")
    return x


def short_int(token: str) -> int:
    if len(token) > 1000:
        raise BadNumber(f"it holds an integer of {len(token)} digits")
    return int(token)
