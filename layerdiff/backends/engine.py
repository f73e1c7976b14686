"""What a candidate run by an engine (TensorRT, or results it saved) lets layerdiff read: the tensors it
holds, the engine layer that computed each, and the ONNX nodes each engine layer fused (from its layer
information). Shared by the TensorRT backend and imported results."""

from __future__ import annotations

from layerdiff.backends.base import Kernel
from layerdiff.engine_info import EngineInfo
from layerdiff.graph import LoadedModel
from layerdiff.groups import fused_units


class EngineView:
    """The part of a Deployment that engine tensors and layer information answer."""

    def __init__(self, model: LoadedModel, tensors: set[str], info: EngineInfo | None):
        self.tensors = set(tensors) | {i.name for i in model.inputs}  # the feed itself
        self.engine_groups: list = []
        self.producer: dict = {}
        if info is not None:
            units, engine_of = fused_units(model, info)
            self.engine_groups = [(tuple(lay.name for lay in unit), (el.name, el.type, el.precision))
                                  for unit in units if (el := engine_of.get(unit[0].name)) is not None]
            self.producer = {t.name: el for el in info.layers if not el.is_reformat for t in el.outputs}

    def available(self, tensor: str) -> bool:
        return tensor in self.tensors

    def kernel(self, tensor: str) -> Kernel | None:
        layer = self.producer.get(tensor)
        return Kernel(layer.type, layer.precision) if layer is not None else None

    def groups(self):
        return self.engine_groups

    def view(self, tensor: str) -> str:
        return ""

    def check_missing(self, tensors, feeds) -> dict[str, str] | None:
        return None  # an engine's values are only those it was built to expose: the claim is TensorRT's
