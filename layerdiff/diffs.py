"""The rows of a report as values: a tensor's diff (`TensorDiff`), a row's (`LayerDiff`: a layer, layers
fused into one kernel, a conversion or a Constant) and a final output's (`OutputDiff`), each with its
JSON form. Part of the report contract (layerdiff.report)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerdiff.errors import ReportError
from layerdiff.jsonread import as_object, field_name, get_field, pick
from layerdiff.metrics import METRICS, STATS, Aggregate, TensorMetrics


def _aggregate_to_json(agg: Aggregate) -> dict[str, Any]:
    """The worst sample's metrics at the top, the means under "mean" (the report's layout)."""
    return {**agg.worst.to_json(), "mean": agg.mean.to_json(), "samples": agg.samples}


def _aggregate_from_json(d: Mapping[str, Any], where: str = "") -> Aggregate:
    mean = get_field(d, "mean", "object", where)
    return Aggregate(_metrics_from_json(d, where), _metrics_from_json(mean, field_name(where, "mean")),
                     get_field(d, "samples", "int", where))


def _metrics_from_json(d: Mapping[str, Any], where: str) -> TensorMetrics:
    """TensorMetrics.from_json, once each field it reads is checked."""
    for key in (*METRICS, *STATS, "ref_absmax"):
        get_field(d, key, "float | None", where, None)
    for key, spelled in (get_field(d, "nonfinite_values", "object | None", where, None) or {}).items():
        if spelled not in ("nan", "inf", "-inf"):
            raise ReportError(f'{where}.nonfinite_values.{key} is not "nan", "inf" or "-inf"')
    nonfinite = get_field(d, "nonfinite", "object | None", where, None) or {}
    for key in ("reference", "candidate"):
        get_field(nonfinite, key, "int", f"{where}.nonfinite", 0)
    get_field(d, "count", "int", where, 0)
    return TensorMetrics.from_json(d)


@dataclass(frozen=True)
class TensorDiff:
    tensor: str
    shape: tuple[int, ...] | None
    candidate_tensor: str | None
    accumulated: Aggregate | None  # None: not compared (see unpaired_reason)
    local: Aggregate | None = None
    unpaired_reason: str = ""
    view: str = ""  # "quantized": the candidate only ever holds this tensor rounded to INT8
    shapes: tuple[str, ...] = ()  # where its shape differs between samples: every one, e.g. "1x3x32x32"

    @property
    def paired(self) -> bool:
        return self.accumulated is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensor": self.tensor, "shape": list(self.shape) if self.shape is not None else None,
                             "paired": self.paired, "candidate_tensor": self.candidate_tensor}
        if self.view:
            d["view"] = self.view
        if self.shapes:
            d["shapes"] = list(self.shapes)
        if self.accumulated is None:
            d.update({k: None for k in METRICS})
            d.update({"nonfinite": None, "ref_absmax": None, "exceeds_fp16": None, "local": None,
                      "unpaired_reason": self.unpaired_reason})
            return d
        d.update(_aggregate_to_json(self.accumulated))
        d["local"] = _aggregate_to_json(self.local) if self.local is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "tensor") -> TensorDiff:
        paired = get_field(as_object(d, where), "paired", "bool", where)
        local = get_field(d, "local", "object | None", where, None)
        return cls(**pick(cls, d, where, skip=("accumulated", "local")),
                   accumulated=_aggregate_from_json(d, where) if paired else None,
                   local=_aggregate_from_json(local, field_name(where, "local")) if paired and local is not None else None)


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
    inputs: tuple[str, ...] = ()  # the tensors it reads from other rows or the model's inputs (no weights)
    time_ms: float | None = None  # the candidate's kernel time for this row per run (profiled; --bench)
    time_share: float | None = None  # its share of the candidate's per-layer total
    ref_time_ms: float | None = None  # the FP32 model's kernel time for the same row
    # how much the row multiplies the error it inherits: the relative RMS error of its outputs, its own local
    # error taken out (sqrt(out^2 - local^2)), over that of the values it reads (worst sample of each, the
    # deployed values against FP32); None where it reads exact values or nothing was compared
    amplification: float | None = None
    input_cosine: float | None = None  # the worst accumulated cosine of the values it reads

    @property
    def local_rel_rms(self) -> float | None:
        """The row's local error: worst relative RMS error over its outputs (None when unknown)."""
        vals = [o.local.worst.rel_rms for o in self.outputs if o.local is not None]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else None

    @property
    def precision_label(self) -> str:
        """The precision as tables show it: `int8`, `fp16*` (emulated by rounding), `fp32q` (a float
        kernel on INT8 values read through DequantizeLinear), `fp32`, ..."""
        if self.precision_emulated:
            return self.precision + "*"
        if self.dequantized_inputs and self.precision == "fp32":
            return "fp32q"
        return self.precision

    @property
    def request_realised(self) -> bool | None:
        """None when nothing was requested for this row; else whether the request was realised."""
        if self.requested_precision is None:
            return None
        if self.precision == "unknown":  # no kernel computed it at run time (a Shape, a folded constant): no word
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
            "kernels": list(self.kernels), "inputs": list(self.inputs), "outputs": [o.to_dict() for o in self.outputs],
            "diverges": self.diverges}
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
        for key in ("time_ms", "time_share", "ref_time_ms", "amplification", "input_cosine"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "layer") -> LayerDiff:
        outputs = get_field(as_object(d, where), "outputs", "list", where)
        return cls(**pick(cls, d, where, skip=("outputs",)),
                   outputs=tuple(TensorDiff.from_dict(o, f"{where}.outputs[{i}]") for i, o in enumerate(outputs)))


@dataclass(frozen=True)
class OutputDiff:
    """A final output of the model, from plain runs of both (nothing exposed). Float outputs get the
    metrics; integer and bool outputs (class indices, masks) the fraction of equal elements."""

    tensor: str
    accumulated: Aggregate | None = None
    match_rate: float | None = None  # integer outputs: worst sample's fraction of equal elements
    reason: str = ""  # why it is not compared
    per_sample_cosine: tuple[float | None, ...] = ()  # float outputs: each sample's cosine, in sample order
    worst_sample: str = ""  # the sample (its file) of the worst cosine
    near_zero: tuple[str, ...] = ()  # samples whose reference output is all but zero: their cosine is noise

    @property
    def paired(self) -> bool:
        return self.accumulated is not None or self.match_rate is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tensor": self.tensor, "paired": self.paired}
        if self.accumulated is not None:
            return d | {"kind": "float"} | _aggregate_to_json(self.accumulated) | {
                "per_sample_cosine": [None if v is None or not math.isfinite(v) else v for v in self.per_sample_cosine],
                "worst_sample": self.worst_sample, "near_zero": list(self.near_zero)}
        d.update({k: None for k in METRICS})
        if self.match_rate is not None:
            d.update({"kind": "integer", "match_rate": self.match_rate})
        else:
            d["unpaired_reason"] = self.reason
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "output") -> OutputDiff:
        tensor = get_field(as_object(d, where), "tensor", "str", where)
        if d.get("kind") == "float" or (d.get("paired") and "mean" in d):
            return cls(tensor, _aggregate_from_json(d, where),
                       per_sample_cosine=get_field(d, "per_sample_cosine", "tuple[float | None, ...]", where, ()),
                       worst_sample=get_field(d, "worst_sample", "str", where, ""),
                       near_zero=get_field(d, "near_zero", "tuple[str, ...]", where, ()))
        return cls(tensor, None, get_field(d, "match_rate", "float | None", where, None),
                   get_field(d, "unpaired_reason", "str", where, ""))


def _same_precision(requested: str, realised: str) -> bool:
    # an FP32 request is met by TF32 math only if the user allowed it; TensorRT calls both "FP32" layers
    return requested == realised or (requested == "fp32" and realised == "tf32")


def precision_audit(layers: tuple[LayerDiff, ...]) -> list[dict[str, Any]]:
    """Requested vs realised precision of every row whose precision was requested (a pinned node);
    `realised_as_requested` is None where no kernel says (precision unknown)."""
    return [{"layer": lay.name, "index": lay.index, "requested": lay.requested_precision,
             "realised": lay.precision, "realised_as_requested": lay.request_realised}
            for lay in layers if lay.requested_precision is not None]


AMPLIFIES = 1.5  # a row amplifies when its output's relative error is at least this many times its inputs'
NOTICEABLE = 1e-3  # ... and that error is at least this (smaller ones are rounding noise, whatever the ratio)
GREW = 1e-6  # a drop of the accumulated cosine across a row smaller than this is FP32 rounding, not growth


def amplifiers(layers: tuple[LayerDiff, ...] | list[LayerDiff], n: int = 3) -> list[LayerDiff]:
    """The layer rows that multiply the error they inherit most (`amplification`), most first."""
    rows = [lay for lay in layers if lay.kind == "layer" and lay.amplification is not None
            and lay.amplification >= AMPLIFIES and output_rel_rms(lay) >= NOTICEABLE]
    return sorted(rows, key=lambda lay: (-lay.amplification, lay.index))[:n]


def error_growth(layers: tuple[LayerDiff, ...] | list[LayerDiff], n: int = 3) -> list[LayerDiff]:
    """The layer rows across which the accumulated cosine dropped most (from the worst value they read to
    their output), largest drop first: where the error grew, whether a row made it or multiplied it."""
    rows = [lay for lay in layers if lay.kind == "layer" and lay.input_cosine is not None
            and lay.cosine is not None and lay.input_cosine - lay.cosine >= GREW]
    return sorted(rows, key=lambda lay: (lay.cosine - lay.input_cosine, lay.index))[:n]


def output_rel_rms(lay: LayerDiff) -> float:
    vals = [o.accumulated.worst.rel_rms for o in lay.outputs if o.accumulated is not None]
    vals = [v for v in vals if not math.isnan(v)]
    return max(vals) if vals else 0.0

