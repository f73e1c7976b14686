"""Reading the JSON files users hand to layerdiff: every one (reports, recipes, bisect state files,
calibration caches, TensorRT profiles and layer information, Polygraphy results and inputs) is parsed by
`parse_json` (or `read_json`, which reads the file first) with the same limits:

    size        at most MAX_BYTES (Polygraphy's files of the user's tensors excepted)
    depth       arrays and objects nested at most MAX_DEPTH deep (layerdiff's and TensorRT's files nest 8 deep)
    numbers     NaN, Infinity, 1e999 and integers of more than 1000 digits refused: JSON has no such numbers
    top level   the type the file holds at its top (an object, mostly) checked

so that a damaged file is one line (a BadInput subclass), never a RecursionError, an overflow or a
KeyError; each kind of file then checks its own fields. For reports, every field is checked against the
type its dataclass gives it ("layers[3].outputs[0].cosine is not a number or null").
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from layerdiff.errors import BadInput, ReportError

MAX_BYTES = 256 * 2**20  # a report of a model of 100,000 layers is about 100 MiB
MAX_DEPTH = 64
MAX_DIGITS = 1000

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
    "tuple[float | None, ...]": (lambda v: isinstance(v, list) and all(x is None or _KINDS["float"][0](x) for x in v),
                                 "a list of numbers or nulls"),
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


class JsonLimit(ValueError):
    """JSON beyond layerdiff's limits; `str()` says how, as "it ..." ("it holds NaN, which is not a JSON
    number"), and `limit` names which: "size", "depth", "nonfinite" or "digits"."""

    def __init__(self, reason: str, limit: str):
        super().__init__(reason)
        self.limit = limit


BadNumber = JsonLimit  # its former name


def refuse_number(token: str) -> float:
    raise JsonLimit(f"it holds {token}, which is not a JSON number", "nonfinite")


def finite_float(token: str) -> float:
    x = float(token)
    if not math.isfinite(x):
        raise JsonLimit(f"it holds the number {token[:20]}, too large for a float", "nonfinite")
    return x


def short_int(token: str) -> int:
    if len(token) > MAX_DIGITS:
        raise JsonLimit(f"it holds an integer of {len(token)} digits", "digits")
    return int(token)


def too_deep(value: Any, limit: int | None = None) -> bool:
    """Whether `value` nests lists and dicts more than `limit` (MAX_DEPTH) deep (without recursing)."""
    limit = MAX_DEPTH if limit is None else limit
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        kids = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if kids is None:
            continue
        if depth > limit:
            return True
        stack.extend((k, depth + 1) for k in kids if isinstance(k, (list, dict)))
    return False


def decoder(strict: bool = True) -> json.JSONDecoder:
    """A json decoder that refuses the numbers parse_json refuses (for `raw_decode` of a text that holds
    several documents); the caller checks the depth of what it decodes with `too_deep`."""
    return json.JSONDecoder(parse_constant=refuse_number, parse_float=finite_float, parse_int=short_int,
                            strict=strict)


def parse_json(text: str, *, nonfinite: bool = False, strict: bool = True,
               hook: Callable[[list[tuple[str, Any]]], Any] | None = None, limit: float | None = None) -> Any:
    """`json.loads(text)` within layerdiff's limits (module doc): JsonLimit beyond them, json's own
    JSONDecodeError (a ValueError) or UnicodeDecodeError where `text` is not JSON. `nonfinite`: NaN and
    Infinity are read as floats, for a reader that refuses them field by field with a better message;
    `strict=False` lets strings hold control characters; `hook` is json's object_pairs_hook; `limit`: the
    most characters (None: MAX_BYTES; math.inf: no limit, for files of the user's tensors)."""
    limit = MAX_BYTES if limit is None else limit
    if len(text) > limit:
        raise JsonLimit(f"it is {len(text):,} bytes, more than the {limit:,} layerdiff reads", "size")
    try:
        data = json.loads(text, parse_constant=float if nonfinite else refuse_number, parse_int=short_int,
                          parse_float=float if nonfinite else finite_float, strict=strict, object_pairs_hook=hook)
    except RecursionError as err:  # kept as __cause__: Polygraphy results' messages quote it
        raise JsonLimit("it nests arrays or objects thousands deep", "depth") from err
    if too_deep(data):
        raise JsonLimit(f"it nests arrays or objects more than {MAX_DEPTH} deep", "depth")
    return data


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_json(path: str | Path, what: str, error: type[BadInput], *, top: type | tuple[type, ...] | None = dict,
              missing: str = "{what} not found: {path}", not_json: str = "{path} is not a {what} (not JSON: {reason})",
              damaged: str = "{path} is a damaged {what} ({reason})", **options: Any) -> Any:
    """The JSON value of the file at `path` (a `what`: "layerdiff recipe"), read and parsed within the
    limits of the module doc, its top-level value of type `top` (None: any). Anything else is `error`
    with one line: `missing` (the file is not there), `not_json` (unreadable, not UTF-8, not JSON) or
    `damaged` (beyond the limits, or not a `top`), each formatted with {path}, {what} and {reason}.
    `options` go to parse_json (`limit`: the most bytes read)."""
    path = Path(path)
    limit = options.get("limit")
    limit = MAX_BYTES if limit is None else limit

    def fail(template: str, reason: str) -> BadInput:
        return error(template.format(path=path, what=what, reason=reason))

    if not path.is_file():
        raise fail(missing, "not found")
    try:
        size = path.stat().st_size
        if size > limit:
            raise fail(damaged, f"it is {size:,} bytes, more than the {limit:,} layerdiff reads")
        data = parse_json(path.read_bytes().decode("utf-8"), **options)
    except JsonLimit as err:
        raise fail(damaged, str(err)) from None
    except OSError as err:
        raise fail(not_json, f"cannot read it: {err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError as err:
        raise fail(not_json, f"not UTF-8 text at byte {err.start}") from None
    except ValueError as err:  # json.JSONDecodeError
        raise fail(not_json, (str(err).splitlines() or [type(err).__name__])[0][:200]) from None
    if top is not None and not isinstance(data, top):
        names = " or ".join(_kind(t()) for t in (top if isinstance(top, tuple) else (top,)))
        raise fail(damaged, f"it holds {_kind(data)}, not {names}")
    return data



# Calibration ranges, as a recipe's candidate.calibration.ranges and a --cache-dir file hold them
# (backends/calibrate.py ranges_to_json): {"method": "MinMax", "tensors": {name: [lowest, highest]}}.
# The methods layerdiff calibrates with, and the name of ONNX Runtime's CalibrationMethod each writes.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
FLOAT32_MAX = 3.4028234663852886e38


def short(value: Any, limit: int = 40) -> str:
    """`value` as JSON, cut to `limit` characters, for a message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_number(v: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ranges_problem(obj: Any) -> str | None:
    """What is wrong with calibration ranges (above), in words ("the range of 'x' is ..."); None when
    nothing is. Each range is two float32 numbers, lowest <= highest: INT8 has no scale for others."""
    if not isinstance(obj, dict):
        return f"the ranges are {_kind(obj)}, not an object"
    method = obj.get("method")
    if method not in CALIBRATION_METHODS.values():
        return f"the method is {short(method)}, not one of {', '.join(CALIBRATION_METHODS.values())}"
    tensors = obj.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        return "no tensor has a range" if tensors == {} else f"the tensors are {_kind(tensors)}, not an object"
    for name, pair in tensors.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(is_number(v) and abs(v) <= FLOAT32_MAX for v in pair)
                and pair[0] <= pair[1]):
            return (f"the range of {name[:60]!r} is not [lowest, highest] of two finite float32 numbers with lowest "
                    f"<= highest: it is {short(pair)}")
    return None


def nonfinite_problem(value: Any, where: str = "") -> str | None:
    """Where `value` holds a number that is not finite (NaN, Infinity: read by parse_json with
    nonfinite=True), in words ("achieved.per_sample[2] is NaN, which is not a JSON number"); None where
    it holds none."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            shown = "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"
            return f"{at or 'the top level'} is {shown}, which is not a JSON number"
        if isinstance(v, dict):
            stack.extend((x, field_name(at, str(k)[:60])) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def finite_only(value: Any) -> Any:
    """`value` (JSON-ready) with every number that is not finite replaced by None, as files layerdiff
    writes hold them: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_only(v) for v in value]
    return value


# Polygraphy's JSON (`polygraphy run --save-outputs` results, `--save-inputs` feeds) names the type of an
# object, which Polygraphy's decoder makes. It knows more types than arrays, and some run code: Polygraphy
# 0.49 (which pyproject allows) decodes a serialized torch tensor with torch.load, an unpickler unless
# torch is 2.6 or newer, wherever torch is installed. So a file is first parsed here with
# `parse_json(text, hook=only_polygraphy_types(ALLOWED))`, which refuses any other type, before
# Polygraphy decodes it.
_TYPE_MARKER, _LEGACY_TYPE_MARKER = "polygraphy_class", "polygraphy_serialized_json_type"


class ForeignType(Exception):
    """An object of a Polygraphy type a file may not hold; args[0] is its name."""


def only_polygraphy_types(allowed: frozenset[str]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json object_pairs_hook that raises ForeignType for an object Polygraphy would decode as a type
    not in `allowed`."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        for key, value in pairs:
            name = value if key == _TYPE_MARKER else key if value == _LEGACY_TYPE_MARKER else None
            name = name.removeprefix("__polygraphy_encoded_") if isinstance(name, str) else None
            if name is not None and name not in allowed:
                raise ForeignType(name)
        return dict(pairs)

    return hook


def metadata_json(value: str, key: str, valid: Callable[[Any], bool], shape: str) -> Any:
    """The JSON value of metadata property `key` that layerdiff wrote into a candidate model (which a user
    hands back as CANDIDATE.onnx), parsed within parse_json's limits and `valid` (it is `shape`, in words);
    else one-line ModelError."""
    from layerdiff.errors import ModelError

    try:
        data = parse_json(value)
    except ValueError as err:  # JsonLimit, json.JSONDecodeError
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
    else:
        if valid(data):
            return data
        reason = f"it is not {shape}"
    raise ModelError(f"the candidate model's metadata '{key}' is damaged ({reason}); layerdiff writes it when it "
                     "saves a candidate: save the candidate again (--save-candidate)")
