"""Run the reference, the candidate and the exploded graph, and reduce every tensor to metrics as soon
as it arrives. Only summaries are kept.

Rows (rows.py) are taken in chunks (one chunk unless a memory budget is given). For each chunk the
reference exposes the chunk's compared tensors, the candidate's deployment gives its values of those
tensors and of every value the chunk's rows read, and the exploded graph recomputes the chunk's layer
rows in FP32 from those values (local error). Chunks run outermost, samples inside, so each session is
built once. A cancel event (or Ctrl-C) stops between runs and keeps what finished.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import onnx

from layerdiff.backends.base import CandidateSource, Deployment
from layerdiff.backends.ort import make_session
from layerdiff.errors import BackendError, Cancelled, first_line
from layerdiff.graph import LoadedModel
from layerdiff.inputs import Samples
from layerdiff.metrics import TensorMetrics, diff_metrics
from layerdiff.progress import Progress
from layerdiff.rewrite import explode, fixed_shape_types
from layerdiff.rows import REFERENCE, Row

Reference = Callable[[list[str]], CandidateSource]  # opens the FP32 model with these tensors exposed
Key = tuple[str, str]  # (row name, reference tensor)
# The FP32 reference is the model node by node as ONNX defines it: ONNX Runtime with its graph
# optimizations off. With them on, which tensors are read would change its fusions (a Conv whose output
# is read is not fused with its BatchNormalization) and so the reference's rounding: a row's numbers
# would depend on --max-memory. Off costs nothing measurable (PP-OCR det: 0.111 s a run against 0.122 s).
REFERENCE_LEVEL = "disabled"


@dataclass
class CaptureResult:
    tensors: dict[Key, list[TensorMetrics]] = field(default_factory=lambda: defaultdict(list))
    local: dict[Key, list[TensorMetrics]] = field(default_factory=lambda: defaultdict(list))
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unpaired: dict[Key, str] = field(default_factory=dict)  # found at run time (shape or type mismatch)
    chunks: int = 0
    samples_done: int = 0
    interrupted: bool = False
    reference_provider: str = ""
    candidate_provider: str = ""
    kept: list[dict[str, np.ndarray]] = field(default_factory=list)  # per sample: the `keep` tensors
    local_failed: dict[str, str] = field(default_factory=dict)  # row -> why its FP32 recomputation failed
    all_shapes: dict[str, dict[tuple[int, ...], None]] = field(default_factory=dict)  # every shape, in order


@dataclass(frozen=True)
class Chunk:
    rows: tuple[Row, ...]
    estimated_bytes: int

    @property
    def first(self) -> int:
        return self.rows[0].index

    @property
    def last(self) -> int:
        return self.rows[-1].index


def tensor_sizes(model: LoadedModel, feed: dict[str, np.ndarray]) -> dict[str, int]:
    shapes = fixed_shape_types(model, {k: v.shape for k, v in feed.items()})
    return {t: int(np.prod(s, dtype=np.int64)) * 4 for t, s in shapes.items()}


def plan_chunks(rows: list[Row], sizes: dict[str, int], budget: int | None) -> list[Chunk]:
    """Greedy chunks of rows in topological order whose captured bytes (reference, candidate and local
    copies of each compared tensor, plus the values they read from earlier chunks) stay under `budget`."""
    default = max(sizes.values(), default=4)
    chunks: list[Chunk] = []
    cur: list[Row] = []
    cur_bytes = 0
    produced: set[str] = set()
    for row in rows:
        cost = sum(3 * sizes.get(o.tensor, default) for o in row.outputs if o.candidate)
        cost += sum(sizes.get(t, default) for _, _, t, _ in row.reads if t not in produced)
        if budget is not None and cur and cur_bytes + cost > budget:
            chunks.append(Chunk(tuple(cur), cur_bytes))
            cur, cur_bytes, produced = [], 0, set()
        cur.append(row)
        cur_bytes += cost
        produced.update(o.tensor for o in row.outputs)
    if cur:
        chunks.append(Chunk(tuple(cur), cur_bytes))
    return chunks


def capture(model: LoadedModel, rows: list[Row], deployment: Deployment, reference: Reference, samples: Samples, *,
            budget: int | None = None, progress: Progress | None = None, cancel: threading.Event | None = None,
            keep: list[str] | tuple[str, ...] = ()) -> CaptureResult:
    """Compare every row over all samples. Cancelling (or Ctrl-C) stops early and keeps what finished.
    `keep`: candidate tensors whose values are kept per sample (read in the last chunk's runs)."""
    return _Capture(model, deployment, reference, samples, progress, cancel, list(keep)).go(rows, budget)


class _Capture:
    def __init__(self, model, deployment, reference, samples, progress, cancel, keep):
        self.model, self.deployment, self.reference, self.samples = model, deployment, reference, samples
        self.progress, self.cancel, self.keep = progress, cancel, keep
        self.result = CaptureResult()
        self.done = self.steps = 0

    def tick(self, what: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(what, self.done, self.steps)

    def go(self, rows: list[Row], budget: int | None) -> CaptureResult:
        res = self.result
        sizes = tensor_sizes(self.model, self.samples.feeds[0]) if budget is not None else {}
        chunks = plan_chunks(rows, sizes, budget)
        res.chunks = len(chunks)
        self.steps = len(chunks) * len(self.samples)
        finished = [0] * len(chunks)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as self.pool:
            try:
                for ci, chunk in enumerate(chunks):
                    for _ in self._run_chunk(chunk, self.keep if ci == len(chunks) - 1 else []):
                        finished[ci] += 1
                        self.tick(f"layers {chunk.first}-{chunk.last}")
            except (KeyboardInterrupt, Cancelled):
                res.interrupted = True
        res.samples_done = min(finished, default=0)
        return res

    def _run_chunk(self, chunk: Chunk, keep: list[str]):
        res = self.result
        compared = [(row, o) for row in chunk.rows for o in row.outputs if o.candidate]
        local_rows = [row for row in chunk.rows if row.kind == "layer" and not row.no_local]
        ref_names = list(dict.fromkeys([o.tensor for _, o in compared]
                                       + [k[len(REFERENCE):] for row in local_rows for k in row.read_keys
                                          if k.startswith(REFERENCE)]))
        cand_names = list(dict.fromkeys(
            [o.candidate for _, o in compared]
            + [k for row in local_rows for k in row.read_keys if not k.startswith(REFERENCE)]
            + [row.local_from for row in chunk.rows if row.local_from] + keep))
        locals_ = _Locals(self, local_rows) if local_rows else None
        with ExitStack() as stack:
            ref = stack.enter_context(self.reference(ref_names))
            cand = stack.enter_context(self.deployment.open(cand_names, self.cancel))
            res.reference_provider, res.candidate_provider = ref.provider, cand.provider
            for feed in self.samples.feeds:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled("cancelled")
                r = ref.infer(feed)
                c = cand.infer(feed)
                if keep:
                    res.kept.append({k: c[k] for k in keep})
                self._compare(compared, r, c)
                self._record(res.local, [((row.name, row.outputs[0].tensor), c[row.local_from],
                                          c[row.outputs[0].candidate]) for row in chunk.rows
                                         if row.local_from and row.local_from in c])
                if locals_ is not None:
                    locals_.run(feed, r, c)
                del r, c
                yield

    def _compare(self, compared, r, c) -> None:
        jobs = []
        for row, o in compared:
            key = (row.name, o.tensor)
            ref, cand = r[o.tensor], _like(c[o.candidate], r[o.tensor].shape)
            if ref.shape != cand.shape:
                self.result.unpaired[key] = f"shapes differ: reference {ref.shape}, candidate {cand.shape}"
            elif ref.dtype.kind == "f" and cand.dtype.kind == "f":
                self.result.shapes[o.tensor] = ref.shape
                self.result.all_shapes.setdefault(o.tensor, {})[ref.shape] = None
                jobs.append((key, ref, cand))
            else:
                self.result.unpaired[key] = f"not a float tensor in both runs ({ref.dtype} and {cand.dtype})"
        self._record(self.result.tensors, jobs)

    def _record(self, into: dict[Key, list[TensorMetrics]], jobs) -> None:
        """diff_metrics of each (key, reference, candidate), one tensor per core (numpy releases the GIL;
        its dot products on short blocks stay on the calling thread, see metrics._BLOCK)."""
        metrics = list(self.pool.map(lambda job: diff_metrics(job[1], job[2]), jobs)) if jobs else []
        for (key, _, _), m in zip(jobs, metrics, strict=True):
            into[key].append(m)

    def _local(self, feed, r, c, sess, exploded, rows: list[Row], dtypes) -> None:
        """The local errors of `rows` on one sample: the exploded graph run on the values the candidate's
        kernels read (BackendError where ONNX Runtime cannot run it)."""
        tensor_of = {key: t for row in rows for _, _, t, key in row.reads}
        feeds = {}
        for name, key in exploded.feeds.items():
            if key.startswith(REFERENCE):
                value = r[key[len(REFERENCE):]]
            else:
                value = c[key] if key in c else feed[key]
            dtype = dtypes.get(name)
            value = _like(value, self.result.shapes.get(tensor_of.get(name, name), value.shape))
            feeds[name] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
        wanted = [(row, o) for row in rows for o in row.outputs
                  if o.candidate and o.tensor in exploded.local and (row.name, o.tensor) in self.result.tensors]
        values = sess.run(list(dict.fromkeys(exploded.local[o.tensor] for _, o in wanted)), feeds, self.cancel)
        jobs = [((row.name, o.tensor), values[exploded.local[o.tensor]],
                 _like(c[o.candidate], values[exploded.local[o.tensor]].shape)) for row, o in wanted]
        jobs = [j for j in jobs if j[1].shape == j[2].shape and j[1].dtype.kind == "f" and j[2].dtype.kind == "f"]
        self._record(self.result.local, jobs)


class _Locals:
    """A chunk's layer rows recomputed in FP32 by exploded graphs: one for all of them, split in halves
    where ONNX Runtime cannot build or run one, down to single rows, so that a row it cannot recompute
    costs that row's local error (said in the row), never the report."""

    def __init__(self, capture: _Capture, rows: list[Row]):
        self.capture = capture
        self.parts: list[tuple[list[Row], object, object, dict]] | None = None
        self.pending = [rows]

    def _build(self, rows: list[Row]):
        model = self.capture.model
        keys = {(lay.name, slot, t): key for row in rows for lay, slot, t, key in row.reads}
        exploded = explode(model, [row.layers for row in rows], lambda lay, slot, t: keys.get((lay.name, slot, t), t))
        sess = make_session(exploded.blob, None, "exploded reference", low_memory=True, level=REFERENCE_LEVEL)
        return exploded, sess, _input_dtypes(model, exploded, rows)

    def run(self, feed, r, c) -> None:
        if self.parts is not None:  # the partition found on the first sample
            for rows, exploded, sess, dtypes in self.parts:
                self._try(rows, lambda rows=rows, e=exploded, s=sess, d=dtypes: self.capture._local(
                    feed, r, c, s, e, rows, d))
            return
        self.parts = []
        while self.pending:
            rows = self.pending.pop()
            try:
                exploded, sess, dtypes = self._build(rows)
                self.capture._local(feed, r, c, sess, exploded, rows, dtypes)
            except (BackendError, RuntimeError) as err:
                if len(rows) > 1:
                    self.pending += [rows[: len(rows) // 2], rows[len(rows) // 2:]]
                else:
                    self._fail(rows[0], err)
                continue
            self.parts.append((rows, exploded, sess, dtypes))

    def _try(self, rows: list[Row], job) -> None:
        try:
            job()
        except (BackendError, RuntimeError) as err:  # a later sample's values it cannot run: these rows' figures
            for row in rows:
                self._fail(row, err)

    def _fail(self, row: Row, err: Exception) -> None:
        self.capture.result.local_failed.setdefault(row.name, first_line(err))
        for o in row.outputs:
            self.capture.result.local.pop((row.name, o.tensor), None)


def _input_dtypes(model: LoadedModel, exploded, rows: list[Row]) -> dict[str, np.dtype]:
    """{exploded graph input: the dtype the model gives the tensor it stands for} (an FP16 candidate's
    values are widened to it; the widening is exact)."""
    tensor_of = {key: t for row in rows for _, _, t, key in row.reads}
    out = {}
    for name in exploded.feeds:
        elem = model.tensor_types.get(tensor_of.get(name, name))
        if elem:
            out[name] = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return out


def _like(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`value` in `shape` when it holds the same elements in the same order and only dimensions of size 1
    differ (ONNX Runtime's channels-last kernels write [N, C, 1, 1] as [N, 1, 1, C]); else as it is."""
    if value.shape == shape or value.size != int(np.prod(shape, dtype=np.int64)):
        return value
    if [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return value
