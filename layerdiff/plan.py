"""A precision plan: which precision each ONNX node of the model is meant to run in (the candidate's
intent). Backends realise a plan; what really ran is read back from the candidate afterwards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class PrecisionPlan:
    default: str
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for p in (self.default, *self.overrides.values()):
            if p not in PRECISIONS:
                raise ValueError(f"unknown precision {p!r}; known: {', '.join(PRECISIONS)}")
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def precision_of(self, node: str) -> str:
        return self.overrides.get(node, self.default)

    @property
    def pinned(self) -> frozenset[str]:
        """Nodes kept in FP32 against the default."""
        return frozenset(n for n, p in self.overrides.items() if p == "fp32" and self.default != "fp32")

    @classmethod
    def uniform(cls, precision: str, pin_fp32: tuple[str, ...] | frozenset[str] = ()) -> PrecisionPlan:
        return cls(precision, {n: "fp32" for n in pin_fp32})
