"""The candidates named on the command line (`--candidate SPEC`) and in `session.candidate(SPEC)`: one
table, read by the session, the CLI's help and the README."""

from __future__ import annotations

from typing import NamedTuple


class Spec(NamedTuple):
    backend: str  # the session backend that realises it
    precision: str  # the default precision of its plan
    where: str  # where it runs, for the help


SPECS: dict[str, Spec] = {
    "ort-int8": Spec("ort", "int8", "built here, run on the CPU"),
    "ort-fp16": Spec("ort", "fp16", "built here, run on the CPU"),
    "trt-fp16": Spec("trt", "fp16", "TensorRT, GPU"),
    "trt-int8": Spec("trt", "int8", "TensorRT, GPU"),
    "trt-bf16": Spec("trt", "bf16", "TensorRT, GPU"),
    "ort-cuda": Spec("ort-cuda", "fp32", "onnxruntime-gpu providers, GPU"),
    "ort-trt-fp16": Spec("ort-trt-fp16", "fp16", "onnxruntime-gpu providers, GPU"),
    "ort-trt-int8": Spec("ort-trt-int8", "int8", "onnxruntime-gpu providers, GPU"),
    "fake": Spec("fake", "int8", "injected errors, for trying the tool"),
}
IMPORTED = "polygraphy:"
OTHERS = {
    "CANDIDATE.onnx": "a QDQ or FP16 model derived from MODEL",
    "polygraphy:RESULTS.json": "outputs saved by polygraphy run --trt --save-outputs",
}


def describe() -> str:
    """Every spec, grouped by where it runs: 'ort-int8, ort-fp16 (built here, run on the CPU); ...'."""
    groups: dict[str, list[str]] = {}
    for name, spec in SPECS.items():
        groups.setdefault(spec.where, []).append(name)
    named = [f"{', '.join(names)} ({where})" for where, names in groups.items()]
    return "; ".join(named[:1] + [f"{k} ({v})" for k, v in OTHERS.items()] + named[1:])
