"""Fused groups: the ONNX nodes TensorRT ran as one engine layer, from its layer information. Against a
TensorRT candidate, layers are compared group by group, at the group's boundary tensors (the tensors
that exist both in the ONNX graph and in the engine)."""

from __future__ import annotations

from layerdiff.engine_info import EngineInfo, EngineLayer
from layerdiff.graph import LoadedModel, Unit


def fused_units(model: LoadedModel, info: EngineInfo) -> tuple[list[Unit], dict[str, EngineLayer]]:
    """Units covering every layer of `model` in topological order: one per engine layer that has ONNX
    nodes (a node named by several engine layers belongs to the first), and one per remaining ONNX node
    (folded constants, shape computations, nodes TensorRT removed). Also {unit's first layer: engine layer}."""
    by_name = {layer.name: layer for layer in model.layers}
    claimed: dict[str, EngineLayer] = {}
    units: list[Unit] = []
    engine_of: dict[str, EngineLayer] = {}
    for el in info.layers:
        if el.is_reformat:
            continue
        nodes = [by_name[n] for n in el.onnx_nodes if n in by_name and n not in claimed]
        if not nodes:
            continue
        unit = tuple(sorted(nodes, key=lambda lay: lay.index))
        for lay in unit:
            claimed[lay.name] = el
        units.append(unit)
        engine_of[unit[0].name] = el
    units += [(lay,) for lay in model.layers if lay.name not in claimed]
    units.sort(key=lambda unit: unit[0].index)
    return units, engine_of


def boundary_tensors(model: LoadedModel, info: EngineInfo) -> set[str]:
    """Tensors that exist both in the ONNX graph and as engine tensors (or bindings)."""
    onnx_tensors = {t for layer in model.layers for t in layer.outputs} | {i.name for i in model.inputs}
    engine = {t.name for el in info.layers for t in el.inputs + el.outputs} | set(info.bindings)
    return onnx_tensors & engine
