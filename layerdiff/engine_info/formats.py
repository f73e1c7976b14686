"""Read every shape of TensorRT layer information into plain layer records (see
shared docs/trt-engine-info.md, sections 1-3):

  detailed JSON          {"Layers": [{...}], "Bindings": [...]}   trtexec --exportLayerInfo, IEngineInspector
  names-only JSON        {"Layers": ["name", ...], ...}            same, without detailed profiling verbosity
  one layer object       {"Name", "LayerType", ...}                get_layer_information(i, JSON)
  per-layer dumps        objects separated by `--- Layer N ---` lines, or simply concatenated
  bare list of objects   [{...}, ...]
  trtexec --verbose log  "Engine Layer Information:" then `Layer(Type): name, Tactic: ..., in -> out`

Profile timings (--exportProfile) and TREx metadata side files are recognised and refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdiff.errors import EngineInfoError
from layerdiff.files import read_text
from layerdiff.jsonread import MAX_DEPTH, JsonLimit, decoder, parse_json, too_deep

_LAYER_SPLIT = re.compile(r"^\s*-+\s*Layer\s+\d+\s*-+\s*$", re.MULTILINE)
_LOG_DIM = re.compile(r"-?[0-9]{1,18}")  # longer numbers are no dimension (and int() refuses > 4300 digits)
_LOG_LINE = re.compile(r"Layer\((?P<type>[^()\n]*)\):\s*(?P<rest>.*)$")
# the type and dims after a tensor's name: `name[Half(1,3,224,224)]` (TRT 7/8 logs) or `name (Half[1,3,224,224])`
# (later logs), then `, ` or the end
_LOG_TENSOR = re.compile(
    r"(?:\[(?P<t1>\w+)\((?P<d1>[-\d,:x ]*)\)\]|\((?P<t2>\w+)\[(?P<d2>[-\d,:x ]*)\]\))\s*(?:,\s*|$)"
)


@dataclass(frozen=True)
class RawInfo:
    layers: list[dict[str, Any]]  # each with at least "Name"; "LayerType" etc. when the file has them
    bindings: list[str]
    kind: str  # detailed-json | names-only-json | per-layer-json | verbose-log


def read_layer_info(path: str | Path) -> RawInfo:
    path = Path(path)
    text = read_text(path, "engine info", EngineInfoError)
    data = _json(text, path)
    if data is not _NOT_JSON:
        return _from_json(data, path)
    if "Layer(" in text and "Engine Layer Information" in text or _LOG_LINE.search(text):
        return _from_log(text, path)
    objects = _concatenated_objects(text)
    if objects:
        return RawInfo(_checked(objects, path), [], "per-layer-json")
    raise EngineInfoError(
        f"{path} is not TensorRT layer information (not JSON, nor layer objects, nor a trtexec --verbose "
        "log): it may be truncated; export it with trtexec --exportLayerInfo=FILE --profilingVerbosity=detailed"
    )


_NOT_JSON = object()


def _json(text: str, path: Path) -> Any:
    """The parsed document, or _NOT_JSON."""
    try:
        return parse_json(text)
    except JsonLimit as err:
        what = {"depth": f"nests JSON arrays or objects {'thousands' if 'thousands' in str(err) else f'more than {MAX_DEPTH}'} deep",
                "digits": "holds a number with thousands of digits"}.get(err.limit, str(err).removeprefix("it "))
        raise EngineInfoError(
            f"{path} {what}: TensorRT never writes that, so it is not layer information; export it with trtexec "
            "--exportLayerInfo=FILE --profilingVerbosity=detailed"
        ) from None
    except ValueError:  # json.JSONDecodeError: another of the formats, or nothing
        return _NOT_JSON


def _from_json(data: Any, path: Path) -> RawInfo:
    if isinstance(data, list) and data and isinstance(data[0], dict) and "count" in data[0]:
        raise EngineInfoError(
            f"{path} is a trtexec --exportProfile timing file, not layer information; give the file written by "
            "--exportLayerInfo (with --profilingVerbosity=detailed)"
        )
    if isinstance(data, dict) and "Layers" in data:
        layers, bindings = data["Layers"], data.get("Bindings", [])
        if not isinstance(layers, list):
            raise EngineInfoError(f"{path}: 'Layers' is not a list; {_REEXPORT}")
        if not isinstance(bindings, list) or not all(isinstance(b, str) for b in bindings):
            raise EngineInfoError(f"{path}: 'Bindings' is not a list of tensor names; {_REEXPORT}")
        if all(isinstance(x, str) for x in layers):
            return RawInfo([{"Name": x} for x in layers], bindings, "names-only-json")
        if any(isinstance(x, str) for x in layers) and any(isinstance(x, dict) for x in layers):
            raise EngineInfoError(f"{path}: 'Layers' mixes names and layer objects, which TensorRT never writes; "
                                  f"{_REEXPORT}")
        return RawInfo(_checked(layers, path), bindings, "detailed-json")
    if isinstance(data, dict) and "Name" in data and ("LayerType" in data or "Inputs" in data):
        return RawInfo(_checked([data], path), [], "per-layer-json")
    if isinstance(data, list) and data and all(isinstance(x, dict) and "Name" in x for x in data):
        return RawInfo(_checked(data, path), [], "per-layer-json")
    if isinstance(data, dict) and ({"model_options", "build_options", "performance_summary", "device_information"}
                                   & set(data)):
        raise EngineInfoError(
            f"{path} is a TREx/trtexec metadata file (build or profile settings), not layer information; give "
            "the .graph.json / --exportLayerInfo file"
        )
    raise EngineInfoError(f"{path} is JSON but not TensorRT layer information (no 'Layers' and no layer objects)")


def _concatenated_objects(text: str) -> list[dict[str, Any]]:
    """Layer objects one after another, with or without `--- Layer N ---` separator lines."""
    decoding = decoder()  # parse_json's limits, for each object
    out = []
    for chunk in _LAYER_SPLIT.split(text):
        pos, chunk = 0, chunk.strip()
        while pos < len(chunk):
            try:
                obj, end = decoding.raw_decode(chunk, pos)
            except (ValueError, RecursionError):  # ValueError: not JSON, or beyond parse_json's limits
                return []
            if not isinstance(obj, dict) or "Name" not in obj or too_deep(obj):
                return []
            out.append(obj)
            pos = end
            while pos < len(chunk) and chunk[pos] in " \t\r\n,":
                pos += 1
    return out


# the fields layerdiff reads, and the types TensorRT writes them with
_TEXT_FIELDS = ("Name", "LayerType", "Metadata", "TacticName", "TacticValue", "Origin")
_TENSOR_TEXT_FIELDS = ("Name", "Format/Datatype")
_REEXPORT = "the file was edited or is not TensorRT's; export it again with trtexec --exportLayerInfo=FILE"


def _checked(layers: list[Any], path: Path) -> list[dict[str, Any]]:
    """`layers` if every field layerdiff reads has the type TensorRT writes it with, else one clear error."""
    for i, layer in enumerate(layers):
        problem = _problem(layer)
        if problem:
            name = layer.get("Name") if isinstance(layer, dict) else None
            which = f"layer {i}" + (f" ({name[:80]!r})" if isinstance(name, str) else "")
            raise EngineInfoError(f"{path}: {which}: {problem}; {_REEXPORT}")
    return layers


def _problem(layer: Any) -> str | None:
    if not isinstance(layer, dict):
        kind = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(type(layer), "a number")
        return f"{kind}, not a layer object"
    if not isinstance(layer.get("Name"), str):
        return "'Name' is missing or not a string"
    wrong = [k for k in _TEXT_FIELDS if k in layer and not isinstance(layer[k], str)]
    if wrong:
        return f"'{wrong[0]}' is not a string"
    for key in ("Inputs", "Outputs"):
        tensors = layer.get(key, [])
        if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
            return f"'{key}' is not a list of tensor objects"
        for t in tensors:
            wrong = [k for k in _TENSOR_TEXT_FIELDS if k in t and not isinstance(t[k], str)]
            dims = t.get("Dimensions", [])
            if wrong:
                return f"an {key[:-1].lower()} tensor's '{wrong[0]}' is not a string"
            if not isinstance(dims, list) or not all(type(d) is int for d in dims):
                return f"an {key[:-1].lower()} tensor's 'Dimensions' is not a list of integers"
    return None


def _from_log(text: str, path: Path) -> RawInfo:
    start = text.find("Engine Layer Information")
    body = text[start:] if start >= 0 else text
    layers = []
    for line in body.splitlines():
        m = _LOG_LINE.search(line)
        if not m:
            if layers and line.strip() and "Layer(" not in line and "[V]" in line:
                break  # the block ended
            continue
        rest = m.group("rest")
        name, sep, tail = rest.partition(", Tactic: ")
        if not sep:
            layers.append({"Name": rest.strip(), "LayerType": m.group("type")})
            continue
        tactic, _, io = tail.partition(", ")
        ins, _, outs = io.partition(" -> ")
        layers.append({"Name": name.strip(), "LayerType": m.group("type"), "TacticValue": tactic.strip(),
                       "Inputs": _log_tensors(ins), "Outputs": _log_tensors(outs)})
    if not layers:
        raise EngineInfoError(f"{path} has no 'Layer(Type): name, Tactic: ...' lines of a trtexec --verbose log")
    return RawInfo(layers, [], "verbose-log")


def _log_tensors(text: str) -> list[dict[str, Any]]:
    """`a (Half[1,3]), b (Int8[1,32:32])` -> tensor records; a name is everything up to the next type and dims
    (so names may hold brackets, commas and spaces). Linear in the text's length."""
    out, pos, text = [], 0, text.strip()
    while (m := _LOG_TENSOR.search(text, pos + 1)) is not None:  # a name of at least one character first
        name, pos = text[pos:m.start()], m.end()
        dims = (m.group("d1") if m.group("t1") else m.group("d2")) or ""
        dt = m.group("t1") or m.group("t2")
        parsed = []
        for d in re.split(r"[,x]", dims):
            d = d.split(":")[0].strip()
            if _LOG_DIM.fullmatch(d):
                parsed.append(int(d))
        out.append({"Name": name.strip(), "Dimensions": parsed, "Format/Datatype": dt})
    return out
