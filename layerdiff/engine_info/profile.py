"""TensorRT per-layer timings (`trtexec --exportProfile=profile.json`), matched to an engine's layers.

    profile = read_trt_profile("engine.profile.json")
    ms = match_profile(profile, parse_engine_info("engine.graph.json"))   # {engine layer name: ms per run}

The file is what trtexec's Profiler::exportJSONProfile (samples/common/sampleReporting.cpp) writes: one
flat JSON list, `{"count": N}` (the number of timed runs) and then one entry per timed layer, in
execution order:

    TensorRT 8.4+        {"name", "timeMs", "averageMs", "medianMs", "percentage"}
    TensorRT 6 to 8.2    {"name", "timeMs", "averageMs", "percentage"}            (no medianMs)

timeMs is the total over all N runs. The time per run is read from medianMs, else averageMs, else
timeMs / N; one statistic for the whole file, so that layers stay comparable.

What TREx (NVIDIA/TensorRT tools/experimental/trt-engine-explorer, trex/parser.py read_profiling_file
and trex/engine_plan.py, unchanged from v0.1.0 to its last release before TensorRT 11.1 removed it)
accepts, and what is followed here:
  * a flat list; TREx keeps the records of 4 or 5 keys (the two layouts above) and so drops the count
    element. Neither TREx nor any trtexec version writes or reads a nested list (a list of such lists),
    also not with --separateProfileRun or several optimization profiles, so a nested list is refused.
    An engine with several optimization profiles names the layers of profile N>0 "... [profile N]"
    (trex/parser.py filter_profiles); trtexec times one profile, whose layer names, suffix included, are
    layer names of the layer information, so exact name matching covers it.
  * TREx drops malformed records silently; here they are an error, since a missing layer would read
    as a layer that took no time.
  * trtexec writes the names unescaped, so a name with a control character (the \\x1e/\\x1f separators
    of TensorRT 8.6+ names, which TREx's fix_unicode replaces) is not strict JSON; it is read leniently
    (json strict=False), giving the same string the layer information holds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerdiff.errors import BadInput
from layerdiff.files import read_text
from layerdiff.jsonread import MAX_DEPTH, JsonLimit, nonfinite_problem, parse_json

if TYPE_CHECKING:  # at run time only the layers' names are read; no import cycle with the package
    from layerdiff.engine_info import EngineInfo

__all__ = ["TrtProfile", "match_profile", "read_trt_profile"]

_REEXPORT = "re-export it with trtexec --exportProfile=FILE (with --separateProfileRun)"
_TIME_KEYS = ("timeMs", "averageMs", "medianMs")
# (statistic, key), best first; "total/count" divides timeMs by the count element
_STATISTICS = (("median", "medianMs"), ("average", "averageMs"), ("total/count", "timeMs"))
_NAN_INF = re.compile(r":\s*-?(?:nan|inf)\b", re.IGNORECASE)


@dataclass(frozen=True)
class TrtProfile:
    path: str
    runs: int | None  # the {"count": N} element, None when absent
    statistic: str  # "median" | "average" | "total/count"
    layers: tuple[tuple[str, float], ...]  # (profile layer name, ms per run by `statistic`), in file order


def read_trt_profile(path: str | Path) -> TrtProfile:
    """Read a trtexec --exportProfile file; anything else, or a damaged one, is one-line BadInput."""
    path = Path(path)
    data = _load(path)
    if not isinstance(data, list):
        raise BadInput(_not_a_list(data, path))
    if any(isinstance(x, list) for x in data):
        raise BadInput(
            f"{path} is a list of lists, which neither trtexec nor TREx writes: a TensorRT profile is one flat "
            f'list [{{"count": N}}, {{"name": ..., "medianMs": ...}}, ...]; {_REEXPORT}'
        )
    runs, start = None, 0
    if data and isinstance(data[0], dict) and "count" in data[0] and "name" not in data[0]:
        runs, start = _runs(data[0]["count"], path), 1
    entries = data[start:]
    if not entries:
        raise BadInput(f"{path} has no layer entries{' (only its count element)' if start else ''}: no layer "
                       f"was timed; {_REEXPORT}")
    names = [_name(e, start + i, path) for i, e in enumerate(entries)]
    for i, (entry, name) in enumerate(zip(entries, names, strict=True)):
        for key in _TIME_KEYS:
            if key in entry:
                _time(entry[key], key, start + i, name, path)
    statistic, key = _statistic(entries, names, runs, start, path)
    problem = nonfinite_problem(data)  # the times are checked above, with their entry: this is any other field
    if problem:
        raise BadInput(f"{path}: {problem}, and trtexec writes none there; {_REEXPORT}")
    scale = 1.0 / runs if statistic == "total/count" and runs else 1.0
    layers = tuple((name, float(entry[key]) * scale) for entry, name in zip(entries, names, strict=True))
    return TrtProfile(str(path), runs, statistic, layers)


def match_profile(profile: TrtProfile, info: EngineInfo) -> dict[str, float]:
    """{engine layer name: ms per run}. Every profile name must be a layer name of `info` (else BadInput);
    engine layers the profile did not time are absent. Names that occur more than once (TensorRT can give
    two layers one name, e.g. the reformat NoOps around a horizontally merged `A || B` layer; trtexec
    then writes one entry per layer, in order) hold the sum of their entries: the time of the layers of
    that name. Names cannot tell apart two builds of one model whose layer names coincide (the TensorRT 8.4
    mobilenet profile names are all layers of the TensorRT 8.2 build, too)."""
    engine_names = {layer.name for layer in info.layers}
    distinct = list(dict.fromkeys(name for name, _ in profile.layers))
    foreign = [name for name in distinct if name not in engine_names]
    if len(foreign) == len(distinct):
        raise BadInput(
            f"{profile.path}: none of its {len(distinct)} layer names is a layer of the engine in {info.path}: is "
            "it the profile of another engine? Give the --exportProfile and --exportLayerInfo files of one build"
        )
    if foreign:
        shown = ", ".join(_short(n) for n in foreign[:2]) + (", ..." if len(foreign) > 2 else "")
        raise BadInput(
            f"{profile.path}: {len(foreign)} of its {len(distinct)} layer names are no layer of the engine in "
            f"{info.path} ({shown}): the profile and the layer information must come from the same engine "
            "build; export both in one trtexec run (--exportProfile and --exportLayerInfo)"
        )
    out: dict[str, float] = {}
    for name, ms in profile.layers:
        out[name] = out.get(name, 0.0) + ms
    return out


def _load(path: Path) -> Any:
    text = read_text(path, "TensorRT profile", BadInput, "; write one with trtexec --exportProfile=FILE",
                     f"; {_REEXPORT}")
    try:  # NaN and Infinity are read, and refused with the entry they are in (_time)
        return parse_json(text, strict=False, nonfinite=True)  # strict=False: trtexec writes names unescaped
    except JsonLimit as err:
        what = {"depth": f"nests JSON {'thousands' if 'thousands' in str(err) else f'more than {MAX_DEPTH}'} deep",
                "digits": "holds a number with thousands of digits"}.get(err.limit, str(err).removeprefix("it "))
        raise BadInput(f"{path} {what}: trtexec never writes that, so it is not a TensorRT profile; {_REEXPORT}") from None
    except json.JSONDecodeError as err:
        if _NAN_INF.search(text):
            raise BadInput(f"{path} holds nan or inf times, which trtexec writes when a layer could not be "
                           f"timed and which are not JSON; {_REEXPORT}") from None
        raise BadInput(f"{path} is not JSON ({err.msg} at line {err.lineno}): it may be truncated, or not a "
                       f"TensorRT profile; {_REEXPORT}") from None


def _not_a_list(data: Any, path: Path) -> str:
    if isinstance(data, dict) and ("Layers" in data or "LayerType" in data):
        return (f"{path} is TensorRT layer information, not a profile: give the file written by trtexec "
                "--exportProfile=FILE")
    if isinstance(data, dict) and {"model_options", "build_options", "performance_summary",
                                   "device_information"} & set(data):
        return (f"{path} is a TREx/trtexec metadata file, not a per-layer profile: give the file written by "
                "trtexec --exportProfile=FILE (TREx: *.profile.json)")
    return (f'{path} is JSON but not a TensorRT profile, which is a list [{{"count": N}}, {{"name": ..., '
            f'"medianMs": ...}}, ...]; {_REEXPORT}')


def _runs(count: Any, path: Path) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadInput(f'{path}: its first element {{"count": {json.dumps(count)[:40]}}} is not a positive number '
                       f"of timed runs; {_REEXPORT}")
    return count


def _name(entry: Any, index: int, path: Path) -> str:
    if not isinstance(entry, dict):
        raise BadInput(f"{path}: entry [{index}] is not an object with a layer name and times; {_REEXPORT}")
    name = entry.get("name")
    if not isinstance(name, str):
        what = "has no layer name" if name is None else "has a layer name that is not a string"
        raise BadInput(f"{path}: entry [{index}] {what}; {_REEXPORT}")
    return name


def _time(value: Any, key: str, index: int, name: str, path: Path) -> None:
    where = f"{path}: entry [{index}] {_short(name)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{where}: {key} is {json.dumps(value)[:40]}, not a number of milliseconds; {_REEXPORT}")
    if value < 0:
        raise BadInput(f"{where}: {key} is negative ({value}), which no timing is; {_REEXPORT}")


def _statistic(entries: list[dict[str, Any]], names: list[str], runs: int | None, start: int,
               path: Path) -> tuple[str, str]:
    """The best statistic every entry has (one for the file, so that layers stay comparable)."""
    for statistic, key in _STATISTICS:
        if statistic == "total/count" and runs is None:
            continue
        if all(key in e for e in entries):
            return statistic, key
    # no common statistic: name the first entry without any usable time, else the first that lacks what
    # the others have (a file mixing layouts)
    usable = [k for s, k in _STATISTICS if s != "total/count" or runs is not None]
    for i, (e, name) in enumerate(zip(entries, names, strict=True)):
        if not any(k in e for k in usable):
            only_total = "timeMs" in e and runs is None
            why = ('only timeMs (the total of all runs), and no {"count": N} element to divide it by' if only_total
                   else "no time (medianMs, averageMs, or timeMs with a count)")
            raise BadInput(f"{path}: entry [{start + i}] {_short(name)} has {why}; {_REEXPORT}")
    first = next(k for k in usable if k in entries[0])
    i, name = next((i, n) for i, (e, n) in enumerate(zip(entries, names, strict=True)) if first not in e)
    raise BadInput(f"{path}: entry [{start + i}] {_short(name)} has no {first}, which the entries before it have: "
                   f"the file mixes profile layouts; {_REEXPORT}")


def _short(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:97] + "...")
