"""ONNX Runtime's names that every session layerdiff makes shares: the optimization levels by the
names the command takes, the numpy type each float input type is fed as, and the names its graph
transformers give the nodes and tensors they make (read by the capture, the FP16 build and the
per-layer times). Imports only ONNX Runtime and numpy, so the timing worker (`layerdiff._benchworker`)
makes its sessions the same way without loading onnx."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort

LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# a model that takes an input in another float type (an FP16 model with FP16 inputs) gets the samples
# cast to it, as a user feeding it would
INPUT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
               "tensor(double)": np.dtype(np.float64)}


def cast_feed(feed: dict, types: dict) -> dict:
    """`feed` with each float input cast to `types[name]` where that differs."""
    return {k: v.astype(types[k]) if k in types and v.dtype.kind == "f" and v.dtype != types[k] else v
            for k, v in feed.items()}


# what ONNX Runtime's graph transformers call the nodes and tensors they make for one of the model's
UPCAST_PREFIX = "InsertedPrecisionFreeCast_"  # the CPU provider's FP32 copy of an FP16 tensor (no FP16 kernel)
PRE_Q = "_pre_q"  # QDQ propagation: the new name of the output of the node a QuantizeLinear moved up to
TOKEN = re.compile(r"_token_\d+$")  # Graph::GenerateNodeName's suffix: "Conv@3_token_204" (the NHWC pass)
NCHWC_SUFFIX = "_nchwc"  # the NCHWc pass: a kernel named after the tensor it writes, "relu1_nchwc"
