"""Turn what a capture measured into the report: one row per layer (or fused group, conversion,
Constant), the final outputs, the first divergent row, counts and warnings."""

from __future__ import annotations

import math

import onnxruntime

from layerdiff._version import __version__
from layerdiff.capture import CaptureResult
from layerdiff.graph import LoadedModel
from layerdiff.inputs import RANDOM_WARNING, Samples
from layerdiff.metrics import Aggregate, aggregate
from layerdiff.report import (
    CandidateInfo,
    CaptureInfo,
    Counts,
    Divergence,
    InputsInfo,
    LayerDiff,
    ModelInfo,
    OutputDiff,
    ReferenceInfo,
    Report,
    TensorDiff,
    Thresholds,
    Tolerance,
)
from layerdiff.rows import REFERENCE, Row

FUSED = "fused inside"  # every Deployment.missing begins so


def _row_inputs(model: LoadedModel, row: Row) -> tuple[str, ...]:
    """The tensors a row reads from outside itself, weights left out (a conversion row reads the tensor
    it rounds)."""
    if row.kind == "conversion":
        return (row.converts,) if row.converts else ()
    made = {t for lay in row.layers for t in lay.outputs}
    seen: dict[str, None] = {}
    for lay in row.layers:
        for t in lay.inputs:
            if t and t not in made and t not in model.initializers:
                seen[t] = None
    return tuple(seen)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _amplification(model: LoadedModel, row: Row, outs: list[TensorDiff], held: dict[str, Aggregate],
                   upstream: dict[str, str]) -> dict:
    """{amplification, input_cosine} of a layer row: the relative RMS error of its outputs, less its own
    local error (sqrt(out^2 - local^2)), over that of the values its kernel reads (worst sample of each),
    and the worst cosine among those values. A value read from the FP32 reference, or a model input read
    as it is, carries no error. `upstream`: {a candidate tensor: the tensor it holds exactly}
    (rows.exact_sources)."""
    if row.kind != "layer":
        return {}
    graph_inputs = {i.name for i in model.inputs}
    ins: list[tuple[float, float]] = []
    for _, _, t, key in row.reads:
        if key.startswith(REFERENCE) or (key == t and t in graph_inputs):
            ins.append((0.0, 1.0))
        else:  # the value compared, or the one it holds exactly (the INT8 value a DequantizeLinear reads)
            for _ in range(4):
                if key in held or key not in upstream:
                    break
                key = upstream[key]
            if key in held:
                ins.append((held[key].worst.rel_rms, held[key].worst.cosine))
    out = [o.accumulated.worst.rel_rms for o in outs if o.accumulated is not None]
    ins = [(r, c) for r, c in ins if math.isfinite(r) and math.isfinite(c)]
    out = [r for r in out if math.isfinite(r)]
    if not ins or not out:
        return {}
    in_rel = max(r for r, _ in ins)
    # the row's own (local) error taken out, as an independent addition: what is left is inherited error
    # as the row passed it on (a Conv with INT8 weights adds error; an LSTM or a Softmax multiplies it)
    local = [o.local.worst.rel_rms for o in outs if o.local is not None and math.isfinite(o.local.worst.rel_rms)]
    passed_on = math.sqrt(max(max(out) ** 2 - (max(local) ** 2 if local else 0.0), 0.0))
    return {"amplification": passed_on / in_rel if in_rel > 0 else None, "input_cosine": min(c for _, c in ins)}


def assemble_report(model: LoadedModel, rows: list[Row], candidate: CandidateInfo, samples: Samples,
                    res: CaptureResult, outputs: tuple[OutputDiff, ...], *, divergence_cosine: float,
                    max_memory: int | None, mode: str, exposed_vs_plain: float | None,
                    matches_plain_engine: bool | None = None, min_cosine: float | None = None,
                    tolerance: Tolerance | None = None,
                    warnings: tuple[str, ...] = (), upstream: dict[str, str] | None = None) -> Report:
    layers: list[LayerDiff] = []
    first = None
    held: dict[str, Aggregate] = {}  # candidate tensor -> its accumulated error, as rows are made
    upstream = upstream or {}
    for row in rows:
        outs = []
        for o in row.outputs:
            key = (row.name, o.tensor)
            acc = aggregate(res.tensors[key]) if res.tensors.get(key) else None
            loc = aggregate(res.local[key]) if res.local.get(key) else None
            reason = res.unpaired.get(key) or o.reason
            if acc is None and not reason:
                reason = "not captured (run interrupted)" if res.interrupted else "not compared"
            seen = res.all_shapes.get(o.tensor, {})
            outs.append(TensorDiff(o.tensor, res.shapes.get(o.tensor), o.candidate, acc, loc,
                                   reason if acc is None else "", o.view,
                                   tuple(map(_dims, seen)) if len(seen) > 1 else ()))
        diverges = row.kind != "constant" and any(_diverges(o, divergence_cosine) for o in outs)
        has_local = any(o.local is not None for o in outs)
        failed = res.local_failed.get(row.name)
        unavailable = "" if has_local else (row.no_local or (f"its FP32 recomputation failed: {failed}" if failed
                                                              else "not captured (run interrupted)"
                                                              if res.interrupted else "not computed"))
        layer = LayerDiff(row.index, row.name, row.op, row.precision, tuple(outs), precision_emulated=row.emulated,
                          diverges=diverges, local_unavailable=unavailable,
                          onnx_nodes=tuple(lay.name for lay in row.layers), engine_layers=row.engine_layers,
                          requested_precision=row.requested, kind=row.kind, kernels=row.kernels,
                          dequantized_inputs=row.dequantized_inputs, converts=row.converts,
                          inputs=_row_inputs(model, row), **_amplification(model, row, outs, held, upstream))
        layers.append(layer)
        held.update({o.candidate_tensor: o.accumulated for o in outs if o.candidate_tensor and o.accumulated})
        if diverges and first is None:
            first = _divergence(layer, divergence_cosine)
    counts = _counts(model, layers, res)
    compute = [lay for lay in layers if lay.kind != "constant"]
    note = ""
    if first is None and not any(lay.has_local for lay in compute):
        why = next((lay.local_unavailable for lay in compute if lay.local_unavailable), "no layer was compared")
        note = f"not computed: no local error could be computed ({why})"
    elif first is None and not any(o.local.worst.count for lay in compute for o in lay.outputs if o.local):
        note = ("not computed: every local error compares NaN or Inf only (no element is finite in both the "
                "candidate and the FP32 recomputation)")
    if tolerance is None and min_cosine is not None:
        failed = tuple(o.tensor for o in outputs if not _within(o, min_cosine))
        tolerance = Tolerance(min_cosine, not failed, failed)
    overflow = [o.tensor for lay in compute for o in lay.outputs
                if o.paired and o.accumulated.worst.exceeds_fp16 and lay.kind == "layer"]
    fp16 = any(lay.precision in ("fp16", "bf16") for lay in compute) or candidate.backend == "trt"
    return Report(
        model=ModelInfo(str(model.path), model.sha256, len(model.layers) - len(model.weight_layers), model.opset,
                        len(model.weight_layers)),
        inputs=_inputs(samples),
        reference=ReferenceInfo(f"onnxruntime {onnxruntime.__version__} (graph optimizations off)", "fp32",
                                res.reference_provider),
        candidate=candidate,
        capture=CaptureInfo(mode, res.chunks, max_memory, exposed_vs_plain, matches_plain_engine, res.interrupted,
                            res.samples_done, __version__),
        layers=tuple(layers),
        outputs=outputs,
        first_divergence=first,
        thresholds=Thresholds(divergence_cosine, min_cosine),
        counts=counts,
        warnings=tuple(_warnings(samples, res, overflow if fp16 else [], exposed_vs_plain, mode, layers)) + warnings
        + tuple(f"output '{o.tensor}' is all but zero in the reference on {', '.join(o.near_zero)}: its cosine there "
                "is noise, not the model's accuracy (a blank input?); leave such samples out or judge that output "
                "by max abs error" for o in outputs if o.near_zero),
        divergence_note=note,
        tolerance=tolerance,
    )


def _inputs(samples: Samples) -> InputsInfo:
    return InputsInfo(samples.source, len(samples), samples.random)


def _counts(model: LoadedModel, layers: list[LayerDiff], res: CaptureResult) -> Counts:
    tensor_rows = [lay for lay in layers if lay.kind == "layer"]
    outs = [o for lay in tensor_rows for o in lay.outputs]
    fused = sum(1 for o in outs if not o.paired and o.unpaired_reason.startswith(FUSED))
    compared = sum(1 for o in outs if o.paired)
    non_float = {t for lay in model.layers for t in lay.outputs if t in model.tensor_types and not model.is_float(t)}
    exceeds = sum(1 for o in outs if o.paired and o.accumulated.worst.exceeds_fp16)
    return Counts(layers=len(model.layers) - len(model.weight_layers),
                  rows=sum(1 for lay in layers if lay.kind != "constant"), float_tensors=len(outs), compared=compared,
                  unpaired=len(outs) - compared - fused, fused_away=fused, non_float_tensors=len(non_float),
                  exceeds_fp16=exceeds, local_errors=sum(1 for lay in layers if lay.has_local),
                  constants=sum(1 for lay in layers if lay.kind == "constant"),
                  conversions=sum(1 for lay in layers if lay.kind == "conversion"))


MANY_CHUNKS = 16


def _within(o: OutputDiff, min_cosine: float) -> bool:
    """Whether a final output passes --min-cosine. Integer outputs are judged by no cosine (their match
    rate is reported). The cosine of a one-element output says only its sign: it passes when its relative
    error is what that cosine allows for small errors, sqrt(2 (1 - min_cosine))."""
    if o.match_rate is not None:
        return True
    if o.accumulated is None:
        return False
    if o.accumulated.mean.count == 1:
        return o.accumulated.worst.rel_rms <= math.sqrt(2 * (1 - min_cosine))
    return o.accumulated.worst.cosine >= min_cosine


def _warnings(samples: Samples, res: CaptureResult, overflow: list[str], exposed_vs_plain: float | None, mode: str,
              layers: list[LayerDiff]) -> list[str]:
    warnings = []
    if samples.random:
        warnings.append(RANDOM_WARNING)
    if res.chunks > MANY_CHUNKS:
        warnings.append(f"the memory budget split the capture into {res.chunks} chunks, each a run of every sample: "
                        "a larger --max-memory runs faster")
    if samples.defaulted:
        warnings.append(f"dynamic dimensions set to 1 in the random inputs ({'; '.join(samples.defaulted)}): give "
                        "--shape NAME:DIMxDIM... for the shapes you deploy")
    varying = [(t, shapes) for t, shapes in res.all_shapes.items() if len(shapes) > 1]
    if varying:
        t, shapes = varying[0]
        warnings.append(f"{len(varying)} tensor(s) change shape between samples (first: {t}: "
                        f"{', '.join(map(_dims, list(shapes)[:4]))}): each tensor's `shapes` "
                        "lists them; its metrics pool samples of different sizes")
    if res.local_failed:
        first = next(iter(res.local_failed))
        warnings.append(f"the local error of {len(res.local_failed)} row(s) could not be computed (ONNX Runtime "
                        f"could not recompute them in FP32; first: {first}: {res.local_failed[first]}): their "
                        "accumulated error is shown, the reason is in each row")
    if res.interrupted:
        warnings.append(f"interrupted: the report holds what finished ({res.samples_done} of {len(samples)} "
                        "samples in every chunk)")
    if overflow:
        warnings.append(f"{len(overflow)} reference tensors exceed the FP16 range (65504), first: {overflow[0]}")
    if exposed_vs_plain is not None and exposed_vs_plain > 1e-6:
        warnings.append(f"reading tensors changed the candidate's outputs (max abs difference {exposed_vs_plain:.3g}, "
                        f"capture mode {mode}): per-layer rows may not describe the deployed model")
    missed = [lay for lay in layers if lay.request_realised is False]
    if missed:
        shown = ", ".join(f"{lay.name} ({lay.requested_precision} requested, {lay.precision} realised)"
                          for lay in missed[:3])
        warnings.append(f"{len(missed)} requested precision(s) not realised: {shown}{', ...' if len(missed) > 3 else ''}")
    return warnings


def _diverges(t: TensorDiff, threshold: float) -> bool:
    if t.local is None:
        return False
    w = t.local.worst
    return w.cand_nonfinite > w.ref_nonfinite or (not math.isnan(w.cosine) and w.cosine < threshold)


def _divergence(layer: LayerDiff, threshold: float) -> Divergence:
    worst = min((o for o in layer.outputs if o.local is not None),
                key=lambda o: o.local.worst.cosine if not math.isnan(o.local.worst.cosine) else -2.0)
    w = worst.local.worst
    if w.cand_nonfinite > w.ref_nonfinite:
        why = f"the candidate produced {w.cand_nonfinite} non-finite values the FP32 recomputation did not"
    else:
        why = f"local cosine {w.cosine:.6f} < {threshold}"
    return Divergence(layer.name, layer.index, layer.op, layer.precision, layer.onnx_nodes, worst.tensor,
                      w.cosine if math.isfinite(w.cosine) else None, why)
