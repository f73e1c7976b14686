"""ONNX Runtime sessions. onnxruntime-gpu lists the CUDA and TensorRT providers even where their
libraries cannot load, so a provider is tried and what really loaded is recorded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from layerdiff.errors import BackendError, ModelError
from layerdiff.graph import probe_model

_LOADS: dict[str, bool] = {}


def provider_loads(provider: str) -> bool:
    """Whether an execution provider really loads here (tried once on a one-node model, quietly, then
    cached): onnxruntime-gpu lists CUDA and TensorRT even where their libraries or the GPU are missing,
    and then silently falls back to the CPU."""
    if provider not in _LOADS:
        _LOADS[provider] = False
        if provider in ort.get_available_providers():
            m = probe_model()
            ort.set_default_logger_severity(4)
            try:
                sess = ort.InferenceSession(m.SerializeToString(), providers=[provider, "CPUExecutionProvider"])
                _LOADS[provider] = sess.get_providers()[0] == provider
            except (ort.capi.onnxruntime_pybind11_state.Fail, RuntimeError):
                _LOADS[provider] = False
            finally:
                ort.set_default_logger_severity(2)
    return _LOADS[provider]


def cuda_loads() -> bool:
    return provider_loads("CUDAExecutionProvider")


def providers_for(choice: str) -> list:
    """'cpu', 'cuda' (fails if it does not load) or 'auto' (CUDA with TF32 off where it loads, else CPU)."""
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice in ("cuda", "auto"):
        if cuda_loads():
            return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
        if choice == "cuda":
            raise BackendError(
                "the CUDA execution provider does not load here (no GPU or no CUDA libraries); "
                "use --reference-provider cpu"
            )
        return ["CPUExecutionProvider"]
    raise ValueError(f"unknown provider choice {choice!r}")


@dataclass
class Session:
    """A runner: `run(names, feed) -> dict`. `provider` is the execution provider that really loaded."""

    sess: ort.InferenceSession
    provider: str

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.sess.run(names, feed)
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.RuntimeException) as err:
            raise BackendError(f"ONNX Runtime failed to run the model: {_first_line(err)}") from err
        return dict(zip(names, values, strict=True))

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.sess.get_inputs()]


def make_session(model: bytes | str, providers: list | None = None, what: str = "model",
                 low_memory: bool = False) -> Session:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if low_memory:
        # a session whose outputs are many tensors: no arena, so memory goes back as results are dropped
        so.enable_cpu_mem_arena = False
    try:
        sess = ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.NotImplemented,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as err:
        msg = _first_line(err)
        if "IR version" in msg:
            raise ModelError(f"ONNX Runtime cannot read the {what}: {msg}") from err
        raise BackendError(f"ONNX Runtime cannot load the {what}: {msg}") from err
    return Session(sess, sess.get_providers()[0])


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
