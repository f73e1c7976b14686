"""`compare`: the layer-wise diff of a candidate against the FP32 model, end to end. The CLI is a thin
layer over this function."""

from __future__ import annotations

from pathlib import Path

from layerdiff.assemble import RowInfo, assemble_report
from layerdiff.backends.fp16 import build_fp16, emulated_nodes
from layerdiff.backends.int8 import build_int8
from layerdiff.backends.ort import provider_loads, providers_for
from layerdiff.backends.trt import tensorrt_version
from layerdiff.candidates import OrtCandidate, load_polygraphy_results
from layerdiff.capture import Progress, Unit, capture
from layerdiff.engine_info import parse_engine_info
from layerdiff.errors import BackendError, BadInput, ModelError
from layerdiff.graph import LoadedModel, load_model, serialize
from layerdiff.groups import boundary_tensors, fused_units
from layerdiff.inputs import Samples, load_samples, parse_shapes
from layerdiff.match import Pair, match_tensors
from layerdiff.plan import PrecisionPlan
from layerdiff.precision import realised_precisions
from layerdiff.report import Report, check_writable, write_atomic

__all__ = ["Progress", "compare"]

TENSORRT = ("trt-fp16", "trt-int8", "trt-bf16")
# onnxruntime-gpu's own GPU providers, the deployment path many users take instead of raw TensorRT
GPU_PROVIDERS = {
    "ort-cuda": ("CUDAExecutionProvider", {}),
    "ort-trt-fp16": ("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
    "ort-trt-int8": ("TensorrtExecutionProvider", {"trt_int8_enable": "True", "trt_fp16_enable": "True"}),
}
IMPORTED = "polygraphy:"


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
    engine_info: str | Path | None = None,
    save_engine_info: str | Path | None = None,
    max_memory: int | None = None,
    divergence_cosine: float = 0.99,
    reference_provider: str = "auto",
    cache_dir: str | Path | None = None,
    save_candidate: str | Path | None = None,
    progress: Progress | None = None,
) -> Report:
    """Diff `candidate` against `model` run in FP32 by ONNX Runtime, layer by layer, over every sample of
    `inputs`. `candidate`: 'ort-int8', 'ort-fp16', the path of an ONNX model derived from `model`, or
    'polygraphy:RESULTS' for outputs saved by `polygraphy run --trt ... --save-outputs` on a GPU machine
    (then `inputs` must be that run's --save-inputs file; `engine_info` groups fused layers), 'trt-fp16',
    'trt-int8', 'trt-bf16' (TensorRT and a GPU), or 'ort-cuda', 'ort-trt-fp16', 'ort-trt-int8'
    (onnxruntime-gpu's GPU providers)."""
    for path in (save_candidate, save_engine_info):
        if path is not None:
            check_writable(path)
    loaded = load_model(model)
    shape_map = parse_shapes(tuple(shapes), loaded.inputs)
    samples = load_samples(inputs, loaded.inputs, shape_map, seed)
    providers = providers_for(reference_provider)
    if save_candidate is not None and (candidate.startswith(IMPORTED) or candidate in TENSORRT):
        raise BadInput("--save-candidate saves the ONNX model of an ONNX Runtime candidate; for TensorRT use "
                       "--save-engine-info")
    if candidate.startswith(IMPORTED):
        if inputs is None:
            raise BadInput("importing Polygraphy results needs the inputs of that run: pass its --save-inputs "
                           "file with --inputs")
        source = load_polygraphy_results(candidate[len(IMPORTED):], loaded.outputs, len(samples))
        info = parse_engine_info(engine_info, loaded) if engine_info is not None else None
        units, rows = _engine_rows(loaded, info, None)
        cand_info = {"spec": candidate, "kind": "polygraphy-results", "runner": source.runner,
                     "runtime": "TensorRT (results imported; not run here)", "path": source.path,
                     "engine_info": _engine_summary(loaded, info, source.tensors) if info else None}
        pairs = _pairs_by_name(loaded, source.tensors, "not in the results: fused inside an engine layer, or "
                                                      "not marked as an output")
    elif candidate in TENSORRT:
        source, units, rows, cand_info = _tensorrt(loaded, candidate, samples, calib, shape_map, seed, calibration,
                                                   plan, save_engine_info)
        pairs = _pairs_by_name(loaded, source.tensors, "not an engine tensor: fused inside an engine layer")
    else:
        if engine_info is not None or save_engine_info is not None:
            raise BadInput("--engine-info and --save-engine-info describe a TensorRT engine: use them with "
                           "--candidate polygraphy:RESULTS or trt-*")
        proto, cand_info = _build(loaded, candidate, samples, calib, shape_map, seed, calibration, plan, cache_dir)
        if save_candidate is not None:
            write_atomic(save_candidate, serialize(proto))
            cand_info["saved_to"] = str(save_candidate)
        source = OrtCandidate(proto, _gpu_providers(candidate))
        pairs = match_tensors(loaded, proto)
        units = [(lay,) for lay in loaded.layers]
        rows = _ort_rows(loaded, proto, pairs, plan)
    result = capture(loaded, source, pairs, samples, units=units, budget=max_memory,
                     reference_providers=providers, progress=progress)
    plain = source.matches_plain_engine() if hasattr(source, "matches_plain_engine") else None
    return assemble_report(loaded, units, rows, cand_info, samples, pairs, result,
                           divergence_cosine=divergence_cosine, max_memory=max_memory, mode=source.mode,
                           matches_plain_engine=plain)


def _pairs_by_name(model: LoadedModel, available: set[str], reason: str) -> dict[str, Pair]:
    inputs = [i.name for i in model.inputs]
    return {t: Pair(t, t) if t in available or t in inputs else Pair(t, None, reason)
            for t in inputs + [t for lay in model.layers for t in lay.outputs]}


def _tensorrt(model: LoadedModel, spec, samples, calib, shape_map, seed, method, plan, save_engine_info):
    """A TensorRT build of the plan (needs TensorRT and a GPU; never run on layerdiff's own machines)."""
    if tensorrt_version() is None:
        raise BadInput(
            f"--candidate {spec} needs TensorRT and an NVIDIA GPU, which are not available here; "
            "install them with pip install 'layerdiff[tensorrt]' on a GPU machine, or use ort-int8 / ort-fp16"
        )
    from layerdiff.backends.trt import TrtCandidate

    plan = plan or PrecisionPlan.uniform(spec.split("-")[1])
    calib_samples = load_samples(calib, model.inputs, shape_map, seed, what="--calib") if calib else samples
    source = TrtCandidate(model, spec.split("-")[1], plan, calib_samples, method)
    if save_engine_info is not None:
        write_atomic(save_engine_info, source.engine_info_json.encode())
    tmp = source.engine_info_path()
    try:
        info = parse_engine_info(tmp, model)
    finally:
        Path(tmp).unlink(missing_ok=True)
    units, rows = _engine_rows(model, info, plan)
    cand_info = {"spec": spec, "kind": spec, "runtime": source.provider, "pinned_fp32": sorted(plan.pinned),
                 "engine_info": {**_engine_summary(model, info, source.tensors), "path": "(read from the built engine)",
                                 "saved_to": str(save_engine_info) if save_engine_info else None}}
    return source, units, rows, cand_info


def _gpu_providers(spec: str) -> list | None:
    """Providers for an onnxruntime-gpu candidate; one clear line where the provider does not load."""
    if spec not in GPU_PROVIDERS:
        return None
    provider, options = GPU_PROVIDERS[spec]
    if not provider_loads(provider):
        raise BackendError(
            f"--candidate {spec} needs onnxruntime-gpu's {provider}, which does not load here (no NVIDIA GPU, or "
            "no CUDA/TensorRT libraries); run it on a GPU machine, or use ort-int8 / ort-fp16"
        )
    return [(provider, options), "CPUExecutionProvider"]


def _build(model: LoadedModel, spec: str, samples: Samples, calib, shape_map, seed, method, plan, cache_dir):
    if spec in GPU_PROVIDERS:
        _gpu_providers(spec)  # fail before any work where the provider cannot load
        if spec == "ort-trt-int8":  # TensorRT's explicit quantization: the Q/DQ model ort-int8 builds
            proto, info = _build(model, "ort-int8", samples, calib, shape_map, seed, method, plan, cache_dir)
        else:
            proto, info = model.proto, {"pinned_fp32": []}
        return proto, {**info, "spec": spec, "kind": spec, "runtime": f"onnxruntime-gpu {GPU_PROVIDERS[spec][0]}",
                       "provider_options": GPU_PROVIDERS[spec][1]}
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
    path = Path(spec)
    if path.suffix != ".onnx" and not path.exists():
        raise BadInput(f"unknown --candidate '{spec}': use ort-int8, ort-fp16, polygraphy:RESULTS.json or the "
                       "path of an ONNX model")
    cand = load_model(path)
    missing = [i.name for i in model.inputs if i.name not in {c.name for c in cand.inputs}]
    if missing:
        raise ModelError(f"candidate {path} has no input '{missing[0]}' of the model; it must be derived "
                         f"from the FP32 model (its inputs are: {[c.name for c in cand.inputs]})")
    return cand.proto, {"spec": spec, "kind": "onnx", "runtime": "onnxruntime (CPU)", "path": str(path),
                        "sha256": cand.sha256, "fp16_emulated": sorted(emulated_nodes(cand.proto))}


def _ort_rows(model: LoadedModel, proto, pairs: dict[str, Pair], plan: PrecisionPlan | None) -> dict[str, RowInfo]:
    realised = realised_precisions(proto)
    producer = {o: n.name for n in proto.graph.node for o in n.output if o}
    rows = {}
    for layer in model.layers:
        cand_node = producer.get(pairs[layer.outputs[0]].candidate or "", "") if layer.outputs else ""
        r = realised.get(layer.name) or realised.get(cand_node)
        rows[layer.name] = RowInfo(layer.name, layer.op, r.precision if r else "unknown", bool(r and r.emulated),
                                   requested=plan.overrides.get(layer.name) if plan else None)
    return rows


def _engine_summary(model: LoadedModel, info, available: set[str]) -> dict:
    boundary = boundary_tensors(model, info)
    return {"path": info.path, "kind": info.kind, "engine_layers": len(info.layers),
            "boundary_tensors": len(boundary), "boundary_tensors_captured": len(boundary & available)}


def _engine_rows(model: LoadedModel, info, plan: PrecisionPlan | None) -> tuple[list[Unit], dict[str, RowInfo]]:
    """Rows for a TensorRT candidate: one per fused engine layer (with its realised precision), one per
    ONNX node no engine layer claims; without engine info, one per ONNX node of unknown precision."""
    units, engine_of = fused_units(model, info) if info is not None else ([(lay,) for lay in model.layers], {})
    rows = {}
    for unit in units:
        el = engine_of.get(unit[0].name)
        requested = [plan.overrides[lay.name] for lay in unit if plan and lay.name in plan.overrides]
        req = requested[0] if requested else None
        if el is not None:
            rows[unit[0].name] = RowInfo(el.name, el.type, el.precision, engine_layers=(el.name,), requested=req)
        else:
            rows[unit[0].name] = RowInfo(unit[0].name, unit[0].op, "unknown", requested=req)
    return units, rows
