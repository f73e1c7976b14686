"""ONNX Runtime sessions. onnxruntime-gpu lists the CUDA and TensorRT providers even where their
libraries cannot load, so a provider is tried and what really loaded is recorded.

Nothing here changes process-wide state (ONNX Runtime's default logger, environment): every setting is
a session option, so sessions can be made and run from several threads at once. How many threads one
session's operators use is a context variable (`INTRA_OP_THREADS`): a caller running several sessions
at once gives each a share of the cores."""

from __future__ import annotations

import contextvars
import ctypes
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from layerdiff.backends.ortnames import INPUT_TYPES, LEVELS, cast_feed
from layerdiff.errors import BackendError, Cancelled, ModelError, first_line
from layerdiff.graph import probe_model

_ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail,
               ort.capi.onnxruntime_pybind11_state.InvalidGraph,
               ort.capi.onnxruntime_pybind11_state.InvalidArgument,
               ort.capi.onnxruntime_pybind11_state.NotImplemented,
               ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
               ort.capi.onnxruntime_pybind11_state.RuntimeException)
# 0: ONNX Runtime's default (one thread per physical core); set by bisect --jobs to share the cores
INTRA_OP_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("INTRA_OP_THREADS", default=0)
_LOADS: dict[str, bool] = {}
_LOADS_LOCK = threading.Lock()


def provider_loads(provider: str) -> bool:
    """Whether an execution provider really loads here (tried once on a one-node model, then cached):
    onnxruntime-gpu lists CUDA and TensorRT even where their libraries or the GPU are missing, and then
    silently falls back to the CPU."""
    with _LOADS_LOCK:
        if provider not in _LOADS:
            loads = False
            if provider in ort.get_available_providers() and _library_loads(provider):
                so = ort.SessionOptions()
                so.log_severity_level = 4
                try:
                    sess = ort.InferenceSession(probe_model().SerializeToString(), so,
                                                providers=[provider, "CPUExecutionProvider"])
                    loads = sess.get_providers()[0] == provider
                except (*_ORT_ERRORS, RuntimeError):
                    loads = False
            _LOADS[provider] = loads
        return _LOADS[provider]


def _library_loads(provider: str) -> bool:
    """Whether the provider's shared library and its CUDA/TensorRT dependencies load at all: a quiet
    check before ONNX Runtime tries (and prints its own error when they do not)."""
    short = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(provider)
    if short is None:
        return True
    capi = Path(ort.__file__).parent / "capi"
    library = next(iter(capi.glob(f"*onnxruntime_providers_{short}.*")), None)
    if library is None:
        return False
    try:
        ctypes.CDLL(str(library))
    except OSError:
        return False
    return True


def providers_for(choice: str) -> list:
    """'cpu', 'cuda' (fails if it does not load) or 'auto' (CUDA with TF32 off where it loads, else CPU)."""
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice in ("cuda", "auto"):
        if provider_loads("CUDAExecutionProvider"):
            return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
        if choice == "cuda":
            raise BackendError(
                "the CUDA execution provider does not load here (no GPU or no CUDA libraries); "
                "use --reference-provider cpu"
            )
        return ["CPUExecutionProvider"]
    raise BackendError(f"unknown reference provider {choice!r}; use auto, cpu or cuda")


@dataclass
class Session:
    """A runner: `run(names, feed) -> dict`. `provider` is the execution provider that really loaded."""

    sess: ort.InferenceSession
    provider: str
    # the user's model where layerdiff built this one from it: a failure to run is then checked on it
    derived_from: bytes | None = None
    what: str = "model"

    def run(self, names: list[str], feed: dict[str, np.ndarray], cancel: threading.Event | None = None
            ) -> dict[str, np.ndarray]:
        if not names:  # ONNX Runtime reads an empty list as "every output"
            return {}
        options = None
        if cancel is not None:
            if cancel.is_set():
                raise Cancelled("cancelled")
            options = ort.RunOptions()
            watcher = _Watch(cancel, options)
        try:
            values = self.sess.run(names, feed, options)
        except _ORT_ERRORS as err:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled") from err
            if self.derived_from is not None:
                self._blame(feed, err)
            raise BackendError(f"ONNX Runtime failed to run the model: {first_line(err)}") from err
        finally:
            if cancel is not None:
                watcher.stop()
        return dict(zip(names, values, strict=True))

    def _blame(self, feed: dict[str, np.ndarray], err: Exception) -> None:
        """A graph layerdiff built failed to run: the user's model on the same feed says whose fault it is
        (its own error is bad input, exit 2); where it runs, the fault is layerdiff's (exit 3)."""
        plain = make_session(self.derived_from, [self.provider], "model", level="disabled")
        names = set(plain.input_names)
        try:
            plain.sess.run(None, {k: v for k, v in feed.items() if k in names})
        except _ORT_ERRORS as own:
            raise BackendError(f"ONNX Runtime failed to run the model: {first_line(own)}") from err
        raise RuntimeError(f"ONNX Runtime failed to run the {self.what} layerdiff built from the model, which itself "
                           f"runs on this input: {first_line(err)}") from err

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.sess.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.sess.get_outputs()]

    def output_types(self) -> dict[str, str]:
        """{output: ONNX Runtime's type string, e.g. 'tensor(uint8)'}."""
        return {o.name: o.type for o in self.sess.get_outputs()}


class _Watch:
    """Sets `terminate` on a run's options when `cancel` is set, so a long run stops early."""

    def __init__(self, cancel: threading.Event, options: ort.RunOptions):
        self._done = threading.Event()

        def watch() -> None:
            while not self._done.wait(0.05):
                if cancel.is_set():
                    options.terminate = True
                    return

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()


def cpu_lacks_vnni() -> bool:
    """Whether this is an x86 CPU known to have no VNNI instructions (AVX512-VNNI, AVX-VNNI, AMX): there
    ONNX Runtime's u8s8 integer kernels add pairs of products in 16 bits, which saturate when both the
    activation and a full-range INT8 weight are large. False where it cannot be told."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return flags is not None and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def session_options(level: str = "all", low_memory: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors come back as exceptions, said in one line
    so.graph_optimization_level = LEVELS[level]
    if INTRA_OP_THREADS.get():
        so.intra_op_num_threads = INTRA_OP_THREADS.get()
    if low_memory:
        # a session whose outputs are many tensors: no arena, so memory goes back as results are dropped
        so.enable_cpu_mem_arena = False
    return so


def make_session(model: bytes | str, providers: list | None = None, what: str = "model",
                 low_memory: bool = False, level: str = "all", derived_from: bytes | None = None) -> Session:
    """An ONNX Runtime session of `model`. A model layerdiff rewrote (`derived_from` the user's model)
    that does not load while the user's model does is layerdiff's fault: a RuntimeError (exit 3), not
    bad input."""
    so = session_options(level, low_memory)
    try:
        sess = ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    except _ORT_ERRORS as err:
        msg = first_line(err)
        if derived_from is not None:
            make_session(derived_from, providers, "model", level=level)  # the user's model's own error, if any
            raise RuntimeError(f"ONNX Runtime cannot load the {what} layerdiff built from the model: {msg}") from err
        if "IR version" in msg:
            raise ModelError(f"ONNX Runtime cannot read the {what}: {msg}") from err
        raise BackendError(f"ONNX Runtime cannot load the {what}: {msg}") from err
    return Session(sess, sess.get_providers()[0], derived_from, what)


def optimized_model(model: bytes, providers: list | None = None, level: str = "all", what: str = "candidate",
                    derived_from: bytes | None = None) -> bytes:
    """The graph ONNX Runtime really runs for `model` at optimization `level`: its kernels after every
    fusion and layout change, as ONNX Runtime itself writes it (`optimized_model_filepath`). Valid on
    this machine only (it may hold hardware-specific layouts)."""
    with tempfile.TemporaryDirectory(prefix="layerdiff-ort-") as tmp:
        so = session_options(level)
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        try:
            ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
        except _ORT_ERRORS as err:
            if derived_from is not None:  # a model layerdiff built: the user's own error first, if any
                make_session(derived_from, providers, "model", level=level)
                raise RuntimeError(f"ONNX Runtime cannot load the {what} layerdiff built from the model: "
                                   f"{first_line(err)}") from err
            raise BackendError(f"ONNX Runtime cannot load the {what}: {first_line(err)}") from err
        return Path(so.optimized_model_filepath).read_bytes()


class OrtSource:
    """A CandidateSource over one ONNX Runtime session: `infer(feed)` returns {wanted name: value}."""

    def __init__(self, blob: bytes, outputs: dict[str, str] | None, providers: list | None, level: str,
                 what: str, expect_provider: str | None = None, cancel: threading.Event | None = None,
                 low_memory: bool = False, derived_from: bytes | None = None):
        self._blob, self._outputs, self._providers, self._level = blob, outputs, providers, level
        self._what, self._expect, self._cancel, self._low_memory = what, expect_provider, cancel, low_memory
        self._derived_from = derived_from
        self._session: Session | None = None
        self.provider = ""

    def __enter__(self) -> OrtSource:
        sess = make_session(self._blob, self._providers, self._what, low_memory=self._low_memory, level=self._level,
                            derived_from=self._derived_from)
        self._cast = {i.name: INPUT_TYPES[i.type] for i in sess.sess.get_inputs() if i.type in INPUT_TYPES}
        if self._expect and sess.provider != self._expect:
            raise BackendError(f"ONNX Runtime fell back from {self._expect} to {sess.provider} for the "
                               "candidate; the report would not describe the GPU deployment, so it stops here")
        self._session, self.provider = sess, sess.provider
        if self._outputs is None:
            self._outputs = {o: o for o in sess.output_names}
        self._blob = self._derived_from = b""  # the session holds the model now
        return self

    def __exit__(self, *exc: object) -> None:
        self._session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise BackendError("internal: infer() outside `with source:`")
        feed = cast_feed(feed, self._cast)
        values = self._session.run([n for n in self._outputs if n not in feed], feed, self._cancel)
        values.update({n: feed[n] for n in self._outputs if n in feed})  # a graph input asked for: as fed
        return {self._outputs[name]: value for name, value in values.items()}
