"""The report: frozen dataclasses, their JSON form (`"schema": "layerdiff.report/1"`), and atomic
writing. Field names are a contract: add fields freely, never rename or drop one without a new schema.

Numbers that are not finite (an infinite SQNR of identical tensors, a relative error against an
all-zero reference) are written as null; the other fields of the same tensor tell which case it is.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from layerdiff.errors import OutputPathError
from layerdiff.metrics import Aggregate, TensorMetrics, finite_or_none

SCHEMA = "layerdiff.report/1"
_METRICS = ("cosine", "max_abs", "mean_abs", "rel_rms", "sqnr_db")


def _metrics_dict(m: TensorMetrics) -> dict[str, Any]:
    return {k: finite_or_none(getattr(m, k)) for k in _METRICS}


@dataclass(frozen=True)
class TensorDiff:
    tensor: str
    shape: tuple[int, ...] | None
    candidate_tensor: str | None
    accumulated: Aggregate | None  # None: not compared (see unpaired_reason)
    local: Aggregate | None = None
    unpaired_reason: str = ""

    @property
    def paired(self) -> bool:
        return self.accumulated is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensor": self.tensor, "shape": list(self.shape) if self.shape else None,
                             "paired": self.paired, "candidate_tensor": self.candidate_tensor}
        if self.accumulated is None:
            d.update({k: None for k in _METRICS})
            d.update({"nonfinite": None, "ref_absmax": None, "exceeds_fp16": None, "local": None,
                      "unpaired_reason": self.unpaired_reason})
            return d
        w = self.accumulated.worst
        d.update(_metrics_dict(w))
        d["nonfinite"] = {"reference": w.ref_nonfinite, "candidate": w.cand_nonfinite}
        d["ref_absmax"] = finite_or_none(w.ref_absmax)
        d["exceeds_fp16"] = w.exceeds_fp16
        d["mean"] = _metrics_dict(self.accumulated.mean)
        d["samples"] = self.accumulated.samples
        d["local"] = None
        if self.local is not None:
            d["local"] = _metrics_dict(self.local.worst) | {"mean": _metrics_dict(self.local.mean)}
        elif self.unpaired_reason:
            d["local_unavailable"] = self.unpaired_reason
        return d


@dataclass(frozen=True)
class LayerDiff:
    index: int
    name: str
    op: str
    precision: str
    outputs: tuple[TensorDiff, ...]
    precision_emulated: bool = False
    diverges: bool = False
    local_unavailable: str = ""
    onnx_nodes: tuple[str, ...] = ()  # the ONNX nodes of this row (several for a fused engine layer)
    engine_layers: tuple[str, ...] = ()
    requested_precision: str | None = None

    @property
    def local_rel_rms(self) -> float | None:
        """The layer's local error: worst relative RMS error over its outputs (None when unknown)."""
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
        """The candidate produced NaN/Inf where the FP32 recomputation of this layer did not."""
        return any(o.local is not None and o.local.worst.cand_nonfinite > o.local.worst.ref_nonfinite
                   for o in self.outputs)

    @property
    def local_cosine(self) -> float | None:
        vals = [o.local.worst.cosine for o in self.outputs if o.local is not None]
        vals = [v for v in vals if not math.isnan(v)]
        return min(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "name": self.name, "op": self.op, "precision": self.precision,
             "realised_precision": self.precision, "requested_precision": self.requested_precision,
             "onnx_nodes": list(self.onnx_nodes or (self.name,)), "engine_layers": list(self.engine_layers),
             "outputs": [o.to_dict() for o in self.outputs], "diverges": self.diverges}
        if self.precision_emulated:
            d["precision_emulated"] = True
        if self.requested_precision is not None:
            d["request_realised"] = self.request_realised
        if self.local_unavailable:
            d["local_unavailable"] = self.local_unavailable
        return d


@dataclass(frozen=True)
class Report:
    model: dict[str, Any]
    inputs: dict[str, Any]
    reference: dict[str, Any]
    candidate: dict[str, Any]
    capture: dict[str, Any]
    layers: tuple[LayerDiff, ...]
    outputs: tuple[tuple[str, Aggregate | None], ...]
    first_divergence: dict[str, Any] | None
    thresholds: dict[str, Any]
    counts: dict[str, int]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def output_metrics(self, name: str) -> TensorMetrics | None:
        for n, agg in self.outputs:
            if n == name and agg is not None:
                return agg.worst
        return None

    def to_dict(self) -> dict[str, Any]:
        outputs = []
        for name, agg in self.outputs:
            if agg is None:
                outputs.append({"tensor": name, "paired": False} | {k: None for k in _METRICS})
                continue
            w = agg.worst
            outputs.append({"tensor": name, "paired": True, **_metrics_dict(w),
                            "nonfinite": {"reference": w.ref_nonfinite, "candidate": w.cand_nonfinite},
                            "ref_absmax": finite_or_none(w.ref_absmax), "exceeds_fp16": w.exceeds_fp16,
                            "mean": _metrics_dict(agg.mean), "samples": agg.samples})
        return {
            "schema": SCHEMA,
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name in
               ("model", "inputs", "reference", "candidate", "capture", "thresholds", "counts")},
            "layers": [layer.to_dict() for layer in self.layers],
            "outputs": outputs,
            "first_divergence": self.first_divergence,
            "precision_audit": precision_audit(self.layers),
            "warnings": list(self.warnings),
        }


def _same_precision(requested: str, realised: str) -> bool:
    # an FP32 request is met by TF32 math only if the user allowed it; TensorRT calls both "FP32" layers
    return requested == realised or (requested == "fp32" and realised == "tf32")


def precision_audit(layers: tuple[LayerDiff, ...]) -> list[dict[str, Any]]:
    """Requested vs realised precision of every row whose precision was requested (a pinned node)."""
    return [{"layer": lay.name, "index": lay.index, "requested": lay.requested_precision,
             "realised": lay.precision, "realised_as_requested": lay.request_realised}
            for lay in layers if lay.requested_precision is not None]


def rank_layers(report: Report) -> list[LayerDiff]:
    """Layers by the error they introduce (local relative RMS error), worst first; layers whose
    candidate produced non-finite values the reference did not come before all others. Constant nodes
    compute nothing: their rounding counts in the local error of the layers that read them."""

    def key(layer: LayerDiff):
        err = layer.local_rel_rms
        return (not layer.local_nonfinite, -(err if err is not None else -1.0), layer.index)

    return sorted((layer for layer in report.layers
                   if layer.op != "Constant" and any(o.local is not None for o in layer.outputs)), key=key)


def check_writable(path: str | Path) -> Path:
    """Fail before any work is done if `path` cannot be written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a directory; give a file name")
    return path


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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
