"""`prepare` a model once, then realise, evaluate and compare as many precision plans as you like.

    session = layerdiff.prepare("model.onnx", inputs="samples/", calib="calib/")
    cand = session.realise(layerdiff.PrecisionPlan.uniform("int8", pin_fp32={"conv7"}))
    print(session.evaluate(cand).outputs)      # final outputs only: plain runs, fast
    report = session.compare(cand)            # layer by layer

The session loads the model and the samples once, runs the FP32 reference once (plain outputs when
first needed, every tensor when a comparison first needs them and they fit in `reference_cache` bytes),
and keeps calibration ranges and the quantized model in memory. It is safe to use from several threads:
nothing in a run changes process-wide state, and `cancel` (a threading.Event) stops a run between
model runs.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import numpy as np
import onnx

from layerdiff.assemble import assemble_report
from layerdiff.backends.base import Candidate, CandidateSource
from layerdiff.backends.calibrate import RangesCache, activations
from layerdiff.backends.int8 import Int8Quantizer
from layerdiff.backends.ort import OrtSource, providers_for
from layerdiff.backends.ort_backend import OnnxFileBackend, OrtBackend
from layerdiff.backends.placement import default as placement_default
from layerdiff.candidate_checks import candidate_warnings, exposed_vs_plain
from layerdiff.capture import REFERENCE_LEVEL, capture, tensor_sizes
from layerdiff.errors import (
    BackendError,
    BadInput,
    Cancelled,
    ModelError,
    OutputPathError,
)
from layerdiff.evaluation import (
    CachedSource,
    Evaluation,
    diff_final_outputs,
    kernel_check,
    output_names,
    sliced_tolerance,
)
from layerdiff.graph import (
    LoadedModel,
    check_ir_version,
    from_proto,
    load_model,
)
from layerdiff.inputs import Samples, load_samples, parse_shapes
from layerdiff.lazy import once
from layerdiff.match import identity_pairing, match_tensors
from layerdiff.plan import PrecisionPlan
from layerdiff.progress import Progress
from layerdiff.report import CandidateInfo, OutputDiff, Report
from layerdiff.rewrite import expose_tensors
from layerdiff.rows import checked_rows, exact_sources, plan_rows
from layerdiff.specs import IMPORTED, SPECS

DEFAULT_REFERENCE_CACHE = 512 * 2**20


def prepare(model: str | Path | onnx.ModelProto, *, inputs: str | Path | None = None, calib: str | Path | None = None,
            shapes: tuple[str, ...] | list[str] = (), seed: int = 1, calibration: str = "minmax",
            reference_provider: str = "auto", max_memory: int | None = None, cache_dir: str | Path | None = None,
            optimization: str = "all", capture_mode: str = "kernels",
            reference_cache: int = DEFAULT_REFERENCE_CACHE, int8_placement: str | None = None) -> Session:
    """Load `model` and its samples once. `inputs`: an .npz, a directory of .npz files or a Polygraphy
    --save-inputs JSON (without it, one seeded random sample, and reports say so); `calib`: calibration
    samples for INT8 (default: the inputs); `shapes`: NAME:1x3x224x224 for dynamic dimensions;
    `optimization`: ONNX Runtime's graph optimization level of the deployed candidate (all, extended,
    basic, disabled); `capture_mode`: kernels (read what the deployed session computes) or mark-outputs
    (every tensor an output, which blocks fusions); `int8_placement`: trt or ort-all (backends/placement)."""
    for what, value in (("inputs", inputs), ("calib", calib), ("cache_dir", cache_dir)):
        if value is not None and not isinstance(value, (str, Path)):
            raise BadInput(f"{what} is a path (str or Path), not {type(value).__name__}")
    if isinstance(shapes, str):
        shapes = (shapes,)
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise OutputPathError(f"--cache-dir {cache_dir} is a file, not a directory; give a directory")
    if isinstance(model, onnx.ModelProto):
        check_ir_version(model, "the model")
        loaded = from_proto(model, sha256=hashlib.sha256(model.SerializeToString()).hexdigest())
    elif isinstance(model, (str, Path)):
        loaded = load_model(model)
    else:
        raise BadInput(f"model is the path of an ONNX file or an onnx.ModelProto, not {type(model).__name__}")
    shape_map = parse_shapes(tuple(shapes), loaded.inputs)
    samples = load_samples(inputs, loaded.inputs, shape_map, seed)
    calib_samples = load_samples(calib, loaded.inputs, shape_map, seed, what="--calib") if calib else samples
    return Session(loaded, samples, calib_samples, providers_for(reference_provider), calibration=calibration,
                   max_memory=max_memory, cache_dir=Path(cache_dir) if cache_dir else None, optimization=optimization,
                   capture_mode=capture_mode, reference_cache=reference_cache, int8_placement=int8_placement)


def _explained(method):
    """A model that fails to run on random inputs whose dynamic dimensions were set to 1 says so."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BackendError as err:
            hint = self.samples.hint() or self.calib.hint()
            if hint and str(err).startswith("ONNX Runtime failed to run") and not str(err).endswith(hint):
                raise BackendError(f"{err}{hint}") from err
            raise

    return run


class Session:
    """One model, its samples, its FP32 reference and its calibration, prepared once (see the module doc)."""

    def __init__(self, model: LoadedModel, samples: Samples, calib: Samples | None = None,
                 reference_providers: list | None = None, *, calibration: str = "minmax",
                 max_memory: int | None = None, cache_dir: Path | None = None, optimization: str = "all",
                 capture_mode: str = "kernels", reference_cache: int = DEFAULT_REFERENCE_CACHE,
                 int8_placement: str | None = None):
        self.int8_placement = int8_placement or placement_default()  # (checked by the quantizer)
        if capture_mode not in ("kernels", "mark-outputs"):
            raise BadInput(f"unknown capture mode '{capture_mode}'; use kernels or mark-outputs")
        self.model, self.samples = model, samples
        self.calib = calib if calib is not None else samples
        self.reference_providers = reference_providers or ["CPUExecutionProvider"]
        self.calibration, self.max_memory, self.cache_dir = calibration, max_memory, cache_dir
        self.optimization, self.capture_mode, self.reference_cache = optimization, capture_mode, reference_cache
        self._lock = threading.RLock()
        self._backends: dict[tuple, object] = {}
        self._plain: list[dict[str, np.ndarray]] | None = None
        self._exposed: dict[int, dict[str, np.ndarray]] | None = None

    # -- candidates -------------------------------------------------------------------------------------

    def backend(self, name: str = "ort"):
        """The backend of this session named `name`: ort (CPU), ort-cuda, ort-trt-fp16, ort-trt-int8, trt,
        fake. Made once and kept (the INT8 quantization inside it is done once)."""
        with self._lock:
            if name not in self._backends:
                self._backends[name] = self._make_backend(name)
            return self._backends[name]

    @once
    def _ranges_cache(self) -> RangesCache:
        return RangesCache(self.cache_dir, self.model.sha256, self.calibration, self.calib)

    @once
    def quantizer(self) -> Int8Quantizer:
        """Calibration ranges and the all-INT8 QDQ model, made once and shared by every backend (the
        ranges read from --cache-dir when it holds them)."""
        return Int8Quantizer(self.model, self.calib, self.calibration, self.max_memory,
                             self._ranges_cache.load(activations(self.model)), placement=self.int8_placement)

    def use_ranges(self, ranges) -> None:
        """Quantize with these calibration ranges (a recipe's) instead of calibrating; before any INT8
        candidate is made."""
        with self._lock:
            if "quantizer" in self.__dict__ or self._backends:
                raise BadInput("use_ranges comes before the session's first INT8 candidate")
            self.__dict__["quantizer"] = Int8Quantizer(self.model, self.calib, self.calibration, self.max_memory,
                                                       ranges, placement=self.int8_placement)

    def _make_backend(self, name: str):
        if name == "ort":
            return OrtBackend(self.model, quantizer=self.quantizer, level=self.optimization,
                              capture=self.capture_mode)
        if name in ("ort-cuda", "ort-trt-fp16", "ort-trt-int8"):
            return OrtBackend(self.model, provider=name[4:], quantizer=self.quantizer, level=self.optimization)
        if name == "trt":
            from layerdiff.backends.trt import TrtBackend

            return TrtBackend(self.model, self.calib, self.calibration, self.quantizer)
        if name == "fake":
            from layerdiff.backends.fake import FakeBackend

            return FakeBackend(self.model)
        raise BadInput(f"unknown backend '{name}'; use ort, ort-cuda, ort-trt-fp16, ort-trt-int8, trt or fake")

    @_explained
    def realise(self, plan: PrecisionPlan | None = None, backend="ort", *, progress: Progress | None = None,
                cancel: threading.Event | None = None) -> Candidate:
        """The candidate `plan` describes, built by `backend` (a name, see `backend()`, or a backend
        object such as `FakeBackend(session.model, errors={...})`): a frozen Candidate. ONNX Runtime by
        default: INT8 QDQ or FP16 as the plan's precisions say. An INT8 plan calibrates on first use
        (`progress` reports it; `cancel` stops it)."""
        plan = plan if plan is not None else PrecisionPlan.uniform("int8")
        if "int8" in plan.precisions and backend in ("ort", "ort-trt-int8") and not self.quantizer.calibrated:
            self.quantizer.calibrate(progress, cancel)
            self._ranges_cache.save(self.quantizer.ranges)
        return (self.backend(backend) if isinstance(backend, str) else backend).realise(plan)

    def candidate(self, spec: str, plan: PrecisionPlan | None = None, *, engine_info: str | Path | None = None,
                  progress: Progress | None = None, cancel: threading.Event | None = None) -> Candidate:
        """A candidate named as on the command line (layerdiff.specs): ort-int8, ort-fp16, trt-fp16, trt-int8,
        trt-bf16, ort-cuda, ort-trt-fp16, ort-trt-int8, fake, polygraphy:RESULTS (outputs saved on a GPU
        machine; `engine_info` groups fused layers) or the path of a candidate ONNX model. An INT8 spec
        calibrates on first use (`progress` reports it, `cancel` stops it)."""
        if not isinstance(spec, str):
            raise BadInput(f"a candidate is named by a string (ort-int8, a path, ...), not {type(spec).__name__}")
        if spec.startswith(IMPORTED):
            from layerdiff.backends.imported import ImportedBackend

            if plan is not None:
                raise BadInput("imported results are compared as they are: they cannot realise a precision plan")
            return ImportedBackend(self.model, spec[len(IMPORTED):], self.samples, engine_info).realise()
        if engine_info is not None:
            raise BadInput("--engine-info describes a TensorRT engine whose results are imported: use it with "
                           "--candidate polygraphy:RESULTS")
        if spec in SPECS:
            backend, precision, _ = SPECS[spec]
            want = plan if plan is not None else PrecisionPlan.uniform(precision)
            if spec in ("ort-int8", "ort-fp16") and precision not in want.precisions:
                raise BadInput(f"--candidate {spec} with a plan that has no {precision} node; use a plan with "
                               f"default {precision} (nodes pinned to fp32 are fine)")
            return self.realise(want, backend, progress=progress, cancel=cancel)
        path = Path(spec)
        if path.suffix != ".onnx" and not path.exists():
            raise BadInput(f"unknown --candidate '{spec}': use one of {', '.join(SPECS)}, "
                           "polygraphy:RESULTS.json or the path of an ONNX model")
        cand = load_model(path)
        missing = [i.name for i in self.model.inputs if i.name not in {c.name for c in cand.inputs}]
        if missing:
            raise ModelError(f"candidate {path} has no input '{missing[0]}' of the model; it must be derived "
                             f"from the FP32 model (its inputs are: {[c.name for c in cand.inputs]})")
        return OnnxFileBackend(self.model, cand, self.optimization, self.capture_mode).realise(plan)

    # -- the reference ---------------------------------------------------------------------------------

    @_explained
    def reference_outputs(self, cancel: threading.Event | None = None) -> list[dict[str, np.ndarray]]:
        """The FP32 model's final outputs for every sample (plain runs, computed once)."""
        with self._lock:
            if self._plain is None:
                source = OrtSource(self.model.blob, None, self.reference_providers, REFERENCE_LEVEL,
                                   "reference", cancel=cancel)
                with source:
                    self._plain = [source.infer(feed) for feed in self.samples.feeds]
            return self._plain

    def _reference(self, names: list[str], cancel: threading.Event | None = None) -> CandidateSource:
        """A source of the FP32 model's values of `names` (cached when every tensor fits in the cache)."""
        with self._lock:
            if self._exposed is None and self._fits_cache():
                everything = [t for lay in self.model.layers for t in lay.outputs] + [i.name for i in self.model.inputs]
                blob = expose_tensors(self.model, everything)
                with OrtSource(blob, None, self.reference_providers, REFERENCE_LEVEL, "reference", cancel=cancel,
                               low_memory=True, derived_from=self.model.blob) as source:
                    values = {id(feed): source.infer(feed) for feed in self.samples.feeds}
                    self._exposed, self._exposed_provider = values, source.provider
            if self._exposed is not None:
                return CachedSource(self._exposed, names, self._exposed_provider)
        return OrtSource(expose_tensors(self.model, names), {n: n for n in names}, self.reference_providers,
                         REFERENCE_LEVEL, "reference", cancel=cancel, low_memory=True, derived_from=self.model.blob)

    def reference_absmax(self, tensors: list[str], cancel: threading.Event | None = None) -> dict[str, float]:
        """The largest finite |value| of each of `tensors` in the FP32 model over every sample."""
        out: dict[str, float] = {}
        with self._reference(tensors, cancel) as source:
            for feed in self.samples.feeds:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("run cancelled")
                for name, value in source.infer(feed).items():
                    value = np.asarray(value)
                    finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
                    if finite.size:
                        out[name] = max(out.get(name, 0.0), float(np.abs(finite).max()))
        return out

    def _fits_cache(self) -> bool:
        if self.reference_cache <= 0:
            return False
        sizes = self._sizes
        tensors = [t for lay in self.model.layers for t in lay.outputs]
        if any(t not in sizes for t in tensors if self.model.is_float(t)):
            return False
        return sum(sizes.get(t, 0) for t in tensors) * len(self.samples) <= self.reference_cache

    @once
    def _sizes(self) -> dict[str, int]:
        return tensor_sizes(self.model, self.samples.feeds[0])

    def with_samples(self, samples: Samples, calib: Samples | None = None) -> Session:
        """A session of the same model and settings on other samples (calibrating on `calib`, default:
        this session's calibration samples, whose ranges and quantized model are then shared)."""
        other = Session(self.model, samples, calib if calib is not None else self.calib, self.reference_providers,
                        calibration=self.calibration, max_memory=self.max_memory, cache_dir=self.cache_dir,
                        optimization=self.optimization, capture_mode=self.capture_mode,
                        reference_cache=self.reference_cache, int8_placement=self.int8_placement)
        if calib is None and "quantizer" in self.__dict__:
            other.__dict__["quantizer"] = self.quantizer
        return other

    @_explained
    def outputs_on(self, candidate: Candidate | None, samples: Samples | None = None,
                   cancel: threading.Event | None = None) -> list[dict[str, np.ndarray]]:
        """Final outputs, keyed by the model's output names, one dict per sample of `samples` (default:
        the session's), from plain runs: of `candidate`, or of the FP32 model when it is None (the
        session's own samples' reference outputs are computed once)."""
        samples = samples if samples is not None else self.samples
        if candidate is None:
            if samples is self.samples:
                return self.reference_outputs(cancel)
            with OrtSource(self.model.blob, None, self.reference_providers, REFERENCE_LEVEL, "reference",
                           cancel=cancel) as source:
                return [source.infer(feed) for feed in samples.feeds]
        self._check(candidate)
        names = output_names(self.model, candidate)
        out = []
        with candidate.open(cancel) as source:
            for feed in samples.feeds:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("run cancelled")
                values = source.infer(feed)
                out.append({name: values[held] for name, held in names.items() if held in values})
        return out

    # -- evaluate and compare --------------------------------------------------------------------------

    @_explained
    def evaluate(self, candidate: Candidate, *, cancel: threading.Event | None = None,
                 keep_values: bool = False) -> Evaluation:
        """The candidate's final outputs against the FP32 model's, from plain runs (nothing exposed).
        `keep_values` keeps the candidate's outputs of every sample in the result."""
        self._check(candidate)
        reference = self.reference_outputs(cancel)
        names = output_names(self.model, candidate)
        with candidate.open(cancel) as source:
            return diff_final_outputs(self.model.outputs, names, self.samples.feeds, reference, source, keep_values,
                                      cancel, self.samples.names)

    def _check(self, candidate: Candidate) -> None:
        if not isinstance(candidate, Candidate):
            raise BadInput(f"expected a Candidate (session.realise or session.candidate), not {type(candidate).__name__}")
        if candidate.of and candidate.of != self.model.key:  # another session's
            raise BadInput("this candidate was made from another model: realise it in this session")

    @_explained
    def compare(self, candidate: Candidate, *, divergence_cosine: float = 0.99, min_cosine: float | None = None,
                outputs: tuple[str, ...] | list[str] = (),
                progress: Progress | None = None, cancel: threading.Event | None = None) -> Report:
        """The layer-wise report of `candidate` against the FP32 model (see layerdiff.report)."""
        self._check(candidate)
        for what, value in (("divergence_cosine", divergence_cosine), ("min_cosine", min_cosine)):
            if value is not None and not (isinstance(value, (int, float)) and -1.0 <= value <= 1.0):
                raise BadInput(f"{what} is a cosine, between -1 and 1; got {value!r}")
        tolerance = None
        if outputs:
            tolerance = sliced_tolerance(min_cosine, outputs, self.model.outputs, self.reference_outputs(cancel),
                                         lambda: self.outputs_on(candidate, cancel=cancel))
        deployment = candidate.deployment()
        if candidate.executed is not None:
            pairing = match_tensors(self.model, candidate.executed)
        else:
            pairing = identity_pairing(self.model)
        groups = deployment.groups()
        rows, doubts = checked_rows(lambda: plan_rows(
            self.model, pairing, deployment, executed=candidate.executed, groups=[g for g, _ in groups],
            engine_of={g[0]: e for g, e in groups if e and g}, emulated=candidate.emulated,
            requested=dict(candidate.requested)), pairing, deployment, self.samples.feeds)
        held = output_names(self.model, candidate)  # the candidate's graph outputs: compared with its plain run
        graph_outputs = [o for o in dict.fromkeys(held.values()) if o and deployment.available(o)]
        result = capture(self.model, rows, deployment, lambda names: self._reference(names, cancel), self.samples, budget=self.max_memory,
                         progress=progress, cancel=cancel, keep=graph_outputs)
        evaluation = None
        if not result.interrupted:  # a run stopped while comparing rows stops here too
            try:
                evaluation = self.evaluate(candidate, cancel=cancel, keep_values=bool(graph_outputs))
            except (Cancelled, KeyboardInterrupt):
                result.interrupted = True
        if evaluation is None:
            evaluation = Evaluation(tuple(OutputDiff(o, reason="not captured (run interrupted)")
                                          for o in self.model.outputs), (), "")
        exposed = exposed_vs_plain(result.kept, evaluation.values, held)
        kernel_note: tuple[str, ...] = ()
        if not result.interrupted:
            try:
                kernel_note = kernel_check(candidate, evaluation, held, self.samples.feeds, self.reference_outputs(),
                                           self.optimization, cancel)
            except (Cancelled, KeyboardInterrupt):  # every row is in: the report keeps them
                result.interrupted = True
                kernel_note = ("interrupted before the deployed INT8 kernels were checked against the candidate's "
                               "Q/DQ arithmetic: every row is in the report, that check alone did not run",)
        if progress:
            progress("final outputs", 1, 1)
        info = CandidateInfo(candidate.spec, candidate.kind, candidate.runtime,
                             result.candidate_provider or evaluation.provider, candidate.backend,
                             candidate.plan.to_dict() if candidate.plan is not None else None,
                             tuple(sorted(candidate.pinned)), tuple(sorted(candidate.emulated)), candidate.details)
        return assemble_report(self.model, rows, info, self.samples, result, evaluation.outputs,
                               divergence_cosine=divergence_cosine, max_memory=self.max_memory,
                               mode=deployment.mode, exposed_vs_plain=exposed,
                               matches_plain_engine=deployment.matches_plain(), min_cosine=min_cosine,
                               tolerance=tolerance,
                               warnings=candidate_warnings(self.model, candidate, pairing, rows) + doubts + kernel_note,
                               upstream=exact_sources(candidate.executed) if candidate.executed else None)
