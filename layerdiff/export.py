"""A recipe in the forms build tools take (`layerdiff export --format ...`):

- `trtexec`: `--precisionConstraints=obey --layerPrecisions=... --layerOutputTypes=...` (TensorRT 10 and
  earlier: TensorRT 11 removed these flags and ILayer::setPrecision);
- `polygraphy`: `polygraphy convert ... --layer-precisions NODE:float32 ... --precision-constraints obey`;
- `modelopt`: ModelOpt's ONNX INT8 quantizer with `--nodes_to_exclude` (anchored, escaped patterns) and
  `--high_precision_dtype fp32` (without it ModelOpt converts the whole model, excluded nodes too, to
  FP16); ModelOpt places Q/DQ by its own rules, so its model is another candidate to compare;
- `ort`: JSON for onnxruntime.quantization (`nodes_to_exclude` and the extra options layerdiff used), or
  for an FP16 recipe, `node_block_list` of onnxruntime's float16 converter;
- `ort-overrides`: the recipe's calibration as onnxruntime.quantization's `TensorQuantOverrides` (scale and
  zero point of every calibrated activation, in the JSON file shape that onnxruntime's own
  `static_quantize_runner --tensor_quant_overrides` reads): with it and `ort`'s `nodes_to_exclude`,
  `quantize_static` rebuilds the searched candidate whatever data its calibration reader gives;
- `onnx` (not here: `layerdiff.cli` builds it): the model with the recipe in the graph itself, Q/DQ or
  Casts in place, the only form TensorRT 11's strongly typed networks take.

TensorRT names a layer parsed from ONNX after its node, so node names are layer names; fused layers
take new names, which `--precisionConstraints=obey` still honours per original layer at build time.
"""

from __future__ import annotations

import json
import math
import re
import shlex

from layerdiff.errors import BadInput
from layerdiff.recipe import Recipe

FORMATS = ("trtexec", "polygraphy", "modelopt", "ort", "ort-overrides", "onnx")
_TRT_FLAG = {"int8": "--int8", "fp16": "--fp16", "bf16": "--bf16"}
_POLY_FLAG = {"int8": "--int8", "fp16": "--fp16", "bf16": "--bf16"}


def _check_names(nodes: tuple[str, ...], fmt: str, separators: str) -> None:
    bad = [n for n in nodes if any(c in n for c in separators)]
    if bad:
        raise BadInput(f"node '{bad[0]}' has a character ({separators!r}) that {fmt}'s layer list cannot carry: "
                       "use --format onnx, which puts the recipe in the model itself")


def _generated(recipe: Recipe) -> dict[str, dict[str, str]]:
    """{node: {"name", "output"}} of the recipe's nodes whose names layerdiff gave (recipe names_in_model)."""
    names = recipe.data.get("names_in_model")
    if not isinstance(names, dict):
        return {}
    return {n: v for n, v in names.items() if n in recipe.nodes and isinstance(v, dict)
            and isinstance(v.get("name"), str) and isinstance(v.get("output"), str)}


def trt_layer_names(recipe: Recipe, fmt: str) -> tuple[tuple[str, ...], list[str]]:
    """The recipe's nodes as TensorRT's ONNX parser names their layers, and comment lines for the ones
    that differ from layerdiff's names. The parser calls a node's layer by the node's name, and an
    unnamed node's "node_of_" + its first output (onnx-tensorrt getNodeName); a name two nodes share is
    made unique by a counter in parse order, which cannot be told from the model: BadInput."""
    generated = _generated(recipe)
    out, notes = [], []
    for node in recipe.nodes:
        g = generated.get(node)
        if g is None:
            out.append(node)
        elif g["name"] == "" and g["output"]:
            out.append("node_of_" + g["output"])
            notes.append(f"{out[-1]}: the layer TensorRT's ONNX parser makes of the unnamed node layerdiff "
                         f"calls {node}")
        else:
            raise BadInput(f"node {node} shares its name '{g['name']}' with another node of the model, and TensorRT "
                           f"numbers such layers in parse order, so {fmt} cannot name it: give the model's nodes "
                           "unique names, or use --format onnx, which puts the recipe in the model itself")
    return tuple(out), notes


def _model_names(recipe: Recipe, tool: str) -> tuple[str, ...]:
    """The recipe's nodes by their names in the model, for a tool that excludes nodes by name; a node
    whose name layerdiff gave cannot be named to it: BadInput."""
    generated = _generated(recipe)
    bad = next((n for n in recipe.nodes if n in generated), None)
    if bad is not None:
        g = generated[bad]
        why = "has no name" if g["name"] == "" else f"shares its name '{g['name']}' with another node"
        ours = f" ({bad} is layerdiff's name for it)" if bad != g["name"] else ""
        raise BadInput(f"node {bad} {why} in the model{ours}, so {tool} cannot exclude it by name: give the model's nodes unique names, or use --format onnx, which puts the "
                       "recipe in the model itself")
    return recipe.nodes


def trtexec(recipe: Recipe) -> str:
    nodes, notes = trt_layer_names(recipe, "trtexec")
    _check_names(nodes, "trtexec", ",")
    flags = [f"--onnx={recipe.model_path}", _TRT_FLAG[recipe.precision]]
    if nodes:
        flags += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in nodes),
                  "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in nodes)]
    text = (f"layerdiff recipe: {len(nodes)} node(s) kept in FP32 for TensorRT 10 and earlier. TensorRT 11 "
            "removed --layerPrecisions, --precisionConstraints and --int8/--fp16 (its networks are strongly "
            "typed): build the model from `layerdiff export --format onnx` instead.")
    if recipe.precision == "int8":
        text += " INT8 needs a calibration cache (--calib=FILE), or build the Q/DQ model from --format onnx."
    return _comment(text, *notes) + "trtexec " + " ".join(shlex.quote(f) for f in flags) + "\n"


def _comment(*paragraphs: str) -> str:
    """Comment lines ('# ...') of at most 80 columns (a word longer than that, a node name, stays whole)."""
    import textwrap

    return "".join(f"{line}\n" for p in paragraphs
                   for line in textwrap.wrap(p, 78, initial_indent="# ", subsequent_indent="# ",
                                             break_long_words=False, break_on_hyphens=False))


def polygraphy(recipe: Recipe) -> str:
    nodes, notes = trt_layer_names(recipe, "polygraphy")
    args = ["polygraphy", "convert", recipe.model_path, _POLY_FLAG[recipe.precision]]
    if nodes:
        args += ["--precision-constraints", "obey", "--layer-precisions", *(f"{n}:float32" for n in nodes)]
    args += ["-o", "model.engine"]
    text = f"layerdiff recipe: {len(nodes)} node(s) kept in FP32 (TensorRT 10 and earlier)."
    if recipe.precision == "int8":
        text += (" INT8 calibration: add --data-loader-script or --calibration-cache, or convert the --format onnx "
                 "model.")
    return _comment(text, *notes) + " ".join(shlex.quote(a) for a in args) + "\n"


def modelopt(recipe: Recipe) -> str:
    if recipe.precision != "int8":
        raise BadInput("--format modelopt is ModelOpt's INT8 ONNX quantizer; for an FP16 recipe use --format onnx "
                       "or trtexec")
    patterns = [f"^{re.escape(n)}$" for n in _model_names(recipe, "ModelOpt")]
    args = ["python", "-m", "modelopt.onnx.quantization", f"--onnx_path={recipe.model_path}", "--quantize_mode=int8",
            "--calibration_data_path=CALIB.npz", "--high_precision_dtype", "fp32", "--output_path=model.quant.onnx"]
    if patterns:
        args += ["--nodes_to_exclude", *patterns]
    return (_comment("layerdiff recipe: ModelOpt's ONNX quantizer with the pinned nodes excluded (their names as "
                     "anchored patterns); --high_precision_dtype fp32 keeps the model in FP32 outside Q/DQ "
                     "(ModelOpt's default converts all of it, the excluded nodes too, to FP16). ModelOpt places Q/DQ "
                     "by its own rules, not the searched candidate's: check its output with layerdiff compare MODEL "
                     "--candidate model.quant.onnx")
            + " ".join(shlex.quote(a) for a in args) + "\n")


def ort(recipe: Recipe) -> str:
    if recipe.precision == "int8":
        settings = recipe.candidate.get("ort_quantize")
        if not isinstance(settings, dict):
            raise BadInput("--format ort: this recipe does not record onnxruntime.quantization settings (it was not "
                           "made with --candidate ort-int8); use --format onnx")
        body = {"api": "onnxruntime.quantization.quantize_static",
                "nodes_to_exclude": list(_model_names(recipe, "quantize_static")), **settings}
    elif recipe.precision == "fp16":
        body = {"api": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
                "node_block_list": list(_model_names(recipe, "the float16 converter"))}
    else:
        raise BadInput(f"--format ort: ONNX Runtime has no {recipe.precision} conversion; use --format onnx")
    return json.dumps(body, indent=1) + "\n"


def ort_quantize_settings(op_types: set[str], nodes: frozenset[str] | None = None) -> dict:
    """quantize_static's arguments for layerdiff's placement (Q/DQ on the inputs of TensorRT's quantized
    op types, never on outputs), given the op types of the model; `nodes`: the nodes the `trt` placement
    quantizes (None: every node of those op types)."""
    from layerdiff.backends.int8 import TRT_QDQ_OPS

    return {"quant_format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
            "op_types_to_quantize": list(TRT_QDQ_OPS),
            **({"nodes_to_quantize": sorted(nodes)} if nodes is not None else {}),
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                              "QDQKeepRemovableActivations": True,
                              "OpTypesToExcludeOutputQuantization": sorted(op_types)}}


def ort_overrides(recipe: Recipe) -> str:
    """`TensorQuantOverrides` {tensor: [{"scale", "zero_point"}]}, scales computed by onnxruntime's own
    `compute_scale_zp` from the recipe's ranges as layerdiff's quantizer computes them (symmetric INT8)."""
    import numpy as np
    from onnxruntime.quantization.quant_utils import (
        TensorProto,
        compute_scale_zp,
        get_qmin_qmax_for_qType,
    )

    calibration = recipe.candidate.get("calibration") if recipe.precision == "int8" else None
    ranges = calibration.get("ranges") if isinstance(calibration, dict) else None
    tensors = ranges.get("tensors") if isinstance(ranges, dict) else None
    if not isinstance(tensors, dict) or not tensors:
        raise BadInput("--format ort-overrides: this recipe carries no INT8 calibration ranges (made with --candidate "
                       "ort-int8 by this layerdiff?); use --format ort and calibrate, or --format onnx")
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    out = {}
    for name, pair in tensors.items():
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair) and pair[0] <= pair[1]):
            raise BadInput(f"--format ort-overrides: the recipe's range of '{name}' is not [lowest, highest]")
        zero, scale = compute_scale_zp(np.float32(pair[0]), np.float32(pair[1]), qmin, qmax, symmetric=True)
        out[name] = [{"scale": float(scale), "zero_point": int(zero)}]
    return json.dumps(out, indent=1) + "\n"


TEXT = {"trtexec": trtexec, "polygraphy": polygraphy, "modelopt": modelopt, "ort": ort,
        "ort-overrides": ort_overrides}
