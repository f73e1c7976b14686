"""What every backend gives: a `Candidate` (a plan realised, frozen) and `CandidateSource`s that run it.

    with candidate.open() as source:             # the candidate as deployed: its final outputs
        outputs = source.infer(feed)
    view = candidate.deployment()                # what the deployed candidate computes, per tensor
    with view.open(["conv1_out", ...]) as source:  # some of its tensors, without changing what runs
        values = source.infer(feed)

A source is a context manager with `infer(feed) -> {name: array}` (Polygraphy's runner shape) and
`provider`, the runtime that really ran. Sources of one candidate may be used from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from layerdiff.plan import PrecisionPlan

Feed = dict[str, np.ndarray]


@runtime_checkable
class CandidateSource(Protocol):
    provider: str

    def __enter__(self) -> CandidateSource: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feed: Feed) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Kernel:
    """What computed a tensor in the deployed candidate."""

    op: str  # the kernel's op type as the runtime names it (QLinearConv, FusedConv, Conv, CaskConvolution...)
    precision: str  # int8, fp16, bf16, fp32, tf32, unknown
    dequantized_inputs: bool = False  # a float kernel reading int8 values through DequantizeLinear


class Deployment(Protocol):
    """What the deployed candidate computes, per candidate tensor, and a way to read those tensors."""

    mode: str  # how tensors are read: "kernels", "mark-outputs", "debug-tensors", "imported"
    missing: str  # why a tensor is not available, starting "fused inside"

    def available(self, tensor: str) -> bool:
        """Whether the deployed candidate's value of `tensor` can be read (exactly)."""

    def kernel(self, tensor: str) -> Kernel | None:
        """The kernel that computed `tensor` (None where unknown)."""

    def view(self, tensor: str) -> str:
        """"quantized" where the candidate holds `tensor` only as an integer kernel's INT8 output, else ""."""

    def open(self, tensors: Sequence[str], cancel: threading.Event | None = None) -> CandidateSource:
        """A source whose `infer` returns `tensors` (each available) from one run of the deployed candidate."""

    def groups(self) -> list[tuple[tuple[str, ...], tuple[str, str, str] | None]]:
        """Layers the candidate is known to compute as one (TensorRT engine layers), each with (engine
        layer, its type, its realised precision) where known."""

    def matches_plain(self) -> bool | None:
        """Whether reading tensors leaves the candidate's computation as deployed (None: not known)."""

    def check_missing(self, tensors: Sequence[str], feeds: Sequence[dict]) -> dict[str, str] | None:
        """Check that no value of the deployed candidate holds `tensors` (each said `missing`) on `feeds`;
        where one does, read the tensor from it from now on. {tensor: the value holding it}; None where
        this deployment cannot check."""


class Runner(Protocol):
    def open(self, cancel: threading.Event | None = None) -> CandidateSource: ...

    def deployment(self) -> Deployment: ...


@dataclass(frozen=True, eq=False)
class Candidate:
    """A precision plan realised by a backend. Frozen: realising the same plan again gives an equal
    candidate (`key`), and nothing in it changes once made."""

    spec: str  # what the user asked for: ort-int8, ort-fp16, a path, polygraphy:..., trt-fp16, fake
    kind: str  # ort-int8 | ort-fp16 | onnx | polygraphy-results | trt-fp16 | trt-int8 | trt-bf16 | ort-cuda | ...
    backend: str  # ort | trt | imported | fake
    runtime: str  # e.g. "onnxruntime 1.31.1 (CPU)"
    plan: PrecisionPlan | None
    model: onnx.ModelProto | None  # the deployable ONNX model (what --save-candidate writes)
    executed: onnx.ModelProto | None  # the ONNX model layerdiff runs (FP16 emulation for ort-fp16)
    runner: Runner = field(repr=False)
    pinned: frozenset[str] = frozenset()
    emulated: frozenset[str] = frozenset()  # nodes whose FP16 is emulated by rounding
    requested: Mapping[str, str] = field(default_factory=dict)  # node -> precision the plan asked for
    details: Mapping[str, Any] = field(default_factory=dict)  # kind-specific facts for the report
    artifacts: Mapping[str, str] = field(default_factory=dict, repr=False)  # files a user may save (engine info)
    of: str = ""  # the key of the FP32 model it was made from (LoadedModel.key)

    def __post_init__(self) -> None:
        for name in ("requested", "details", "artifacts"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def key(self) -> tuple[str, str, PrecisionPlan | None]:
        return (self.backend, self.kind, self.plan)

    def open(self, cancel: threading.Event | None = None) -> CandidateSource:
        """The candidate as deployed (nothing exposed): its final outputs."""
        return self.runner.open(cancel)

    def deployment(self) -> Deployment:
        return self.runner.deployment()


class Backend(Protocol):
    """Realises precision plans of one model. `name` is what `realise(plan, backend=...)` takes."""

    name: str

    def realise(self, plan: PrecisionPlan) -> Candidate: ...
