"""Precisions from TensorRT's layer information (docs/trt-engine-info.md sections 4 and 5)."""

from __future__ import annotations

from typing import Any

# case-insensitive substring tests, in this order ("Float" is a substring of "BFloat16")
_FORMAT_RULES = (
    ("N/A", "unknown"), ("BFLOAT16", "bf16"), ("FP8", "fp8"), ("FP4", "fp4"), ("INT4", "int4"),
    ("UINT8", "uint8"), ("INT8", "int8"), ("FP16", "fp16"), ("FP32", "fp32"), ("INT32", "int32"),
    ("INT64", "int64"), ("BOOL", "bool"),
)
_EXACT = {"HALF": "fp16", "FLOAT": "fp32", "DOUBLE": "fp64", "E4M3": "fp8", "FP4E2M1": "fp4"}
_WEIGHT_TYPES = {"int8": "int8", "half": "fp16", "float": "fp32", "bfloat16": "bf16", "fp8": "fp8",
                 "int4": "int4", "fp4": "fp4"}
# from most to least precise; integer types are indices/shapes, not compute precisions
_FLOAT_ORDER = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "uint8", "int4", "fp4")
_REFORMATS = {"Reformat", "NoOp", "MyelinReformat"}


def format_precision(fmt: str | None) -> str:
    """`"Channel major FP16 format where channel % 8 == 0"` -> "fp16"; unknown strings -> "unknown"."""
    if not fmt:
        return "unknown"
    s = fmt.strip().upper()
    if s in _EXACT:
        return _EXACT[s]
    for token, precision in _FORMAT_RULES:
        if token in s:
            return precision
    return "unknown"


def _tactic_hint(layer: dict[str, Any]) -> str | None:
    name = str(layer.get("TacticName", "")).lower()
    if not name:
        return None
    if "i8i8" in name or "int8" in name or "_i8f16_" in name or "_i8f32_" in name or "imma" in name:
        return "int8"
    if "tf32" in name:
        return "tf32"
    if "bf16" in name:
        return "bf16"
    if "f16f16" in name or "h16816" in name or "hmma" in name or "fp16" in name or "h1688" in name:
        return "fp16"
    return None


def layer_precision(layer: dict[str, Any]) -> str:
    """What a layer computes in: its weights' type where it has weights (TF32 when an FP32 layer's tactic
    says so), else the most precise float type among its data inputs (TensorRT's Myelin constants
    excluded), else its outputs' type. Names-only layers: "unknown"."""
    if "Inputs" not in layer and "Outputs" not in layer:
        return "unknown"
    hint = _tactic_hint(layer)
    if layer.get("LayerType") in _REFORMATS or layer.get("Origin"):
        outs = [format_precision(t.get("Format/Datatype")) for t in layer.get("Outputs", [])]
        return outs[0] if outs else "unknown"
    weights = layer.get("Weights") or layer.get("weights")
    if isinstance(weights, dict) and str(weights.get("Type", "")).lower() in _WEIGHT_TYPES:
        p = _WEIGHT_TYPES[str(weights["Type"]).lower()]
        return "tf32" if p == "fp32" and hint == "tf32" else p
    ins = [format_precision(t.get("Format/Datatype")) for t in layer.get("Inputs", [])
           if not _is_constant(str(t.get("Name", "")))]
    floats = [p for p in ins if p in _FLOAT_ORDER]
    if not floats:
        floats = [p for p in (format_precision(t.get("Format/Datatype")) for t in layer.get("Outputs", []))
                  if p in _FLOAT_ORDER]
    if floats:
        p = min(floats, key=_FLOAT_ORDER.index)
        return "tf32" if p == "fp32" and hint == "tf32" else p
    known = [p for p in ins if p != "unknown"]
    return known[0] if known else (hint or "unknown")


def _is_constant(name: str) -> bool:
    return name.startswith("__mye") or "constant" in name.lower() or name.endswith(("_alpha", "_beta"))
