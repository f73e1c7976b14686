"""A precision plan: which precision each ONNX node of the model is meant to run in (the candidate's
intent). Backends realise a plan; what really ran is read back from the candidate afterwards.

A plan is a value: hashable, and canonical (an override equal to the default is no override, so a plan
that spells out the default equals one that does not). Its JSON form is `to_dict()` / `from_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from layerdiff.errors import PlanError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _check(precision: Any, where: str) -> str:
    if precision not in PRECISIONS:
        raise PlanError(f"unknown precision {precision!r} {where}; known: {', '.join(PRECISIONS)}")
    return precision


class PrecisionPlan:
    """`PrecisionPlan("int8", {"conv7": "fp32"})`: every node int8 (where the backend can), conv7 FP32."""

    __slots__ = ("_default", "_items", "_map")

    def __init__(self, default: str = "fp32", overrides: Mapping[str, str] | None = None):
        self._default = _check(default, "as the plan's default")
        items = {}
        for node, precision in (overrides or {}).items():
            if not isinstance(node, str) or not node:
                raise PlanError(f"a plan override names {node!r}, which is not a node name")
            if _check(precision, f"for node '{node}'") != default:
                items[node] = precision
        self._items = tuple(sorted(items.items()))
        self._map = MappingProxyType(dict(self._items))  # read-only: precision_of is on hot paths

    @property
    def default(self) -> str:
        return self._default

    @property
    def overrides(self) -> Mapping[str, str]:
        return self._map

    def precision_of(self, node: str) -> str:
        return self._map.get(node, self._default)

    @property
    def pinned(self) -> frozenset[str]:
        """Nodes kept in FP32 against a reduced-precision default."""
        if self._default == "fp32":
            return frozenset()
        return frozenset(n for n, p in self._items if p == "fp32")

    @property
    def precisions(self) -> frozenset[str]:
        """Every precision the plan asks for."""
        return frozenset({self._default, *(p for _, p in self._items)})

    def with_pins(self, nodes: Iterable[str]) -> PrecisionPlan:
        """This plan with `nodes` also kept in FP32."""
        return PrecisionPlan(self._default, {**dict(self._items), **{n: "fp32" for n in nodes}})

    @classmethod
    def uniform(cls, precision: str, pin_fp32: Iterable[str] = ()) -> PrecisionPlan:
        return cls(precision, {n: "fp32" for n in pin_fp32})

    def check(self, nodes: Iterable[str], producers: Mapping[str, str] | None = None) -> None:
        """Raise PlanError naming the overridden nodes that are not among `nodes` (a model's node names);
        `producers` ({tensor: the node writing it}) turns a tensor's name into a hint."""
        known = set(nodes)
        missing = [n for n, _ in self._items if n not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            tensor = next((n for n in missing if producers and n in producers), None)
            hint = (f"'{tensor}' is a tensor, written by node '{producers[tensor]}': pin the node"
                    if tensor is not None else "node names are those in the report's 'name' field")
            raise PlanError(f"the plan names {len(missing)} node(s) the model does not have: {shown}; {hint}")

    def to_dict(self) -> dict[str, Any]:
        return {"default": self._default, "overrides": dict(self._items)}

    @classmethod
    def from_dict(cls, data: Any) -> PrecisionPlan:
        if not isinstance(data, Mapping) or not isinstance(data.get("overrides", {}), Mapping):
            raise PlanError('a precision plan is {"default": PRECISION, "overrides": {NODE: PRECISION}}; '
                            f"got {type(data).__name__}")
        return cls(data.get("default", "fp32"), data.get("overrides", {}))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrecisionPlan):
            return NotImplemented
        return (self._default, self._items) == (other._default, other._items)

    def __hash__(self) -> int:
        return hash((self._default, self._items))

    def __repr__(self) -> str:
        return f"PrecisionPlan({self._default!r}, {dict(self._items)!r})"
