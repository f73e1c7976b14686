"""`compare`: the layer-wise diff of one candidate against the FP32 model, end to end: `prepare`, then
`session.candidate(...)`, then `session.compare(...)`. The CLI is a thin layer over this function."""

from __future__ import annotations

import threading
from pathlib import Path

import onnx

from layerdiff.plan import PrecisionPlan
from layerdiff.progress import Progress
from layerdiff.report import Report
from layerdiff.session import prepare

__all__ = ["Progress", "compare"]


def compare(
    model: str | Path | onnx.ModelProto,
    candidate: str,
    *,
    inputs: str | Path | None = None,
    calib: str | Path | None = None,
    shapes: tuple[str, ...] | list[str] = (),
    seed: int = 1,
    calibration: str = "minmax",
    int8_placement: str | None = None,
    plan: PrecisionPlan | None = None,
    engine_info: str | Path | None = None,
    max_memory: int | None = None,
    divergence_cosine: float = 0.99,
    min_cosine: float | None = None,
    outputs: tuple[str, ...] | list[str] = (),
    reference_provider: str = "auto",
    cache_dir: str | Path | None = None,
    optimization: str = "all",
    capture_mode: str = "kernels",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Report:
    """Diff `candidate` against `model` run in FP32 by ONNX Runtime, layer by layer, over every sample of
    `inputs`. `candidate`: 'ort-int8', 'ort-fp16', the path of an ONNX model derived from `model`,
    'polygraphy:RESULTS' for outputs saved by `polygraphy run --trt ... --save-outputs` on a GPU machine
    (then `inputs` must be that run's --save-inputs file; `engine_info` groups fused layers),
    'trt-fp16', 'trt-int8', 'trt-bf16' (TensorRT and a GPU), 'ort-cuda', 'ort-trt-fp16', 'ort-trt-int8'
    (onnxruntime-gpu's GPU providers) or 'fake' (injected errors, for tests). `outputs`: the output
    specs `min_cosine` checks (names, or slices such as 'output0[:, 4:]'; default every float output)."""
    session = prepare(model, inputs=inputs, calib=calib, shapes=shapes, seed=seed, calibration=calibration,
                      int8_placement=int8_placement,
                      reference_provider=reference_provider, max_memory=max_memory, cache_dir=cache_dir,
                      optimization=optimization, capture_mode=capture_mode,
                      reference_cache=0)  # one comparison: a cache of every reference tensor would save nothing
    cand = session.candidate(candidate, plan, engine_info=engine_info, progress=progress, cancel=cancel)
    return session.compare(cand, divergence_cosine=divergence_cosine, min_cosine=min_cosine, outputs=outputs,
                           progress=progress, cancel=cancel)
