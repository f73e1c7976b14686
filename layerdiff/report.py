"""The report: frozen dataclasses, their JSON form (`"schema": "layerdiff.report/1"`), reading it back
(`load_report`) and atomic writing. Field names are a contract: add fields freely, never rename or drop
one without a new schema.

Numbers that are not finite (an infinite SQNR of identical tensors, a relative error against an
all-zero reference) are written as null, and `nonfinite_values` beside them says which they were, so a
report read back equals the one written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
import uuid
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from layerdiff.errors import OutputPathError, ReportError
from layerdiff.metrics import METRICS, Aggregate, TensorMetrics

SCHEMA = "layerdiff.report/1"
_RANK = {"int4": 0, "fp4": 0, "fp8": 1, "int8": 2, "uint8": 2, "fp16": 3, "bf16": 3, "tf32": 4, "fp32": 5}


def _aggregate_to_json(agg: Aggregate) -> dict[str, Any]:
    """The worst sample's metrics at the top, the means under "mean" (the report's layout)."""
    return {**agg.worst.to_json(), "mean": agg.mean.to_json(), "samples": agg.samples}


def _aggregate_from_json(d: Mapping[str, Any]) -> Aggregate:
    return Aggregate(TensorMetrics.from_json(d), TensorMetrics.from_json(d["mean"]), int(d["samples"]))


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class TensorDiff:
    tensor: str
    shape: tuple[int, ...] | None
    candidate_tensor: str | None
    accumulated: Aggregate | None  # None: not compared (see unpaired_reason)
    local: Aggregate | None = None
    unpaired_reason: str = ""
    view: str = ""  # "quantized": the candidate only ever holds this tensor rounded to INT8

    @property
    def paired(self) -> bool:
        return self.accumulated is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensor": self.tensor, "shape": list(self.shape) if self.shape is not None else None,
                             "paired": self.paired, "candidate_tensor": self.candidate_tensor}
        if self.view:
            d["view"] = self.view
        if self.accumulated is None:
            d.update({k: None for k in METRICS})
            d.update({"nonfinite": None, "ref_absmax": None, "exceeds_fp16": None, "local": None,
                      "unpaired_reason": self.unpaired_reason})
            return d
        d.update(_aggregate_to_json(self.accumulated))
        d["local"] = _aggregate_to_json(self.local) if self.local is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorDiff:
        paired = bool(d["paired"])
        return cls(str(d["tensor"]), tuple(int(x) for x in d["shape"]) if d.get("shape") is not None else None,
                   d.get("candidate_tensor"), _aggregate_from_json(d) if paired else None,
                   _aggregate_from_json(d["local"]) if paired and d.get("local") else None,
                   str(d.get("unpaired_reason", "")), str(d.get("view", "")))


@dataclass(frozen=True)
class LayerDiff:
    """One row: a layer, the layers one kernel computes, a conversion (Q/DQ or Cast), or a Constant."""

    index: int
    name: str
    op: str
    precision: str
    outputs: tuple[TensorDiff, ...]
    precision_emulated: bool = False
    diverges: bool = False
    local_unavailable: str = ""
    onnx_nodes: tuple[str, ...] = ()  # the model's nodes of this row (several when fused; none for a conversion)
    engine_layers: tuple[str, ...] = ()
    requested_precision: str | None = None
    kind: str = "layer"  # layer | conversion | constant
    kernels: tuple[str, ...] = ()  # the kernels that computed it (QLinearConv, FusedConv, CaskConvolution...)
    dequantized_inputs: bool = False  # a float kernel reading INT8 values through DequantizeLinear
    converts: str = ""  # conversion rows: the tensor being rounded

    @property
    def local_rel_rms(self) -> float | None:
        """The row's local error: worst relative RMS error over its outputs (None when unknown)."""
        vals = [o.local.worst.rel_rms for o in self.outputs if o.local is not None]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else None

    @property
    def request_realised(self) -> bool | None:
        """None when nothing was requested for this row; else whether the request was realised."""
        if self.requested_precision is None:
            return None
        return _same_precision(self.requested_precision, self.precision)

    @property
    def local_nonfinite(self) -> bool:
        """The candidate produced NaN/Inf where the FP32 recomputation of this row did not."""
        return any(o.local is not None and o.local.worst.cand_nonfinite > o.local.worst.ref_nonfinite
                   for o in self.outputs)

    @property
    def local_cosine(self) -> float | None:
        vals = [o.local.worst.cosine for o in self.outputs if o.local is not None]
        vals = [v for v in vals if not math.isnan(v)]
        return min(vals) if vals else None

    @property
    def cosine(self) -> float | None:
        """Accumulated: the worst cosine of its outputs against the FP32 model."""
        vals = [o.accumulated.worst.cosine for o in self.outputs if o.accumulated is not None]
        vals = [v for v in vals if not math.isnan(v)]
        return min(vals) if vals else None

    @property
    def has_local(self) -> bool:
        return any(o.local is not None for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index, "name": self.name, "kind": self.kind, "op": self.op, "precision": self.precision,
            "realised_precision": self.precision, "requested_precision": self.requested_precision,
            "onnx_nodes": list(self.onnx_nodes), "engine_layers": list(self.engine_layers),
            "kernels": list(self.kernels), "outputs": [o.to_dict() for o in self.outputs], "diverges": self.diverges}
        if self.precision_emulated:
            d["precision_emulated"] = True
        if self.dequantized_inputs:
            d["dequantized_inputs"] = True
        if self.converts:
            d["converts"] = self.converts
        if self.requested_precision is not None:
            d["request_realised"] = self.request_realised
        if self.local_unavailable:
            d["local_unavailable"] = self.local_unavailable
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerDiff:
        return cls(int(d["index"]), str(d["name"]), str(d["op"]), str(d["precision"]),
                   tuple(TensorDiff.from_dict(o) for o in d["outputs"]), bool(d.get("precision_emulated", False)),
                   bool(d.get("diverges", False)), str(d.get("local_unavailable", "")),
                   tuple(str(n) for n in d.get("onnx_nodes", ())), tuple(str(n) for n in d.get("engine_layers", ())),
                   d.get("requested_precision"), str(d.get("kind", "layer")),
                   tuple(str(k) for k in d.get("kernels", ())), bool(d.get("dequantized_inputs", False)),
                   str(d.get("converts", "")))


@dataclass(frozen=True)
class OutputDiff:
    """A final output of the model, from plain runs of both (nothing exposed). Float outputs get the
    metrics; integer and bool outputs (class indices, masks) the fraction of equal elements."""

    tensor: str
    accumulated: Aggregate | None = None
    match_rate: float | None = None  # integer outputs: worst sample's fraction of equal elements
    reason: str = ""  # why it is not compared

    @property
    def paired(self) -> bool:
        return self.accumulated is not None or self.match_rate is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensor": self.tensor, "paired": self.paired}
        if self.accumulated is not None:
            return d | {"kind": "float"} | _aggregate_to_json(self.accumulated)
        d.update({k: None for k in METRICS})
        if self.match_rate is not None:
            d.update({"kind": "integer", "match_rate": self.match_rate})
        else:
            d["unpaired_reason"] = self.reason
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputDiff:
        if d.get("kind") == "float" or (d.get("paired") and "mean" in d):
            return cls(str(d["tensor"]), _aggregate_from_json(d))
        rate = d.get("match_rate")
        return cls(str(d["tensor"]), None, float(rate) if rate is not None else None, str(d.get("unpaired_reason", "")))


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    layers: int  # compute layers (Constant nodes counted apart)
    opset: int
    constants: int = 0


@dataclass(frozen=True)
class InputsInfo:
    source: str
    samples: int
    random: bool


@dataclass(frozen=True)
class ReferenceInfo:
    runtime: str
    precision: str
    provider: str


@dataclass(frozen=True)
class CandidateInfo:
    spec: str
    kind: str
    runtime: str
    provider: str
    backend: str = ""
    plan: Mapping[str, Any] | None = None
    pinned_fp32: tuple[str, ...] = ()
    fp16_emulated: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # kind-specific facts

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", _frozen(self.details))

    def get(self, key: str, default: Any = None) -> Any:
        """A kind-specific fact (calibration, quantization, path, engine_info, ...)."""
        return self.details.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "backend": self.backend, "runtime": self.runtime,
                "provider": self.provider, "plan": dict(self.plan) if self.plan is not None else None,
                "pinned_fp32": list(self.pinned_fp32), "fp16_emulated": list(self.fp16_emulated), **self.details}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CandidateInfo:
        own = {"spec", "kind", "backend", "runtime", "provider", "plan", "pinned_fp32", "fp16_emulated"}
        return cls(str(d["spec"]), str(d["kind"]), str(d["runtime"]), str(d.get("provider", "")),
                   str(d.get("backend", "")), d.get("plan"), tuple(d.get("pinned_fp32") or ()),
                   tuple(d.get("fp16_emulated") or ()), {k: v for k, v in d.items() if k not in own})


@dataclass(frozen=True)
class CaptureInfo:
    mode: str  # kernels | mark-outputs | debug-tensors | imported
    chunks: int
    max_memory: int | None
    exposed_vs_plain_max_abs: float | None  # None where it was not measured
    matches_plain_engine: bool | None
    interrupted: bool
    samples_done: int
    layerdiff: str


@dataclass(frozen=True)
class Counts:
    layers: int
    rows: int
    float_tensors: int
    compared: int
    unpaired: int
    fused_away: int
    non_float_tensors: int
    exceeds_fp16: int
    local_errors: int
    constants: int = 0
    conversions: int = 0


@dataclass(frozen=True)
class Divergence:
    layer: str
    index: int
    op: str
    precision: str
    onnx_nodes: tuple[str, ...]
    tensor: str
    local_cosine: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class Thresholds:
    divergence_cosine: float
    min_cosine: float | None = None


@dataclass(frozen=True)
class Tolerance:
    """The final-output check a run was asked to make (`--min-cosine`)."""

    min_cosine: float
    passed: bool
    failed: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    model: ModelInfo
    inputs: InputsInfo
    reference: ReferenceInfo
    candidate: CandidateInfo
    capture: CaptureInfo
    layers: tuple[LayerDiff, ...]
    outputs: tuple[OutputDiff, ...]
    first_divergence: Divergence | None
    thresholds: Thresholds
    counts: Counts
    warnings: tuple[str, ...] = ()
    divergence_note: str = ""  # why no first divergence could be looked for (no local error computed)
    tolerance: Tolerance | None = None

    def output(self, name: str) -> OutputDiff | None:
        return next((o for o in self.outputs if o.tensor == name), None)

    def output_metrics(self, name: str) -> TensorMetrics | None:
        out = self.output(name)
        return out.accumulated.worst if out is not None and out.accumulated is not None else None

    def layer(self, name: str) -> LayerDiff | None:
        return next((lay for lay in self.layers if lay.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        plain = {f.name: dict(_public(getattr(self, f.name)))
                 for f in fields(self) if f.name in ("model", "inputs", "reference", "capture", "thresholds", "counts")}
        return {
            "schema": SCHEMA,
            **plain,
            "candidate": self.candidate.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "outputs": [o.to_dict() for o in self.outputs],
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "divergence_note": self.divergence_note,
            "tolerance": dict(_public(self.tolerance)) if self.tolerance else None,
            "precision_audit": precision_audit(self.layers),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        fd = d.get("first_divergence")
        tol = d.get("tolerance")
        capture = dict(d["capture"])
        return cls(
            model=ModelInfo(**_pick(ModelInfo, d["model"])),
            inputs=InputsInfo(**_pick(InputsInfo, d["inputs"])),
            reference=ReferenceInfo(**_pick(ReferenceInfo, d["reference"])),
            candidate=CandidateInfo.from_dict(d["candidate"]),
            capture=CaptureInfo(**_pick(CaptureInfo, capture)),
            layers=tuple(LayerDiff.from_dict(x) for x in d["layers"]),
            outputs=tuple(OutputDiff.from_dict(x) for x in d["outputs"]),
            first_divergence=Divergence(**{**_pick(Divergence, fd), "onnx_nodes": tuple(fd["onnx_nodes"])})
            if fd else None,
            thresholds=Thresholds(**_pick(Thresholds, d["thresholds"])),
            counts=Counts(**_pick(Counts, d["counts"])),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            divergence_note=str(d.get("divergence_note", "")),
            tolerance=Tolerance(float(tol["min_cosine"]), bool(tol["passed"]), tuple(tol["failed"])) if tol else None,
        )


def _public(obj: Any) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}


def _pick(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(d))
    if missing:
        raise KeyError(f"{cls.__name__.lower()} lacks {', '.join(missing)}")
    return {k: v for k, v in d.items() if k in names}


def _same_precision(requested: str, realised: str) -> bool:
    # an FP32 request is met by TF32 math only if the user allowed it; TensorRT calls both "FP32" layers
    return requested == realised or (requested == "fp32" and realised == "tf32")


def precision_audit(layers: tuple[LayerDiff, ...]) -> list[dict[str, Any]]:
    """Requested vs realised precision of every row whose precision was requested (a pinned node)."""
    return [{"layer": lay.name, "index": lay.index, "requested": lay.requested_precision,
             "realised": lay.precision, "realised_as_requested": lay.request_realised}
            for lay in layers if lay.requested_precision is not None]


def rank_layers(report: Report) -> list[LayerDiff]:
    """Rows by the error they introduce (local relative RMS error), worst first; rows whose candidate
    produced non-finite values the reference did not come before all others. Constant rows compute
    nothing (their rounding counts in the local error of the layers that read them) and are left out."""

    def key(layer: LayerDiff):
        err = layer.local_rel_rms
        return (not layer.local_nonfinite, -(err if err is not None else -1.0), layer.index)

    return sorted((layer for layer in report.layers if layer.kind != "constant" and layer.has_local), key=key)


def load_report(path: str | Path) -> Report:
    """Read a report written by `write_report` (or `layerdiff compare -o`). A missing, corrupt or
    foreign file, or another schema version, is a ReportError with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"report not found: {path} (write one with layerdiff compare ... -o {path.name})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path} is not a layerdiff report (not readable JSON: {str(err).splitlines()[0]})") from err
    if not isinstance(data, dict) or "schema" not in data:
        raise ReportError(f"{path} is not a layerdiff report (no \"schema\" field)")
    if data["schema"] != SCHEMA:
        raise ReportError(f"{path} has schema {data['schema']!r}; this layerdiff reads {SCHEMA!r} (made by another "
                          "version: re-run layerdiff compare to make a new report)")
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        what = str(err).strip("'\"") or type(err).__name__
        raise ReportError(f"{path} is a damaged layerdiff report ({what}); re-run layerdiff compare") from err


def check_writable(path: str | Path, protect: tuple[str | Path, ...] = ()) -> Path:
    """Fail before any work is done if `path` cannot be written, or would overwrite one of `protect`
    (the user's own input files)."""
    path = Path(path)
    for p in protect:
        if p is not None and Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise OutputPathError(f"refusing to write {path}: it is an input of this run; give another file name")
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"cannot write {path}: permission denied; give a path you can write")
    try:  # some places refuse new files whatever the permission bits say (/proc, read-only mounts)
        fd, probe = _new_file(path)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {err.strerror or err}; give another path") from err
    os.close(fd)
    os.unlink(probe)
    return path


def _new_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, created with mode 0666 less the umask (as any new file)."""
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = check_writable(path)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, path: str | Path) -> None:
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
    write_atomic(path, text.encode())
