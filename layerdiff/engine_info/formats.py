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

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdiff.errors import BadInput

_LAYER_SPLIT = re.compile(r"^\s*-+\s*Layer\s+\d+\s*-+\s*$", re.MULTILINE)
_LOG_LINE = re.compile(r"Layer\((?P<type>[^)]*)\):\s*(?P<rest>.*)$")
# `name[Half(1,3,224,224)]` (TRT 7/8 logs) or `name (Half[1,3,224,224])` (later logs)
_LOG_TENSOR = re.compile(
    r"(?P<name>.+?)\s*(?:\[(?P<t1>\w+)\((?P<d1>[-\d,:x ]*)\)\]|\((?P<t2>\w+)\[(?P<d2>[-\d,:x ]*)\]\))\s*(?:,\s*|$)"
)


class EngineInfoError(BadInput):
    pass


@dataclass(frozen=True)
class RawInfo:
    layers: list[dict[str, Any]]  # each with at least "Name"; "LayerType" etc. when the file has them
    bindings: list[str]
    kind: str  # detailed-json | names-only-json | per-layer-json | verbose-log


def read_layer_info(path: str | Path) -> RawInfo:
    path = Path(path)
    if not path.is_file():
        raise EngineInfoError(f"engine info not found: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise EngineInfoError(f"cannot read engine info {path}: {err}") from err
    if not text.strip():
        raise EngineInfoError(f"engine info {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        return _from_json(data, path)
    if "Layer(" in text and "Engine Layer Information" in text or _LOG_LINE.search(text):
        return _from_log(text, path)
    objects = _concatenated_objects(text)
    if objects:
        return RawInfo(objects, [], "per-layer-json")
    raise EngineInfoError(
        f"{path} is not TensorRT layer information (not JSON, nor layer objects, nor a trtexec --verbose "
        "log): it may be truncated; export it with trtexec --exportLayerInfo=FILE --profilingVerbosity=detailed"
    )


def _from_json(data: Any, path: Path) -> RawInfo:
    if isinstance(data, list) and data and isinstance(data[0], dict) and "count" in data[0]:
        raise EngineInfoError(
            f"{path} is a trtexec --exportProfile timing file, not layer information; give the file written by "
            "--exportLayerInfo (with --profilingVerbosity=detailed)"
        )
    if isinstance(data, dict) and "Layers" in data:
        layers = data["Layers"]
        if not isinstance(layers, list):
            raise EngineInfoError(f"{path}: 'Layers' is not a list")
        bindings = [b for b in data.get("Bindings", []) if isinstance(b, str)]
        if all(isinstance(x, str) for x in layers):
            return RawInfo([{"Name": x} for x in layers], bindings, "names-only-json")
        if all(isinstance(x, dict) and "Name" in x for x in layers):
            return RawInfo(list(layers), bindings, "detailed-json")
        raise EngineInfoError(f"{path}: 'Layers' mixes names and layer objects, which TensorRT never writes")
    if isinstance(data, dict) and "Name" in data and ("LayerType" in data or "Inputs" in data):
        return RawInfo([data], [], "per-layer-json")
    if isinstance(data, list) and data and all(isinstance(x, dict) and "Name" in x for x in data):
        return RawInfo(list(data), [], "per-layer-json")
    if isinstance(data, dict) and ({"model_options", "build_options", "performance_summary", "device_information"}
                                   & set(data)):
        raise EngineInfoError(
            f"{path} is a TREx/trtexec metadata file (build or profile settings), not layer information; give "
            "the .graph.json / --exportLayerInfo file"
        )
    raise EngineInfoError(f"{path} is JSON but not TensorRT layer information (no 'Layers' and no layer objects)")


def _concatenated_objects(text: str) -> list[dict[str, Any]]:
    """Layer objects one after another, with or without `--- Layer N ---` separator lines."""
    decoder = json.JSONDecoder()
    out = []
    for chunk in _LAYER_SPLIT.split(text):
        pos, chunk = 0, chunk.strip()
        while pos < len(chunk):
            try:
                obj, end = decoder.raw_decode(chunk, pos)
            except json.JSONDecodeError:
                return []
            if not isinstance(obj, dict) or "Name" not in obj:
                return []
            out.append(obj)
            pos = end
            while pos < len(chunk) and chunk[pos] in " \t\r\n,":
                pos += 1
    return out


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
    out = []
    for m in _LOG_TENSOR.finditer(text.strip()):
        dims = (m.group("d1") if m.group("t1") else m.group("d2")) or ""
        dt = m.group("t1") or m.group("t2")
        parsed = []
        for d in re.split(r"[,x]", dims):
            d = d.split(":")[0].strip()
            if d.lstrip("-").isdigit():
                parsed.append(int(d))
        out.append({"Name": m.group("name").strip(), "Dimensions": parsed, "Format/Datatype": dt})
    return out
