"""The report: frozen dataclasses, their JSON form (`"schema": "layerdiff.report/1"`), reading it back
(`load_report`) and atomic writing. Field names are a contract: add fields freely, never rename or drop
one without a new schema.

Numbers that are not finite (an infinite SQNR of identical tensors, a relative error against an
all-zero reference) are written as null, and `nonfinite_values` beside them says which they were, so a
report read back equals the one written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from layerdiff.cost import Cost, GateCheck
from layerdiff.diffs import (  # noqa: F401  (the report's rows, and what is read from them)
    LayerDiff, OutputDiff, TensorDiff, amplifiers, error_growth, precision_audit)
from layerdiff.errors import ReportError
from layerdiff.files import write_atomic
from layerdiff.jsonread import as_object, get_field, pick, read_json
from layerdiff.metrics import TensorMetrics

SCHEMA = "layerdiff.report/1"


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


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


_OWN = frozenset({"spec", "kind", "backend", "runtime", "provider", "plan", "pinned_fp32", "fp16_emulated"})


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
        clash = sorted(set(self.details) & _OWN)
        if clash:
            raise ValueError(f"candidate details may not name the report's own fields: {', '.join(clash)}")
        object.__setattr__(self, "details", _frozen(self.details))

    def get(self, key: str, default: Any = None) -> Any:
        """A kind-specific fact (calibration, quantization, path, engine_info, ...)."""
        return self.details.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, "spec": self.spec, "kind": self.kind, "backend": self.backend,
                "runtime": self.runtime, "provider": self.provider,
                "plan": dict(self.plan) if self.plan is not None else None,
                "pinned_fp32": list(self.pinned_fp32), "fp16_emulated": list(self.fp16_emulated)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "candidate") -> CandidateInfo:
        own = _OWN
        as_object(d, where)
        return cls(get_field(d, "spec", "str", where), get_field(d, "kind", "str", where), get_field(d, "runtime", "str", where),
                   get_field(d, "provider", "str", where, ""), get_field(d, "backend", "str", where, ""),
                   get_field(d, "plan", "object | None", where, None),
                   get_field(d, "pinned_fp32", "tuple[str, ...] | None", where, None) or (),
                   get_field(d, "fp16_emulated", "tuple[str, ...] | None", where, None) or (),
                   {k: v for k, v in d.items() if k not in own})


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
    outputs: tuple[str, ...] = ()  # the output specs checked (`--outputs`, slices allowed); none: every output


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
    cost: Cost | None = None  # --bench, --trt-profile
    gate: tuple[GateCheck, ...] = ()  # --max-abs, --min-speedup, --max-size-ratio

    @property
    def gate_passed(self) -> bool:
        return all(g.passed for g in self.gate)

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
            "cost": self.cost.to_dict() if self.cost else None,
            "gate": [g.to_dict() for g in self.gate],
            "precision_audit": precision_audit(self.layers),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """A report's JSON form read back; anything missing or of the wrong type is a ReportError."""
        d = as_object(d, "the report")

        def part(kind: type, key: str) -> Any:
            return kind(**pick(kind, get_field(d, key, "object", ""), key))

        fd = get_field(d, "first_divergence", "object | None", "", None)
        tol = get_field(d, "tolerance", "object | None", "", None)
        return cls(
            model=part(ModelInfo, "model"),
            inputs=part(InputsInfo, "inputs"),
            reference=part(ReferenceInfo, "reference"),
            candidate=CandidateInfo.from_dict(get_field(d, "candidate", "object", "")),
            capture=part(CaptureInfo, "capture"),
            layers=tuple(LayerDiff.from_dict(x, f"layers[{i}]") for i, x in enumerate(get_field(d, "layers", "list", ""))),
            outputs=tuple(OutputDiff.from_dict(x, f"outputs[{i}]")
                          for i, x in enumerate(get_field(d, "outputs", "list", ""))),
            first_divergence=Divergence(**pick(Divergence, fd, "first_divergence")) if fd is not None else None,
            thresholds=part(Thresholds, "thresholds"),
            counts=part(Counts, "counts"),
            warnings=get_field(d, "warnings", "tuple[str, ...]", "", ()),
            divergence_note=get_field(d, "divergence_note", "str", "", ""),
            tolerance=Tolerance(**pick(Tolerance, tol, "tolerance")) if tol is not None else None,
            cost=Cost.from_dict(as_object(cost, "cost")) if (cost := d.get("cost")) is not None else None,
            gate=tuple(GateCheck.from_dict(g, f"gate[{i}]")
                       for i, g in enumerate(get_field(d, "gate", "list", "", []))),
        )


def _public(obj: Any) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}


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
    damaged = f"{path} is a damaged layerdiff report ({{}}); re-run layerdiff compare"
    # write_report writes finite numbers only (others are null): NaN, Infinity or 1e999 is damage
    data = read_json(path, "layerdiff report", ReportError, top=None,
                     not_json="{path} is not a layerdiff report (not readable JSON: {reason})",
                     damaged="{path} is a damaged layerdiff report ({reason}); re-run layerdiff compare")
    if not isinstance(data, dict) or "schema" not in data:
        raise ReportError(f"{path} is not a layerdiff report (no \"schema\" field)")
    schema = data["schema"]
    if schema != SCHEMA:
        shown = repr(schema[:80] + ("..." if len(schema) > 80 else "")) if isinstance(schema, str) else \
            f"of type {type(schema).__name__}"
        raise ReportError(f"{path} has schema {shown}; this layerdiff reads {SCHEMA!r} (made by another "
                          "version: re-run layerdiff compare to make a new report)")
    try:
        return Report.from_dict(data)
    except ReportError as err:
        raise ReportError(damaged.format(err)) from None


def write_report(report: Report, path: str | Path) -> None:
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
    write_atomic(path, text.encode())
