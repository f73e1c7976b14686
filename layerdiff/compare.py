"""`compare`: the layer-wise diff of a candidate against the FP32 model, end to end. The CLI is a thin
layer over this function."""

from __future__ import annotations

import math
from pathlib import Path

import onnxruntime

from layerdiff._version import __version__
from layerdiff.backends.fp16 import build_fp16, emulated_nodes
from layerdiff.backends.int8 import build_int8
from layerdiff.backends.ort import providers_for
from layerdiff.capture import CaptureResult, Progress, capture
from layerdiff.errors import BadInput, ModelError
from layerdiff.graph import LoadedModel, load_model, serialize
from layerdiff.inputs import RANDOM_WARNING, Samples, load_samples, parse_shapes
from layerdiff.match import Pair, match_tensors
from layerdiff.metrics import aggregate
from layerdiff.plan import PrecisionPlan
from layerdiff.precision import realised_precisions
from layerdiff.report import LayerDiff, Report, TensorDiff, check_writable, write_atomic

BUILT_IN = ("ort-int8", "ort-fp16")
TENSORRT = ("trt-fp16", "trt-int8", "trt-bf16", "ort-trt-fp16", "ort-trt-int8", "ort-cuda")


def compare(
    model: str | Path,
    candidate: str,
    *,
    inputs: str | Path | None = None,
    calib: str | Path | None = None,
    shapes: tuple[str, ...] | list[str] = (),
    seed: int = 1,
    calibration: str = "minmax",
    plan: PrecisionPlan | None = None,
    max_memory: int | None = None,
    divergence_cosine: float = 0.99,
    reference_provider: str = "auto",
    cache_dir: str | Path | None = None,
    save_candidate: str | Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Diff `candidate` ('ort-int8', 'ort-fp16' or the path of an ONNX model derived from `model`)
    against `model` run in FP32 by ONNX Runtime, layer by layer, over every sample of `inputs`."""
    if save_candidate is not None:
        check_writable(save_candidate)
    loaded = load_model(model)
    shape_map = parse_shapes(tuple(shapes), loaded.inputs)
    samples = load_samples(inputs, loaded.inputs, shape_map, seed)
    providers = providers_for(reference_provider)
    cand_proto, cand_info = _candidate(loaded, candidate, samples, calib, shape_map, seed, calibration,
                                       plan, cache_dir)
    if save_candidate is not None:
        write_atomic(save_candidate, serialize(cand_proto))
        cand_info["saved_to"] = str(save_candidate)
    pairs = match_tensors(loaded, cand_proto)
    result = capture(loaded, cand_proto, pairs, samples, budget=max_memory, reference_providers=providers,
                     progress=progress)
    return _report(loaded, cand_proto, cand_info, samples, pairs, result, divergence_cosine, max_memory)


def _candidate(model: LoadedModel, spec: str, samples: Samples, calib, shape_map, seed, method, plan, cache_dir):
    if spec == "ort-int8":
        plan = plan or PrecisionPlan.uniform("int8")
        calib_samples = load_samples(calib, model.inputs, shape_map, seed, what="--calib") if calib else samples
        proto = build_int8(model, plan, calib_samples, method, Path(cache_dir) if cache_dir else None)
        return proto, {"spec": spec, "kind": "ort-int8", "runtime": "onnxruntime (CPU)",
                       "quantization": "QDQ, symmetric int8 activations and weights, per-channel weights",
                       "calibration": {"method": method, "source": calib_samples.source,
                                       "samples": len(calib_samples), "random": calib_samples.random},
                       "pinned_fp32": sorted(plan.pinned)}
    if spec == "ort-fp16":
        plan = plan or PrecisionPlan.uniform("fp16")
        proto = build_fp16(model, plan)
        return proto, {"spec": spec, "kind": "ort-fp16", "runtime": "onnxruntime (CPU)",
                       "fp16_emulated": sorted(emulated_nodes(proto)), "pinned_fp32": sorted(plan.pinned)}
    if spec in TENSORRT:
        raise BadInput(
            f"--candidate {spec} needs TensorRT and an NVIDIA GPU, which are not available here; "
            "install them with pip install 'layerdiff[tensorrt]' on a GPU machine, or use ort-int8 / ort-fp16"
        )
    path = Path(spec)
    if path.suffix != ".onnx" and not path.exists():
        raise BadInput(f"unknown --candidate '{spec}': use ort-int8, ort-fp16 or the path of an ONNX model")
    cand = load_model(path)
    missing = [i.name for i in model.inputs if i.name not in {c.name for c in cand.inputs}]
    if missing:
        raise ModelError(f"candidate {path} has no input '{missing[0]}' of the model; it must be derived "
                         f"from the FP32 model (its inputs are: {[c.name for c in cand.inputs]})")
    return cand.proto, {"spec": spec, "kind": "onnx", "runtime": "onnxruntime (CPU)",
                              "path": str(path), "sha256": cand.sha256,
                              "fp16_emulated": sorted(emulated_nodes(cand.proto))}


def _report(model: LoadedModel, cand_proto, cand_info, samples: Samples, pairs: dict[str, Pair],
            res: CaptureResult, divergence_cosine: float, max_memory: int | None) -> Report:
    realised = realised_precisions(cand_proto)
    producer_name = {o: n.name for n in cand_proto.graph.node for o in n.output if o}
    layers, first = [], None
    for layer in model.layers:
        outs = []
        for t in layer.outputs:
            pair = pairs.get(t, Pair(t, None, "not matched"))
            if t in res.non_float or (t in model.tensor_types and not model.is_float(t)):
                continue
            acc = aggregate(res.tensors[t]) if res.tensors.get(t) else None
            reason = res.unpaired.get(t) or pair.reason
            if acc is None and not reason:
                reason = "not captured (run interrupted)" if res.interrupted else "not compared"
            loc = aggregate(res.local[t]) if res.local.get(t) else None
            outs.append(TensorDiff(t, res.shapes.get(t), pair.candidate, acc, loc, reason if acc is None else ""))
        cand_node = producer_name.get(pairs[layer.outputs[0]].candidate or "", "") if layer.outputs else ""
        r = realised.get(layer.name) or realised.get(cand_node)
        diverges = any(_diverges(o, divergence_cosine) for o in outs)
        diff = LayerDiff(layer.index, layer.name, layer.op, r.precision if r else "unknown", tuple(outs),
                         precision_emulated=bool(r and r.emulated), diverges=diverges,
                         local_unavailable=res.no_local.get(layer.name, ""))
        layers.append(diff)
        if diverges and first is None:
            first = _divergence(diff, divergence_cosine)
    outputs = tuple((o, aggregate(res.outputs[o]) if res.outputs.get(o) else None) for o in model.outputs)
    compared = sum(1 for lay in layers for o in lay.outputs if o.paired)
    float_tensors = sum(len(lay.outputs) for lay in layers)
    overflow = [o.tensor for lay in layers for o in lay.outputs if o.paired and o.accumulated.worst.exceeds_fp16]
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
    return Report(
        model={"path": str(model.path), "sha256": model.sha256, "layers": len(model.layers),
               "opset": max((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), default=0)},
        inputs={"source": samples.source, "samples": len(samples), "random": samples.random},
        reference={"runtime": f"onnxruntime {onnxruntime.__version__}", "precision": "fp32",
                   "provider": res.reference_provider},
        candidate={**cand_info, "provider": res.candidate_provider},
        capture={"mode": "mark-outputs", "chunks": res.chunks, "max_memory": max_memory,
                 "exposed_vs_plain_max_abs": res.exposed_vs_plain_max_abs, "interrupted": res.interrupted,
                 "samples_done": res.samples_done, "layerdiff": __version__},
        layers=tuple(layers),
        outputs=outputs,
        first_divergence=first,
        thresholds={"divergence_cosine": divergence_cosine},
        counts={"layers": len(layers), "float_tensors": float_tensors, "compared": compared,
                "unpaired": float_tensors - compared, "non_float_tensors": len(res.non_float),
                "exceeds_fp16": len(overflow), "local_errors": sum(1 for lay in layers if any(o.local is not None for o in lay.outputs))},
        warnings=tuple(warnings),
    )


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
            "tensor": worst.tensor, "local_cosine": w.cosine if math.isfinite(w.cosine) else None, "reason": why}
