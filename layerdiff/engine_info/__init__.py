"""TensorRT engine layer information: every engine layer with its realised precision, its tensors and
the ONNX nodes it came from. Works on files alone (no TensorRT needed).

    info = parse_engine_info("layers.json", model=load_model("model.onnx"))
    for layer in info.layers: print(layer.name, layer.precision, layer.onnx_nodes)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdiff.engine_info.formats import EngineInfoError, read_layer_info
from layerdiff.engine_info.origin import (
    NodeIndex,
    metadata_nodes,
    name_nodes,
    served_layer,
)
from layerdiff.engine_info.precision import format_precision, layer_precision
from layerdiff.graph import LoadedModel

__all__ = ["EngineInfo", "EngineInfoError", "EngineLayer", "EngineTensor", "format_precision", "parse_engine_info"]


@dataclass(frozen=True)
class EngineTensor:
    name: str
    precision: str
    dims: tuple[int, ...]
    format: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "dims": list(self.dims), "format": self.format}


@dataclass(frozen=True)
class EngineLayer:
    index: int
    name: str
    type: str
    precision: str
    onnx_nodes: tuple[str, ...]
    origin: str  # "metadata" | "name" | "none"
    inputs: tuple[EngineTensor, ...]
    outputs: tuple[EngineTensor, ...]
    serves: str | None = None  # reformat/copy layers: the layer they serve
    tactic: str = ""

    @property
    def is_reformat(self) -> bool:
        if self.serves is not None or self.type in ("Reformat", "MyelinReformat"):
            return True
        return self.type == "NoOp" and not self.onnx_nodes

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "type": self.type, "precision": self.precision, "onnx_nodes": list(self.onnx_nodes),
             "origin": self.origin, "inputs": [t.to_dict() for t in self.inputs],
             "outputs": [t.to_dict() for t in self.outputs]}
        if self.serves:
            d["serves"] = self.serves
        return d


@dataclass(frozen=True)
class EngineInfo:
    path: str
    kind: str
    layers: tuple[EngineLayer, ...]
    bindings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "bindings": list(self.bindings),
                "layers": [layer.to_dict() for layer in self.layers]}


def _tensors(items: list[dict[str, Any]]) -> tuple[EngineTensor, ...]:
    """Tensor records, whose types formats.read_layer_info has checked."""
    return tuple(EngineTensor(t.get("Name", ""), format_precision(t.get("Format/Datatype", "")),
                              tuple(t.get("Dimensions", [])), t.get("Format/Datatype", "")) for t in items)


def parse_engine_info(path: str | Path, model: LoadedModel | None = None) -> EngineInfo:
    """Parse a layer-information file. With `model`, ONNX nodes are resolved against it: Metadata names
    against its node names (nodes the model lacks are an error), layer-name parts by the rule in
    engine_info/origin.py (nodes, then initializers and graph inputs via their first reader)."""
    raw = read_layer_info(path)
    index = NodeIndex(model) if model is not None else None
    layers, foreign = [], []
    named_layers, unresolved = 0, []  # layers whose names claim ONNX nodes, and the claims the model lacks
    # Torch-TensorRT engines name layers after aten ops, not ONNX nodes: no name grammar applies
    not_onnx = any("-[aten_ops." in rec["Name"] for rec in raw.layers)
    for i, rec in enumerate(raw.layers):
        name = rec["Name"]
        from_md, _ = metadata_nodes(rec.get("Metadata"))
        if from_md:
            nodes, origin = from_md, "metadata"
            if index is not None:
                foreign.extend(n for n in nodes if index.node(n) is None)
                nodes = [index.node(n) or n for n in nodes]
        else:
            nodes = [] if not_onnx else name_nodes(name, index)
            origin = "name" if nodes else "none"
            if index is not None and not not_onnx:
                claimed = name_nodes(name, None)  # what the name says, read without the model
                if claimed:
                    named_layers += 1
                    if not nodes:
                        unresolved.extend(claimed)
        layers.append(EngineLayer(
            index=i, name=name, type=rec.get("LayerType", "unknown"), precision=layer_precision(rec),
            onnx_nodes=tuple(dict.fromkeys(nodes)), origin=origin, inputs=_tensors(rec.get("Inputs", [])),
            outputs=_tensors(rec.get("Outputs", [])), serves=served_layer(name),
            tactic=rec.get("TacticName") or rec.get("TacticValue") or "",
        ))
    # names are a heuristic (TensorRT renames some layers), but when most named layers match no node of
    # the model, the engine was built from another one
    if model is not None and not foreign and unresolved and \
            sum(1 for layer in layers if layer.origin == "name") * 2 < named_layers:
        foreign = unresolved
    if model is not None and foreign:
        unique = list(dict.fromkeys(foreign))
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        raise EngineInfoError(
            f"engine info {path} names {len(unique)} ONNX node(s) that {model.path} does not have ({shown}): "
            "it was built from another model; give the ONNX model the engine was built from"
        )
    return EngineInfo(str(path), raw.kind, tuple(layers), tuple(raw.bindings))
