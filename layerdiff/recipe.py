"""A precision-override recipe (`"schema": "layerdiff.recipe/1"`): the ONNX nodes to keep in FP32 for a
candidate to meet a tolerance, with the evidence, written by `bisect` and read by `export` and `apply`.

    {"schema": "layerdiff.recipe/1", "finished": true, "interrupted_at": null | "held-out check" | ...,
     "model": {"path", "sha256"}, "candidate": {"spec", "precision", "calibration"},
     "tolerance": {"metric", "threshold", "outputs", "direction"},
     "achieved": {"value", "passed", "samples"}, "baseline": {"value", "all_pinned"},
     "validation": {"samples", "source", "achieved", "failing", "holds", "counterexamples", "searched"} | null,
     "holdout": {"samples", "source", "achieved", "holds"} | null,
     "pins": [{"node", "op", "precision": "fp32", "covers", "engine_layers", "evidence"}],
     "forced": [...], "names_in_model": {node: {"name", "output"}}, "evaluations", "strategy",
     "objective": "pins" | "time", "status", "versions",
     "objective_time": {"source", "runs", "statistic", "fp32_kernel_ms", "reduced_kernel_ms", "recipe_kernel_ms",
                        "per_pin_ms", "finalists": [{"pins", "estimated_kernel_ms", "latency_ms_median",
                        "latency_ms_p90", "chosen"}], "finalist_runs"} | null,
     "cost": {"precision", "fp32", "reduced", "recipe", "speedup_kept"} | null}

Pins name ONNX nodes, never tensors. Field names are a contract, as the report's are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdiff.errors import BadInput
from layerdiff.files import write_atomic
from layerdiff.jsonread import (
    CALIBRATION_METHODS,
    finite_only,
    is_number,
    nonfinite_problem,
    ranges_problem,
    read_json,
    short,
)
from layerdiff.plan import PRECISIONS, PrecisionPlan

SCHEMA = "layerdiff.recipe/1"


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


@dataclass(frozen=True)
class Recipe:
    model_path: str
    model_sha256: str
    candidate: Mapping[str, Any]
    tolerance: Mapping[str, Any]
    pins: tuple[Mapping[str, Any], ...]
    forced: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the whole JSON object

    @property
    def precision(self) -> str:
        return self.candidate["precision"]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node kept in FP32: the pins, then the forced ones."""
        return tuple(p["node"] for p in self.pins) + tuple(n for n in self.forced if n not in
                                                           {p["node"] for p in self.pins})

    @property
    def plan(self) -> PrecisionPlan:
        return PrecisionPlan.uniform(self.precision, self.nodes)

    @property
    def finished(self) -> bool:
        return bool(self.data.get("finished", True))

    def doubts(self) -> list[str]:
        """Every reason this recipe should not be trusted as it is, in words, a held-out failure first;
        [] when nothing says so."""
        status = self.data.get("status")
        held = self.data.get("holdout")
        out = []
        if isinstance(held, dict) and held.get("holds") is False:
            out.append("this recipe fails its held-out samples: check it with layerdiff apply before building with it")
        checked = self.data.get("validation")
        if isinstance(checked, dict) and checked.get("holds") is False:
            out.append(f"this recipe fails {checked.get('failing', '?')} of its {checked.get('samples', '?')} validation "
                       "sample(s): its search ran out of counterexample rounds or evaluations")
        if not self.finished:
            step = self.data.get("interrupted_at")
            if isinstance(step, str) and step:
                out.append(f"this recipe is unfinished: the {step} after its search was interrupted"
                           + (", so it was NOT checked on held-out samples" if step == "held-out check" else ""))
            else:
                out.append("this recipe is unfinished (the search was interrupted): its pins may not be the fewest")
        if status in ("budget", "max-pins"):
            out.append(f"this recipe's search ended with status '{status}': its pins may not be the fewest or may "
                       "fail")
        said = self.data.get("warnings")
        for warning in said if isinstance(said, list) else ():  # what bisect said of it when it wrote it
            if isinstance(warning, str) and warning not in out:
                out.append(warning)
        return out


def recipe_dict(result, session, model_path: str) -> dict[str, Any]:
    """The JSON object of a BisectResult (layerdiff.bisect)."""
    import onnx
    import onnxruntime

    from layerdiff._version import __version__
    from layerdiff.export import ort_quantize_settings

    outcome = result.outcome
    try:
        import polygraphy
        poly = polygraphy.__version__
    except Exception:  # pragma: no cover - polygraphy is a dependency
        poly = None
    return {
        "schema": SCHEMA,
        # a search finished, but a step after it (held-out check, evidence, timing) did not: not finished
        "finished": result.status != "interrupted" and not result.interrupted_at,
        "interrupted_at": result.interrupted_at or None,
        "status": result.status,
        "model": {"path": str(model_path), "sha256": session.model.sha256},
        "candidate": {"spec": result.spec, "precision": result.precision,
                      **({"calibration": dict(result.calibration)} if result.calibration else {}),
                      **({"ort_quantize": ort_quantize_settings({n.op_type for n in session.model.proto.graph.node},
                                                                session.quantizer.placed),
                          "int8_placement": session.int8_placement} if result.spec == "ort-int8" else {}),
                      "ort_optimization": session.optimization},
        "tolerance": result.target.to_dict(),
        "achieved": {"value": _finite(outcome.value), "passed": outcome.passed, "samples": result.samples,
                     "per_sample": [_finite(v) for v in outcome.per_sample]},
        "baseline": {"value": _finite(result.baseline.value),
                     "all_pinned": _finite(result.all_pinned.value) if result.all_pinned is not None else None},
        "validation": None if result.validation is None else {
            "samples": result.validation.samples, "source": result.validation.source,
            "achieved": _finite(result.validation.value), "failing": result.validation.failing,
            "holds": result.validation.holds, "counterexamples": list(result.validation.counterexamples),
            "searched": result.validation.searched},
        "holdout": None if result.holdout is None else {
            "samples": result.holdout.samples, "source": result.holdout.source,
            "achieved": _finite(result.holdout.value), "holds": result.holdout.holds},
        "pins": [{"node": p.node, "op": p.op, "precision": "fp32", "covers": list(p.covers),
                  "engine_layers": list(p.engine_layers),
                  "evidence": {k: _finite(v) if isinstance(v, float) else v for k, v in p.evidence.items()}}
                 for p in result.pins],
        "forced": list(result.forced),
        "names_in_model": names_in_model(session.model.layers, [p.node for p in result.pins] + list(result.forced)),
        "pinnable": result.pinnable,
        "evaluations": result.evaluations,
        "strategy": result.strategy,
        "objective": result.objective,
        "objective_time": None if result.pin_costs is None else objective_time(result),
        "cost": result.cost.to_dict() if result.cost is not None else None,
        "warnings": list(result.warnings),
        "versions": {"layerdiff": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "polygraphy": poly},
    }


def names_in_model(layers, nodes) -> dict[str, dict[str, str]]:
    """{node: {"name": its name in the model file ("" when it has none), "output": its first output}}
    for the `nodes` whose names layerdiff gave (graph.Layer.named is False: the node had no name, or
    shared one) and for those whose name another node shares (the one that kept it), so that exports can name them as a build tool will (TensorRT's ONNX parser calls an
    unnamed node's layer "node_of_" + its first output) or say that they cannot."""
    from collections import Counter

    wanted = set(nodes)
    uses = Counter(lay.model_name for lay in layers if lay.model_name)
    return {lay.name: {"name": lay.model_name, "output": lay.outputs[0] if lay.outputs else ""}
            for lay in layers if lay.name in wanted and (not lay.named or uses[lay.model_name] > 1)}


def objective_time(result) -> dict[str, Any]:
    """bisect --objective time's figures: the profiler's kernel times of the FP32 model and the
    all-reduced plan, each pin's estimated cost, the answer's estimate, and the finalists timed side by
    side to choose it."""
    costs = result.pin_costs
    pins = set(result.outcome.pins) | set(result.forced)
    return {"source": costs.source, "runs": costs.runs, "statistic": "median", "fp32_kernel_ms": costs.fp32_total_ms,
            "reduced_kernel_ms": costs.reduced_total_ms, "recipe_kernel_ms": costs.estimate_ms(pins),
            "per_pin_ms": {n: costs.added_ms.get(n, 0.0) for n in sorted(result.outcome.pins)},
            "finalists": [{"pins": list(f.pins), "estimated_kernel_ms": f.estimated_kernel_ms,
                           "latency_ms_median": f.latency_ms_median, "latency_ms_p90": f.latency_ms_p90,
                           "chosen": f.chosen} for f in result.finalists],
            "finalist_runs": result.race_runs}


def pinned_recipe(report, rows, model_path: str | None = None) -> dict[str, Any]:
    """A recipe of rows pinned by hand (the TUI's `e`): their ONNX nodes kept in FP32 in the report's
    candidate. Nothing was measured with the pins in place (`achieved` is null; `layerdiff apply`
    measures it). Rows with no ONNX node (conversions, constants) cannot be pinned: BadInput."""
    from layerdiff._version import __version__
    from layerdiff.specs import SPECS

    cand = report.candidate
    precision = SPECS[cand.spec].precision if cand.spec in SPECS else (cand.plan or {}).get("default")
    if precision not in PRECISIONS or precision == "fp32" or cand.spec not in SPECS:
        raise BadInput(f"the report's candidate '{cand.spec}' is not one layerdiff builds with pins "
                       f"({', '.join(s for s in SPECS if SPECS[s].precision != 'fp32')}): a recipe cannot rebuild it")
    bad = [row.name for row in rows if not row.onnx_nodes or row.kind != "layer"]
    if bad:
        raise BadInput(f"'{bad[0]}' is a {next(r.kind for r in rows if r.name == bad[0])} row with no ONNX node of "
                       "its own: pin the layer that reads or writes it")
    pins, seen = [], set()
    for row in sorted(rows, key=lambda r: r.index):
        for node in row.onnx_nodes:
            if node in seen:
                continue
            seen.add(node)
            pins.append({"node": node, "op": row.op, "precision": "fp32", "covers": [],
                         "engine_layers": list(row.engine_layers),
                         "evidence": {"realised_precision": row.precision, "local_cosine": _finite(row.local_cosine),
                                      "local_rel_rms": _finite(row.local_rel_rms),
                                      "accumulated_cosine": _finite(row.cosine)}})
    calibration = cand.get("calibration")
    tol = report.tolerance
    generated = _generated_names(str(model_path or report.model.path), report.model.sha256, [p["node"] for p in pins])
    return {
        "schema": SCHEMA, "finished": True, "status": "pinned by hand",
        "model": {"path": str(model_path or report.model.path), "sha256": report.model.sha256},
        "candidate": {"spec": cand.spec, "precision": precision,
                      **({"calibration": dict(calibration)} if isinstance(calibration, Mapping) else {}),
                      **({"ort_optimization": cand.get("ort_optimization")} if cand.get("ort_optimization") else {})},
        "tolerance": {"metric": "cosine", "threshold": tol.min_cosine, "outputs": list(tol.outputs),
                      "direction": "min"} if tol is not None else {},
        "achieved": None, "baseline": None, "holdout": None,
        "pins": pins, "forced": [], **({"names_in_model": generated} if generated is not None else {}),
        "pinnable": None, "evaluations": 0, "strategy": "by hand",
        "warnings": ["pinned by hand from a report: not measured with the pins in place; run layerdiff apply"],
        "versions": {"layerdiff": __version__},
    }


def _generated_names(model_path: str, sha256: str, nodes) -> dict[str, dict[str, str]] | None:
    """names_in_model for a report's model, read from its file; None where that file is not there or is
    not the report's model (the recipe then says nothing of the names)."""
    import onnx
    from google.protobuf.message import DecodeError

    from layerdiff.errors import ModelError
    from layerdiff.graph import _sha256 as file_sha256
    from layerdiff.topology import topological_layers

    try:
        if file_sha256(Path(model_path)) != sha256:
            return None
        proto = onnx.load(str(model_path), load_external_data=False)
        layers = topological_layers(proto.graph, frozenset(t.name for t in proto.graph.initializer))
    except (OSError, DecodeError, ModelError):
        return None
    return names_in_model(layers, nodes)


def write_recipe(data: Mapping[str, Any], path: str | Path) -> None:
    """Write a recipe atomically; a number that is not finite is written as null (JSON has none, and
    load_recipe refuses NaN and Infinity as damage)."""
    write_atomic(path, (json.dumps(finite_only(data), indent=1, allow_nan=False) + "\n").encode())


def load_recipe(path: str | Path, model_sha256: str | None = None) -> Recipe:
    """Read a recipe; a damaged file, an unknown schema, or (with `model_sha256`) a recipe made for
    another model: BadInput in one line. Every field a command reads is checked here (its type, and
    calibration ranges that INT8 can use), so that no command fails later on a damaged recipe."""
    path = Path(path)
    # NaN and Infinity are read, then refused naming their field (calibration ranges first)
    data = read_json(path, "layerdiff recipe", BadInput, top=None, missing="recipe not found: {path}",
                     damaged="{path} is a damaged layerdiff recipe ({reason})", nonfinite=True)
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a layerdiff recipe (a JSON {type(data).__name__}, not an object)")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise BadInput(f"{path} has recipe schema {repr(schema)[:80]}; this layerdiff reads {SCHEMA!r}")
    problem = _recipe_problem(data)
    problem = problem or nonfinite_problem(data)
    if problem:
        raise BadInput(f"{path} is a damaged layerdiff recipe ({problem})")
    model, cand, tol = data["model"], data["candidate"], data["tolerance"]
    if model_sha256 is not None and model["sha256"] != model_sha256:
        raise BadInput(f"{path} was made for another model ({model['path']}, sha256 {model['sha256'][:12]}...; this "
                       f"one is {model_sha256[:12]}...): run bisect on this model")
    return Recipe(beside(model["path"], path), model["sha256"], cand, tol, tuple(data["pins"]),
                  tuple(data.get("forced", ())), data)


def beside(named: str, holder: Path) -> str:
    """A path a file holds (a recipe's model, a report's inputs), as a user can open it from anywhere:
    as written where that exists (absolute, or relative to where the file was made and used from
    there), else relative to the directory of the file that holds it."""
    if not named or Path(named).is_absolute() or Path(named).exists():
        return named
    there = holder.parent / named
    return str(there) if there.exists() else named


_ORT_LEVELS = ("all", "extended", "basic", "disabled")  # backends/ortnames.LEVELS, without importing onnxruntime
_STRINGS = "a list of strings"


def _recipe_problem(data: Mapping[str, Any]) -> str | None:
    """The first field of a recipe a command cannot use, in words; None when there is none."""
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    missing = [k for k in ("model", "candidate", "tolerance", "pins") if k not in data]
    if missing:
        return f"it lacks {', '.join(missing)}"
    model, cand, tol, pins = data["model"], data["candidate"], data["tolerance"], data["pins"]
    if not (isinstance(model, dict) and isinstance(model.get("sha256"), str) and isinstance(model.get("path"), str)):
        return "model is not {path, sha256} of two strings"
    if not (isinstance(cand, dict) and isinstance(cand.get("spec"), str) and cand.get("precision") in PRECISIONS):
        return f"candidate is not {{spec, precision}} with a precision of {', '.join(PRECISIONS)}"
    if "ort_optimization" in cand and cand["ort_optimization"] not in _ORT_LEVELS:
        return f"candidate.ort_optimization is {short(cand['ort_optimization'])}, not one of {', '.join(_ORT_LEVELS)}"
    if "ort_quantize" in cand and not isinstance(cand["ort_quantize"], dict):
        return "candidate.ort_quantize is not an object"
    calibration = cand.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            return "candidate.calibration is not an object"
        if calibration.get("method", "minmax") not in tuple(CALIBRATION_METHODS):  # tuple: the method may be a dict
            return (f"candidate.calibration.method is {short(calibration['method'])}, not one of "
                    f"{', '.join(CALIBRATION_METHODS)}")
        if "ranges" in calibration and (problem := ranges_problem(calibration["ranges"])):
            return f"candidate.calibration.ranges: {problem}"
    if not isinstance(tol, dict):
        return "tolerance is not an object"
    if tol:  # {} in a recipe pinned by hand: nothing to check
        function = tol.get("metric") == "function"
        if not isinstance(tol.get("metric"), str) or function and not isinstance(tol.get("metric_fn"), str):
            return "tolerance.metric is not a metric name (or \"function\" with metric_fn FILE.py:FUNCTION)"
        if not is_number(tol.get("threshold")):
            return f"tolerance.threshold is {short(tol.get('threshold'))}, not a finite number"
        if not strings(tol.get("outputs", [])):
            return f"tolerance.outputs is not {_STRINGS}"
        if tol.get("direction", "min") not in ("min", "max"):
            return f"tolerance.direction is {short(tol['direction'])}, not \"min\" or \"max\""
    if not isinstance(pins, list):
        return "pins is not a list"
    for i, p in enumerate(pins):
        if not (isinstance(p, dict) and isinstance(p.get("node"), str) and p["node"] and p.get("precision") == "fp32"):
            return f"pins[{i}] is not {{node, precision: fp32}} with a node name"
        if not strings(p.get("engine_layers", [])) or not strings(p.get("covers", [])):
            return f"pins[{i}]: engine_layers and covers are not {_STRINGS}"
    forced = data.get("forced", [])
    if not (strings(forced) and all(forced)):
        return "forced is not a list of node names"
    return None
