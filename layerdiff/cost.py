"""What a plan costs, as the report holds it: latency, throughput, size and memory of the FP32 model and
the candidate, each timed in its own plain session and process (`layerdiff compare --bench N`), and
where per-layer times come from. Data only; measuring is in bench.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from layerdiff.jsonread import pick


class _Plain:
    """A dataclass whose JSON form is its fields, read back checked against their annotations."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str):
        return cls(**pick(cls, d, where))


@dataclass(frozen=True)
class PlanCost(_Plain):
    """One model timed: `runs` plain runs after `warmup` (the samples in turn), nothing exposed."""

    latency_ms_median: float | None
    latency_ms_p90: float | None
    runs: int
    warmup: int
    throughput: float | None  # samples per second at `batch`
    batch: int
    size_bytes: int | None  # the model on disk as deployed (external data included; an engine's bytes)
    peak_rss_mb: float | None  # peak resident memory of the process that ran only this model
    base_rss_mb: float | None  # that process before loading the model (Python and the runtime themselves)
    provider: str
    machine: str
    unavailable: str = ""  # why it was not timed (imported results have nothing to run)
    round_medians_ms: tuple[float, ...] = ()  # timed in turns with other plans: the median of each turn


def unsteady(costs: Mapping[str, PlanCost], spread_limit: float = 1.2, tail_limit: float = 2.0) -> str:
    """A warning, in words, where timings moved so much that comparing their medians is uncertain: a
    plan's turn medians (of 5 runs or more each) more than `spread_limit` apart, or its p90 more than
    `tail_limit` times its median; "" when they held still."""
    found = []
    for label, c in costs.items():
        if c.latency_ms_median is None or c.latency_ms_median <= 0:
            continue
        turns = [m for m in c.round_medians_ms if m > 0]
        # a turn of fewer than 5 runs has a median too rough to compare with another's
        if len(turns) > 1 and c.runs >= 5 * len(turns) and max(turns) / min(turns) > spread_limit:
            found.append((max(turns) / min(turns), f"{label}: medians of {min(turns):.3g} to {max(turns):.3g} ms "
                                                   "in its turns"))
        tail = (c.latency_ms_p90 or 0.0) / c.latency_ms_median
        if tail > tail_limit:
            found.append((tail, f"{label}: p90 {tail:.1f}x its median"))
    if not found:
        return ""
    what = max(found)[1]
    return (f"unsteady timings ({what}): the speed-up is uncertain; time again on an "
            "idle machine or with more runs")


@dataclass(frozen=True)
class LayerTimes(_Plain):
    """Where the rows' `time_ms` came from."""

    source: str  # "onnxruntime profiler" | "trtexec profile <path>"
    runs: int | None  # runs the per-layer times are the median of (None: as the file gives them)
    statistic: str  # median | average | total/count
    total_ms: float  # the candidate's per-layer times added up
    unattributed_ms: float = 0.0  # time of kernels no row could be named for (runtime-inserted copies)
    reference_total_ms: float | None = None


@dataclass(frozen=True)
class Cost:
    reference: PlanCost | None = None
    candidate: PlanCost | None = None
    layer_times: LayerTimes | None = None

    @property
    def speedup(self) -> float | None:
        r, c = self.reference, self.candidate
        if r is None or c is None or not r.latency_ms_median or not c.latency_ms_median:
            return None
        return r.latency_ms_median / c.latency_ms_median

    @property
    def size_ratio(self) -> float | None:
        r, c = self.reference, self.candidate
        if r is None or c is None or not r.size_bytes or c.size_bytes is None:
            return None
        return c.size_bytes / r.size_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference.to_dict() if self.reference else None,
                "candidate": self.candidate.to_dict() if self.candidate else None,
                "speedup": self.speedup, "size_ratio": self.size_ratio,
                "layer_times": self.layer_times.to_dict() if self.layer_times else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "cost") -> Cost:
        def part(key, kind):
            v = d.get(key)
            return kind.from_dict(v, f"{where}.{key}") if v is not None else None

        return cls(part("reference", PlanCost), part("candidate", PlanCost), part("layer_times", LayerTimes))


@dataclass(frozen=True)
class GateCheck(_Plain):
    """One deployment bound of compare (--max-abs, --min-speedup, --max-size-ratio): the value measured
    and whether it holds."""

    bound: str  # the flag, e.g. "--min-speedup"
    limit: float
    value: float | None
    passed: bool
    what: str  # what was measured, e.g. "speed-up (FP32 median / candidate median)"

    def line(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.6g}"
        verdict = "holds" if self.passed else "FAILS"
        return f"{self.bound} {self.limit:g}: {self.what} {shown}, {verdict}"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(("warning: " + text) if text else "", width)


def _fit(line: str, width: int = 80) -> str:
    return line if len(line) <= width else line[:width - 1] + "…"


@dataclass(frozen=True)
class RecipeCost:
    """A recipe timed beside the plans it sits between (bisect --bench, apply --bench): the FP32 model,
    the all-reduced plan (nothing pinned) and the recipe, each timed as compare --bench times."""

    precision: str  # the reduced precision, e.g. "int8"
    fp32: PlanCost
    reduced: PlanCost
    recipe: PlanCost

    @property
    def kept(self) -> float | None:
        """The share of the all-reduced plan's gain over FP32 that the recipe keeps (1: all of it, 0:
        none, below 0: slower than FP32); None where the reduced plan gains nothing to keep or a plan
        was not timed."""
        f, r, c = (p.latency_ms_median for p in (self.fp32, self.reduced, self.recipe))
        if f is None or r is None or c is None:
            return None
        gain = f - r
        return (f - c) / gain if gain > 0 else None

    def lines(self) -> list[str]:
        f, r, c = (p.latency_ms_median for p in (self.fp32, self.reduced, self.recipe))
        if f is None or r is None or c is None:
            why = next((p.unavailable for p in (self.fp32, self.reduced, self.recipe) if p.unavailable), "")
            return [f"cost: this candidate cannot be timed here{': ' + why if why else ''}"]
        prec = self.precision.upper()
        kept = self.kept
        return [f"cost (median of {self.recipe.runs} runs after {self.recipe.warmup} warm-up):",
                f"  FP32 {f:.4g} ms, all-{prec} {r:.4g} ms, recipe {c:.4g} ms",
                f"  the all-{prec} plan is not faster than FP32 here: no speed-up to keep" if kept is None
                else f"  the recipe keeps {kept:.0%} of the {prec} speed-up",
                _fit(f"  measured with {self.recipe.provider.replace('ExecutionProvider', '')} on "
                     f"{self.recipe.machine}")] + [
                    "  " + line for line in _wrap(unsteady({"FP32": self.fp32, f"all-{prec}": self.reduced,
                                                            "recipe": self.recipe}), 78) if line]

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "fp32": self.fp32.to_dict(), "reduced": self.reduced.to_dict(),
                "recipe": self.recipe.to_dict(), "speedup_kept": self.kept}


@dataclass(frozen=True)
class PinCosts:
    """What keeping each node in FP32 is estimated to cost (bisect --objective time): the FP32 model's
    kernel time of the node less the all-reduced plan's, from ONNX Runtime's profiler (median of `runs`
    profiled runs). Negative where the node runs faster in FP32 on this machine. A plan's estimate adds
    its pins' costs to the all-reduced plan's total; fused kernels count in the node they are named for."""

    added_ms: Mapping[str, float]
    fp32_total_ms: float
    reduced_total_ms: float
    runs: int
    source: str = "onnxruntime profiler"

    def of(self, pins) -> float:
        return sum(self.added_ms.get(n, 0.0) for n in pins)

    def estimate_ms(self, pins) -> float:
        return self.reduced_total_ms + self.of(pins)
