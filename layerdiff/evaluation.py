"""A candidate's final outputs against the FP32 model's, from plain runs (`Session.evaluate`), and the
check that ONNX Runtime's fused INT8 kernels compute what the candidate's Q/DQ arithmetic says."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from layerdiff.backends.base import Candidate, CandidateSource
from layerdiff.backends.ort import OrtSource, cpu_lacks_vnni
from layerdiff.errors import BadInput, Cancelled
from layerdiff.graph import LoadedModel, serialize
from layerdiff.match import match_tensors
from layerdiff.metrics import TensorMetrics, aggregate, diff_metrics, match_rate
from layerdiff.report import OutputDiff, Tolerance


@dataclass(frozen=True)
class Evaluation:
    """Final outputs of a candidate against the FP32 model, from plain runs of both (worst sample and
    mean per output), and each sample's metrics."""

    outputs: tuple[OutputDiff, ...]
    per_sample: tuple[dict[str, TensorMetrics], ...]
    provider: str
    # the candidate's outputs per sample, when asked to keep them (not part of equality: arrays)
    values: tuple[dict[str, np.ndarray], ...] = field(default=(), compare=False, repr=False)

    def output(self, name: str) -> OutputDiff | None:
        return next((o for o in self.outputs if o.tensor == name), None)

    @property
    def cosine(self) -> float:
        """The worst cosine of any float output over all samples (nan if none is compared)."""
        vals = [o.accumulated.worst.cosine for o in self.outputs if o.accumulated is not None]
        return min(vals) if vals else float("nan")


NEAR_ZERO = 1e-6  # a sample's reference output whose RMS is under this fraction of the samples' median is ~0


def diff_final_outputs(model_outputs, names: dict[str, str], feeds, reference, source: CandidateSource,
                       keep_values: bool, cancel: threading.Event | None,
                       sample_names: Sequence[str] = ()) -> Evaluation:
    """Run `source` on every feed and diff each model output (held in the candidate's graph output
    `names[output]`) with the reference's: float outputs get the metrics, integer ones the match rate."""
    per_sample: list[dict[str, TensorMetrics]] = []
    rates: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    kept: list[dict[str, np.ndarray]] = []
    for feed, ref in zip(feeds, reference, strict=True):
        if cancel is not None and cancel.is_set():
            raise Cancelled("evaluation cancelled")
        out = source.infer(feed)
        if keep_values:
            kept.append(out)
        metrics = {}
        for name in model_outputs:
            got = out.get(names.get(name, ""))
            if got is None:
                reasons[name] = "the candidate has no graph output holding it"
            elif ref[name].shape != got.shape:
                reasons[name] = f"shapes differ: reference {ref[name].shape}, candidate {got.shape}"
            elif ref[name].dtype.kind == "f" and got.dtype.kind == "f":
                metrics[name] = diff_metrics(ref[name], got)
            else:
                rates.setdefault(name, []).append(match_rate(ref[name], got))
        per_sample.append(metrics)
    outputs = []
    for name in model_outputs:
        series = [m[name] for m in per_sample if name in m]
        if name in reasons:
            outputs.append(OutputDiff(name, reason=reasons[name]))
        elif series:
            outputs.append(_float_output(name, per_sample, sample_names))
        else:
            outputs.append(OutputDiff(name, match_rate=min(rates[name])))
    return Evaluation(tuple(outputs), tuple(per_sample), source.provider, tuple(kept))


def kernel_check(candidate: Candidate, evaluation: Evaluation, held: dict[str, str], feeds, reference,
                 optimization: str, cancel: threading.Event | None) -> tuple[str, ...]:
    """For an ONNX Runtime candidate holding Q/DQ pairs, run at a level that fuses them into integer
    kernels: its outputs from plain runs of its Q/DQ arithmetic (graph optimizations 'basic', which
    fuse no Q/DQ), against the deployed kernels'. Integer kernels are meant to compute that
    arithmetic; where they do not (ONNX Runtime's u8s8 kernels saturate on x86 CPUs without VNNI),
    the rows of those kernels carry an error the Q/DQ model itself (and TensorRT) would not have."""
    executed = candidate.executed
    if (candidate.runtime.find("(CPU") < 0 or executed is None or optimization in ("disabled", "basic")
            or not any(n.op_type == "QuantizeLinear" for n in executed.graph.node) or not evaluation.values):
        return ()
    worst: tuple[float, float, str] | None = None  # (arithmetic cosine, deployed cosine, output)
    with OrtSource(serialize(executed), None, None, "basic", "candidate (Q/DQ arithmetic)",
                   cancel=cancel) as source:
        per_output: dict[str, list[tuple[float, float]]] = {}
        for feed, ref, deployed in zip(feeds, reference, evaluation.values,
                                       strict=True):
            arith = source.infer(feed)
            for name, h in held.items():
                if h in arith and h in deployed and ref[name].dtype.kind == "f" and arith[h].shape == ref[name].shape:
                    per_output.setdefault(name, []).append((diff_metrics(ref[name], arith[h]).cosine,
                                                            diff_metrics(ref[name], deployed[h]).cosine))
    for name, pairs in per_output.items():
        a, d = min(p[0] for p in pairs), min(p[1] for p in pairs)
        if 1 - d > max(2 * (1 - a), 1e-4) and (worst is None or d - a < worst[1] - worst[0]):
            worst = (a, d, name)
    if worst is None:
        return ()
    a, d, name = worst
    why = "; this CPU has no VNNI, where ONNX Runtime's u8s8 kernels can saturate" if cpu_lacks_vnni() else ""
    return (f"ONNX Runtime's fused INT8 kernels compute output '{name}' worse than the candidate's Q/DQ "
            f"arithmetic (worst cosine {d:.6f} as deployed, {a:.6f} with Q/DQ unfused){why}: rows of QLinear* "
            "kernels carry that kernel error, which TensorRT would not have; --ort-optimization basic shows "
            "the Q/DQ arithmetic layer by layer",)


class CachedSource:
    """A reference source answering from values computed once."""

    def __init__(self, values: dict[int, dict[str, np.ndarray]], names: list[str], provider: str):
        self.values, self.names, self.provider = values, names, provider

    def __enter__(self) -> CachedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.values[id(feed)]
        return {n: values[n] for n in self.names}


def output_names(model: LoadedModel, candidate: Candidate) -> dict[str, str]:
    """{model output: the candidate's graph output holding it}: the same name, or, where a rewrite
    renamed it, the candidate's output paired with it by structure."""
    outputs = [o.name for o in candidate.executed.graph.output] if candidate.executed is not None else None
    if outputs is None or all(o in outputs for o in model.outputs):
        return {o: o for o in model.outputs}
    pairing = match_tensors(model, candidate.executed)
    renamed = {o: pairing.candidate(o) for o in model.outputs if o not in outputs}
    return {o: o if o in outputs else renamed[o] or "" for o in model.outputs}


def sliced_tolerance(min_cosine: float | None, outputs, model_outputs, reference, candidate_outputs) -> Tolerance:
    """--min-cosine on output specs (slices allowed, layerdiff.target), from plain runs: `reference`
    outputs per sample, and `candidate_outputs()` giving the candidate's (run once the specs are checked)."""
    from layerdiff.target import Target

    if isinstance(outputs, str):
        outputs = (outputs,)
    if min_cosine is None:
        raise BadInput("--outputs names the outputs --min-cosine checks: give --min-cosine too")
    target = Target.parse("cosine", min_cosine, outputs, model_outputs)
    target.check(reference[0])
    got = candidate_outputs()
    failed = tuple(spec.text for spec in target.outputs
                   if not target.passes(target.worst([Target(target.metric, min_cosine, (spec,)).score(r, g)
                                                      for r, g in zip(reference, got, strict=True)])))
    return Tolerance(min_cosine, not failed, failed, tuple(s.text for s in target.outputs))


def _float_output(name: str, per_sample: list[dict[str, TensorMetrics]], sample_names: Sequence[str]) -> OutputDiff:
    """A float output's aggregate with each sample's cosine, the sample of the worst, and the samples whose
    reference output is all but zero (a blank image's scores: any error is then most of it, and its cosine
    says nothing about the model)."""
    label = lambda k: sample_names[k] if k < len(sample_names) else f"sample {k + 1}"  # noqa: E731
    series = [(k, m[name]) for k, m in enumerate(per_sample) if name in m]
    cosines = [m.cosine for _, m in series]
    known = [(c, k) for (k, _), c in zip(series, cosines, strict=True) if not math.isnan(c)]
    worst = label(min(known)[1]) if known else ""
    rms = sorted(m.ref_rms for _, m in series if math.isfinite(m.ref_rms))
    median = rms[len(rms) // 2] if rms else math.nan
    near = tuple(label(k) for k, m in series if len(series) > 1 and math.isfinite(median) and median > 0
                 and m.ref_rms < NEAR_ZERO * median)
    return OutputDiff(name, aggregate([m for _, m in series]), per_sample_cosine=tuple(
        None if math.isnan(c) else c for c in cosines), worst_sample=worst, near_zero=near)

