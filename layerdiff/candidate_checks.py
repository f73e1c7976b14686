"""What a comparison says about the candidate beside its rows: whether reading tensors changed what ran
(exposed vs plain outputs), and warnings about a candidate ONNX file (inputs in another type, integer
operators that cannot pair, FP16 nodes the CPU ran in FP32)."""

from __future__ import annotations

import numpy as np

from layerdiff.backends.base import Candidate
from layerdiff.graph import LoadedModel

# integer operators that replace a float node and its quantization (onnxruntime's QOperator format and
# dynamic quantization): nothing in the model has their op type, so they cannot be paired
_QOPERATOR = frozenset({"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
                        "QLinearAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
                        "QGemm", "QAttention", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                        "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})


def exposed_vs_plain(kept: list[dict[str, np.ndarray]], plain: tuple[dict[str, np.ndarray], ...],
                      outputs: dict[str, str]) -> float | None:
    """Largest difference between the candidate's graph outputs read during the capture and the plain
    run's: zero when reading tensors did not change what ran. None when there was nothing to compare."""
    worst = None
    for values, deployed in zip(kept, plain, strict=False):
        for held in dict.fromkeys(outputs.values()):
            if held in values and held in deployed and values[held].shape == deployed[held].shape and values[held].size:
                diff = np.abs(values[held].astype(np.float64) - deployed[held].astype(np.float64))
                diff = diff[np.isfinite(diff)]
                worst = max(worst or 0.0, float(diff.max()) if diff.size else 0.0)
    return worst


def candidate_warnings(model: LoadedModel, candidate: Candidate, pairing, rows) -> tuple[str, ...]:
    """For a candidate ONNX file: inputs it takes in another float type (the samples are cast to it), and
    FP16 nodes that ONNX Runtime's CPU provider computes in FP32 (it has no FP16 kernel for them): the
    report is true to what ran here, but not to an FP16 deployment. For a candidate layerdiff made: that
    it computes nothing below FP32, where so."""
    if candidate.kind in ("ort-int8", "ort-fp16"):
        return _nothing_reduced(model, candidate, rows)
    if candidate.kind != "onnx" or candidate.executed is None:
        return ()
    from onnx import TensorProto
    from onnx.helper import tensor_dtype_to_np_dtype

    from layerdiff.graph import proto_tensor_types

    warnings = []
    wants = {i.name: i.type.tensor_type.elem_type for i in candidate.executed.graph.input}
    for spec in model.inputs:
        want = wants.get(spec.name)
        if want and want != spec.elem_type:
            warnings.append(f"the candidate takes input '{spec.name}' as {tensor_dtype_to_np_dtype(want)}: the "
                            f"samples ({spec.dtype}) are cast to it, and that rounding is in every row's error")
    qop = sorted({n.op_type for n in candidate.executed.graph.node if n.op_type in _QOPERATOR})
    if qop:
        paired = sum(1 for lay in model.layers if lay.name in pairing.nodes)
        warnings.append(f"the candidate computes with integer operators that replace the model's nodes "
                        f"({', '.join(qop)}): {paired} of {len(model.layers)} layers could be paired; for a row per "
                        "layer give a QDQ model (quant_format=QuantFormat.QDQ)")
    types = proto_tensor_types(candidate.executed)
    fp16 = {lay.name for row in rows if row.kind == "layer" and row.precision == "fp32" for lay in row.layers
            if any(types.get(pairing.candidate(t) or "") == TensorProto.FLOAT16 for t in lay.outputs)}
    if fp16:
        warnings.append(f"{len(fp16)} FP16 layer(s) of this candidate ran in FP32 on ONNX Runtime's CPU provider (no "
                        "FP16 kernel): their outputs are not rounded to FP16 in these numbers (their FP16 weights are); "
                        "--candidate ort-fp16 emulates the rounding")
    return tuple(warnings)


def _nothing_reduced(model: LoadedModel, candidate: Candidate, rows) -> tuple[str, ...]:
    """A warning where no row of the candidate ran below FP32 (a model whose ops all sit inside If, Loop
    or Scan subgraphs, which ONNX Runtime's quantizer does not enter)."""
    if any(row.precision not in ("fp32", "unknown") for row in rows if row.kind in ("layer", "conversion")):
        return ()
    nested = sorted({lay.op for lay in model.layers if lay.op in ("If", "Loop", "Scan")})
    why = (f": ONNX Runtime's quantizer does not enter the {'/'.join(nested)} subgraphs that hold this model's "
           "computation" if nested and candidate.kind == "ort-int8" else "")
    return (f"{candidate.spec} computes nothing below FP32 on this model{why}; every figure here is FP32 "
            "against FP32",)
