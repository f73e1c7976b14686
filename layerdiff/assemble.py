"""Turn what a capture measured into the report: one row per unit (a layer, or the layers fused into
one engine layer), the final outputs, the first divergent row, counts and warnings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnxruntime

from layerdiff._version import __version__
from layerdiff.capture import CaptureResult, Unit, unit_name
from layerdiff.graph import LoadedModel
from layerdiff.inputs import RANDOM_WARNING, Samples
from layerdiff.match import Pair
from layerdiff.metrics import aggregate
from layerdiff.report import LayerDiff, Report, TensorDiff


@dataclass(frozen=True)
class RowInfo:
    name: str
    op: str
    precision: str
    emulated: bool = False
    engine_layers: tuple[str, ...] = ()
    requested: str | None = None


def assemble_report(model: LoadedModel, units: list[Unit], rows: dict[str, RowInfo], cand_info: dict[str, Any],
                    samples: Samples, pairs: dict[str, Pair], res: CaptureResult, *, divergence_cosine: float,
                    max_memory: int | None, mode: str, matches_plain_engine: bool | None = None) -> Report:
    layers, first, fused_away = [], None, 0
    readers: dict[str, set[str]] = {}  # tensor -> layers that read it
    for lay in model.layers:
        for t in lay.inputs:
            readers.setdefault(t, set()).add(lay.name)
    for unit in units:
        info = rows[unit_name(unit)]
        names = {lay.name for lay in unit}
        outs = []
        for t in (t for lay in unit for t in lay.outputs):
            if t in res.non_float or (t in model.tensor_types and not model.is_float(t)):
                continue
            pair = pairs.get(t, Pair(t, None, "not matched"))
            acc = aggregate(res.tensors[t]) if res.tensors.get(t) else None
            if (acc is None and len(unit) > 1 and t not in model.outputs
                    and readers.get(t) and readers[t] <= names):
                fused_away += 1  # an intermediate of a fused engine layer: it exists in neither run's output
                continue
            reason = res.unpaired.get(t) or pair.reason
            if acc is None and not reason:
                reason = "not captured (run interrupted)" if res.interrupted else "not compared"
            loc = aggregate(res.local[t]) if res.local.get(t) else None
            outs.append(TensorDiff(t, res.shapes.get(t), pair.candidate, acc, loc, reason if acc is None else ""))
        row = LayerDiff(unit[0].index, info.name, info.op, info.precision, tuple(outs),
                        precision_emulated=info.emulated,
                        # a Constant computes nothing: its rounding shows in the layers that read it
                        diverges=info.op != "Constant" and any(_diverges(o, divergence_cosine) for o in outs),
                        local_unavailable=res.no_local.get(unit_name(unit), ""),
                        onnx_nodes=tuple(lay.name for lay in unit), engine_layers=info.engine_layers,
                        requested_precision=info.requested)
        layers.append(row)
        if row.diverges and first is None:
            first = _divergence(row, divergence_cosine)
    outputs = tuple((o, aggregate(res.outputs[o]) if res.outputs.get(o) else None) for o in model.outputs)
    compared = sum(1 for lay in layers for o in lay.outputs if o.paired)
    float_tensors = sum(len(lay.outputs) for lay in layers)
    overflow = [o.tensor for lay in layers for o in lay.outputs if o.paired and o.accumulated.worst.exceeds_fp16]
    return Report(
        model={"path": str(model.path), "sha256": model.sha256, "layers": len(model.layers),
               "opset": max((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), default=0)},
        inputs={"source": samples.source, "samples": len(samples), "random": samples.random},
        reference={"runtime": f"onnxruntime {onnxruntime.__version__}", "precision": "fp32",
                   "provider": res.reference_provider},
        candidate={**cand_info, "provider": res.candidate_provider},
        capture={"mode": mode, "chunks": res.chunks, "max_memory": max_memory,
                 "exposed_vs_plain_max_abs": res.exposed_vs_plain_max_abs, "matches_plain_engine": matches_plain_engine,
                 "interrupted": res.interrupted, "samples_done": res.samples_done, "layerdiff": __version__},
        layers=tuple(layers),
        outputs=outputs,
        first_divergence=first,
        thresholds={"divergence_cosine": divergence_cosine},
        counts={"layers": len(model.layers), "rows": len(layers), "float_tensors": float_tensors,
                "compared": compared, "unpaired": float_tensors - compared, "fused_away": fused_away,
                "non_float_tensors": len(res.non_float), "exceeds_fp16": len(overflow),
                "local_errors": sum(1 for lay in layers if any(o.local is not None for o in lay.outputs))},
        warnings=tuple(_warnings(samples, res, overflow) + _audit_warnings(layers)),
    )


def _warnings(samples: Samples, res: CaptureResult, overflow: list[str]) -> list[str]:
    warnings = []
    if samples.random:
        warnings.append(RANDOM_WARNING)
    if res.interrupted:
        warnings.append(f"interrupted: the report holds what finished ({res.samples_done} of {len(samples)} "
                        "samples in every chunk)")
    if overflow:
        warnings.append(f"{len(overflow)} reference tensors exceed the FP16 range (65504), first: {overflow[0]}")
    if res.exposed_vs_plain_max_abs > 1e-3:
        warnings.append("exposing tensors changed the candidate's outputs (max abs difference "
                        f"{res.exposed_vs_plain_max_abs:.3g}): ONNX Runtime fused differently")
    return warnings


def _audit_warnings(layers: list[LayerDiff]) -> list[str]:
    missed = [lay for lay in layers if lay.request_realised is False]
    if not missed:
        return []
    shown = ", ".join(f"{lay.name} ({lay.requested_precision} requested, {lay.precision} realised)" for lay in missed[:3])
    return [f"{len(missed)} requested precision(s) not realised: {shown}{', ...' if len(missed) > 3 else ''}"]


def _diverges(t: TensorDiff, threshold: float) -> bool:
    if t.local is None:
        return False
    w = t.local.worst
    return w.cand_nonfinite > w.ref_nonfinite or (not math.isnan(w.cosine) and w.cosine < threshold)


def _divergence(layer: LayerDiff, threshold: float) -> dict:
    worst = min((o for o in layer.outputs if o.local is not None), key=lambda o: o.local.worst.cosine
                if not math.isnan(o.local.worst.cosine) else -2.0)
    w = worst.local.worst
    if w.cand_nonfinite > w.ref_nonfinite:
        why = f"the candidate produced {w.cand_nonfinite} non-finite values the FP32 recomputation did not"
    else:
        why = f"local cosine {w.cosine:.6f} < {threshold}"
    return {"layer": layer.name, "index": layer.index, "op": layer.op, "precision": layer.precision,
            "onnx_nodes": list(layer.onnx_nodes), "tensor": worst.tensor,
            "local_cosine": w.cosine if math.isfinite(w.cosine) else None, "reason": why}
