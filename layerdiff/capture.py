"""Run the reference, the candidate and the exploded graph with tensors exposed, and reduce every tensor
to metrics as soon as it arrives. Only summaries are kept.

The unit of comparison is a *unit*: one layer, or the group of layers TensorRT fused into one engine
layer. Units are taken in chunks (one chunk unless a memory budget is given). For each chunk: the
reference exposes the chunk's float outputs, the candidate gives its values of those tensors and of
every input of the chunk's units, and the exploded graph recomputes the chunk's units in FP32 from the
candidate's inputs (local error). Chunks run outermost, samples inside, so each session is built once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from layerdiff.backends.ort import Session, make_session
from layerdiff.candidates import ImportedCandidate, OrtCandidate
from layerdiff.graph import Layer, LoadedModel, Unit, expose_tensors, explode, fixed_shape_types, serialize
from layerdiff.inputs import Samples
from layerdiff.match import Pair
from layerdiff.metrics import TensorMetrics, diff_metrics

Progress = Callable[[str, int, int], None]  # (what is running, steps done, steps in all)


@dataclass(frozen=True)
class Chunk:
    units: tuple[Unit, ...]
    compared: tuple[str, ...]  # reference tensors compared in this chunk
    local_units: tuple[Unit, ...]  # units recomputed on the candidate's inputs
    estimated_bytes: int

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(lay for unit in self.units for lay in unit)


def unit_name(unit: Unit) -> str:
    return unit[0].name


def unit_inputs(model: LoadedModel, unit: Unit) -> list[str]:
    """Non-constant tensors a unit reads that it does not produce itself."""
    inside = {t for lay in unit for t in lay.outputs}
    return list(dict.fromkeys(t for lay in unit for t in lay.inputs if t not in model.fixed and t not in inside))


@dataclass
class CaptureResult:
    tensors: dict[str, list[TensorMetrics]] = field(default_factory=lambda: defaultdict(list))
    local: dict[str, list[TensorMetrics]] = field(default_factory=lambda: defaultdict(list))
    outputs: dict[str, list[TensorMetrics]] = field(default_factory=lambda: defaultdict(list))
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unpaired: dict[str, str] = field(default_factory=dict)  # tensor -> reason (found at run time)
    non_float: set[str] = field(default_factory=set)
    no_local: dict[str, str] = field(default_factory=dict)  # layer -> why no local error
    exposed_vs_plain_max_abs: float = 0.0
    chunks: int = 0
    samples_done: int = 0
    interrupted: bool = False
    reference_provider: str = ""
    candidate_provider: str = ""


def plan_chunks(model: LoadedModel, units: list[Unit], pairs: dict[str, Pair], sizes: dict[str, int],
                budget: int | None, no_local: dict[str, str]) -> list[Chunk]:
    """Greedy chunks of units in topological order whose captured bytes (reference + candidate + local
    copies of each output, plus candidate inputs from earlier chunks) stay under `budget`."""
    default = max(sizes.values(), default=4)
    chunks: list[Chunk] = []
    cur: list[Unit] = []
    cur_bytes = 0

    def flush():
        nonlocal cur, cur_bytes
        if cur:
            compared = tuple(t for unit in cur for lay in unit for t in lay.outputs if _compared(model, pairs, t))
            local = tuple(unit for unit in cur if unit_name(unit) not in no_local)
            chunks.append(Chunk(tuple(cur), compared, local, cur_bytes))
        cur, cur_bytes = [], 0

    produced_here: set[str] = set()
    for unit in units:
        cost = sum(3 * sizes.get(t, default) for lay in unit for t in lay.outputs if _compared(model, pairs, t))
        cost += sum(sizes.get(t, default) for t in unit_inputs(model, unit) if t not in produced_here)
        if budget is not None and cur and cur_bytes + cost > budget:
            flush()
            produced_here = set()
        cur.append(unit)
        cur_bytes += cost
        produced_here.update(t for lay in unit for t in lay.outputs)
    flush()
    return chunks


def _compared(model: LoadedModel, pairs: dict[str, Pair], tensor: str) -> bool:
    known = tensor in model.tensor_types
    return (model.is_float(tensor) or not known) and pairs.get(tensor, Pair(tensor, None)).candidate is not None


def local_eligibility(model: LoadedModel, units: list[Unit], pairs: dict[str, Pair]) -> dict[str, str]:
    """{unit name: reason} for units whose local error cannot be computed."""
    out = {}
    for unit in units:
        name = unit_name(unit)
        if not any(_compared(model, pairs, t) for lay in unit for t in lay.outputs):
            out[name] = "no float output paired with the candidate"
            continue
        inputs = unit_inputs(model, unit)
        missing = [t for t in inputs if pairs.get(t, Pair(t, None)).candidate is None]
        if missing:
            out[name] = f"the candidate's value of input '{missing[0]}' is not available"
        elif any(t not in model.tensor_types for t in inputs):
            out[name] = "an input's type is unknown"
    return out


def tensor_sizes(model: LoadedModel, feed: dict[str, np.ndarray]) -> dict[str, int]:
    shapes = fixed_shape_types(model, {k: v.shape for k, v in feed.items()})
    return {t: int(np.prod(s, dtype=np.int64)) * 4 for t, s in shapes.items()}


def capture(
    model: LoadedModel,
    candidate: OrtCandidate | ImportedCandidate,
    pairs: dict[str, Pair],
    samples: Samples,
    *,
    units: list[Unit] | None = None,
    budget: int | None = None,
    reference_providers: list | None = None,
    progress: Progress | None = None,
) -> CaptureResult:
    """Compare every paired tensor over all samples. Ctrl-C stops early and keeps what was finished."""
    run = _Capture(model, candidate, pairs, samples, reference_providers, progress)
    return run.go(units or [(lay,) for lay in model.layers], budget)


class _Capture:
    def __init__(self, model, candidate, pairs, samples, providers, progress):
        self.model, self.candidate, self.pairs, self.samples = model, candidate, pairs, samples
        self.providers, self.progress = providers, progress
        self.result = CaptureResult()
        self.cand_outputs: list[dict[str, np.ndarray]] = [{} for _ in samples.feeds]
        self.graph_inputs = {s.name for s in model.inputs}
        self.done = self.steps = 0

    def tick(self, what: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(what, self.done, self.steps)

    def go(self, units: list[Unit], budget: int | None) -> CaptureResult:
        model, res = self.model, self.result
        res.no_local = local_eligibility(model, units, self.pairs)
        res.non_float = {t for lay in model.layers for t in lay.outputs
                         if t in model.tensor_types and not model.is_float(t)}
        sizes = tensor_sizes(model, self.samples.feeds[0]) if budget is not None else {}
        chunks = plan_chunks(model, units, self.pairs, sizes, budget, res.no_local)
        res.chunks = len(chunks)
        self.steps = (len(chunks) + 1) * len(self.samples)
        finished = [0] * len(chunks)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        try:
            for ci, chunk in enumerate(chunks):
                for _ in self._run_chunk(chunk, last=ci == len(chunks) - 1):
                    finished[ci] += 1
                    self.tick(f"layers {chunk.layers[0].index}-{chunk.layers[-1].index}")
            self._final_outputs()
        except KeyboardInterrupt:
            res.interrupted = True
        finally:
            self.pool.shutdown(cancel_futures=True)
        res.samples_done = min(finished, default=0)
        return res

    def _run_chunk(self, chunk: Chunk, last: bool):
        model, pairs, res = self.model, self.pairs, self.result
        cand_graph_outputs = [o for o in self.candidate.graph_outputs if o in self.candidate.tensors] if last else []
        feeds_needed = {t for unit in chunk.local_units for t in unit_inputs(model, unit)
                        if t not in self.graph_inputs}
        cand_names = sorted({pairs[t].candidate for t in chunk.compared}
                            | {pairs[t].candidate for t in feeds_needed} | set(cand_graph_outputs))
        ref_names = list(chunk.compared)
        ref = make_session(expose_tensors(model.proto, ref_names, model.tensor_types), self.providers,
                           "reference", low_memory=True)
        cand = self.candidate.open(cand_names)
        local_sess, local_out = None, {}
        if chunk.local_units:
            blob, local_out = explode(model, [lay for unit in chunk.local_units for lay in unit],
                                      list(chunk.local_units))
            local_sess = make_session(blob, None, "exploded reference", low_memory=True)
        res.reference_provider = ref.provider
        for si, feed in enumerate(self.samples.feeds):
            r = ref.run(ref_names, feed)
            c = cand(si, feed)
            res.candidate_provider = self.candidate.provider
            for o in cand_graph_outputs:
                self.cand_outputs[si][o] = c[o]
            jobs = [job for t in chunk.compared if (job := self._pair(si, t, r[t], c[pairs[t].candidate]))]
            for t, m in zip([j[0] for j in jobs], self._metrics(jobs), strict=True):
                res.tensors[t].append(m)
            del r, jobs
            if local_sess is not None:
                self._local(feed, c, local_sess, local_out)
            del c
            yield si

    def _pair(self, si: int, t: str, ref: np.ndarray, cand: np.ndarray):
        """(t, ref, cand) when the two can be compared; else records why not and returns None."""
        res = self.result
        if ref.shape != cand.shape:
            res.unpaired[t] = f"shapes differ: reference {ref.shape}, candidate {cand.shape}"
        elif ref.dtype.kind != "f" or cand.dtype.kind != "f":
            res.non_float.add(t)
        else:
            res.shapes[t] = ref.shape
            return t, ref, cand
        return None

    def _metrics(self, jobs: list[tuple[str, np.ndarray, np.ndarray]]) -> list[TensorMetrics]:
        """diff_metrics of each (name, ref, cand), one tensor per core (numpy releases the GIL). BLAS is
        held to one thread meanwhile: threaded dot products on top of these threads oversubscribe the
        cores (measured: 40% slower on 2 cores)."""
        with threadpool_limits(limits=1, user_api="blas"):
            return list(self.pool.map(lambda job: diff_metrics(job[1], job[2]), jobs))

    def _local(self, feed, cand_values, sess: Session, local_out) -> None:
        model, pairs, res = self.model, self.pairs, self.result
        wanted = [t for t in local_out if t in pairs and pairs[t].candidate in cand_values
                  and t not in res.unpaired and t not in res.non_float and t in res.tensors]
        feeds = {}
        for name in sess.input_names:
            value = feed[name] if name in feed else cand_values[pairs[name].candidate]
            want = model.tensor_types.get(name)
            if want:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(want)
                if value.dtype != dtype:
                    value = value.astype(dtype)
            feeds[name] = value
        values = sess.run([local_out[t] for t in wanted], feeds)
        jobs = [(t, values[local_out[t]], cand_values[pairs[t].candidate]) for t in wanted]
        jobs = [j for j in jobs if j[1].shape == j[2].shape and j[1].dtype.kind == "f"]
        for (t, _, _), m in zip(jobs, self._metrics(jobs), strict=True):
            res.local[t].append(m)

    def _final_outputs(self) -> None:
        """Final outputs from plain runs of both models: nothing exposed, the models as deployed, so the
        numbers do not depend on chunks or on what was exposed. The candidate's exposed run is checked
        against its plain run (exposing tensors can change fusions)."""
        res, cand = self.result, self.candidate
        names = [o for o in self.model.outputs if o in cand.graph_outputs]
        for o in self.model.outputs:
            if o not in cand.graph_outputs:
                res.unpaired.setdefault(o, "the candidate has no graph output of this name")
        plain = cand.plain(names)
        reference = make_session(serialize(self.model.proto), self.providers, "reference")
        for si, feed in enumerate(self.samples.feeds):
            c = plain(si, feed)
            r = reference.run(names, feed)
            for o in names:
                if r[o].shape == c[o].shape:
                    res.outputs[o].append(diff_metrics(r[o], c[o]))
                exposed = self.cand_outputs[si].get(o)
                if exposed is not None and exposed.shape == c[o].shape:
                    diff = np.abs(exposed.astype(np.float64) - c[o].astype(np.float64))
                    finite = diff[np.isfinite(diff)]
                    if finite.size:
                        res.exposed_vs_plain_max_abs = max(res.exposed_vs_plain_max_abs, float(finite.max()))
            self.tick("final outputs")
