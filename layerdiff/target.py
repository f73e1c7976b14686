"""What a candidate's final outputs must meet: a metric over some outputs (or slices of them), worst
sample, against a threshold. Read by `bisect`, `apply` and `compare --outputs`.

    target = Target.parse("cosine", 0.999, ["output0[:, 4:]"], model_outputs)
    value = target.score(reference_outputs, candidate_outputs)   # one sample
    target.passes(target.worst([value, ...]))

An output spec is a model output's name, optionally followed by numpy *basic* indexing (integers,
start:stop:step, `...`), parsed, never evaluated as code. A user metric (`file.py:function`) is called
with two {output name: array} dicts (reference, candidate) of one sample and returns a number; it must
be at least `--min` or at most `--max`.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerdiff.errors import BadInput
from layerdiff.metrics import diff_metrics

METRICS = ("cosine", "max-abs", "sqnr")
_HIGHER_IS_BETTER = {"cosine": True, "sqnr": True, "max-abs": False}
_INDEX_HELP = "numpy basic indexing only: integers, start:stop:step and ..., e.g. out[:, 4:]"


def _parse_index(text: str, spec: str) -> tuple:
    """'[:, 4:]' -> (slice(None), slice(4, None)); refuses anything that is not basic indexing."""
    try:
        tree = ast.parse(f"_{text}", mode="eval").body
    except SyntaxError:
        raise BadInput(f"cannot parse output spec '{spec}': {_INDEX_HELP}") from None
    if not isinstance(tree, ast.Subscript) or not isinstance(tree.value, ast.Name):
        raise BadInput(f"cannot parse output spec '{spec}': {_INDEX_HELP}")
    parts = tree.slice.elts if isinstance(tree.slice, ast.Tuple) else [tree.slice]

    def integer(node: ast.AST | None) -> int | None:
        if node is None:
            return None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = integer(node.operand)
            return None if value is None else -value
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise BadInput(f"output spec '{spec}': '{ast.unparse(node)}' is not an integer; {_INDEX_HELP}")

    index: list[Any] = []
    for part in parts:
        if isinstance(part, ast.Slice):
            step = integer(part.step)
            if step == 0:
                raise BadInput(f"output spec '{spec}': a slice step cannot be zero")
            index.append(slice(integer(part.lower), integer(part.upper), step))
        elif isinstance(part, ast.Constant) and part.value is Ellipsis:
            index.append(Ellipsis)
        else:
            index.append(integer(part))
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise BadInput(f"output spec '{spec}': at most one '...'")
    return tuple(index)


@dataclass(frozen=True)
class OutputSpec:
    """A model output, whole or a slice of it."""

    name: str
    index: tuple = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str, outputs: Sequence[str]) -> OutputSpec:
        """`text` names one of `outputs`, optionally with an index: 'output0' or 'output0[:, 4:]'. A name
        that itself ends in brackets ('attn[i]') is taken whole when the model has that output."""
        text = text.strip()
        if text in outputs:
            return cls(text, (), text)
        if text.endswith("]"):
            depth = 0
            for at in range(len(text) - 1, -1, -1):
                depth += {"]": 1, "[": -1}.get(text[at], 0)
                if depth == 0:
                    break
            name = text[:at]
            if depth == 0 and name in outputs:
                return cls(name, _parse_index(text[at:], text), text)
            if depth == 0 and name:
                raise BadInput(f"--outputs names '{name}', which is not a final output of the model; outputs "
                               f"are: {', '.join(outputs)}")
        raise BadInput(f"--outputs names '{text}', which is not a final output of the model; outputs are: "
                       f"{', '.join(outputs)}")

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise BadInput unless the index fits an output of `shape` and selects at least one element."""
        if not self.index:
            return
        dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape, (0,) * len(shape))
        try:
            picked = dummy[self.index]
        except IndexError as err:
            raise BadInput(f"output spec '{self.text}' does not fit output '{self.name}' of shape "
                           f"{tuple(shape)}: {err}") from None
        if np.size(picked) == 0:
            raise BadInput(f"output spec '{self.text}' selects no element of output '{self.name}' of shape "
                           f"{tuple(shape)}")

    def apply(self, value: np.ndarray) -> np.ndarray:
        return np.asarray(value[self.index]) if self.index else value


def load_metric_fn(spec: str) -> Callable[[dict, dict], float]:
    """'file.py:function' -> the function (imported from that file)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise BadInput(f"--metric-fn '{spec}': give FILE.py:FUNCTION, e.g. metric.py:map50")
    if not Path(path).is_file():
        raise BadInput(f"--metric-fn: file not found: {path}")
    try:
        module_spec = importlib.util.spec_from_file_location(f"layerdiff_user_metric_{abs(hash(path))}", path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # the user's code: any failure is said in one line
        raise BadInput(f"--metric-fn: importing {path} failed ({type(err).__name__}: {err})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BadInput(f"--metric-fn: {path} has no function '{name}'")
    return fn


@dataclass(frozen=True)
class Target:
    """A tolerance on the final outputs. `metric` is cosine, max-abs, sqnr, or the label of a user
    function (`fn`); `higher_is_better` says which way it passes (cosine and sqnr must reach the
    threshold, max-abs and a --max function must stay at or under it)."""

    metric: str
    threshold: float
    outputs: tuple[OutputSpec, ...] = ()  # none: every float output
    higher_is_better: bool = True
    fn: Callable[[dict, dict], Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, metric: str, threshold: float, outputs: Sequence[str], model_outputs: Sequence[str],
              fn: str | None = None, higher_is_better: bool | None = None) -> Target:
        if fn is not None:
            return cls(fn, float(threshold), (), bool(higher_is_better), load_metric_fn(fn))
        if metric not in METRICS:
            raise BadInput(f"unknown metric '{metric}'; use {', '.join(METRICS)} or --metric-fn")
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise BadInput(f"the {metric} threshold must be a finite number; got {threshold}")
        if metric == "cosine" and not -1 <= threshold <= 1:
            raise BadInput(f"a cosine threshold is between -1 and 1; got {threshold}")
        if metric == "max-abs" and threshold < 0:
            raise BadInput(f"a max-abs threshold is at least 0; got {threshold}")
        texts = [t for part in outputs for t in ([part] if part.strip() in model_outputs else _split(part))]
        specs = tuple(OutputSpec.parse(t, model_outputs) for t in texts)
        return cls(metric, threshold, specs, _HIGHER_IS_BETTER[metric])

    def check(self, reference: Mapping[str, np.ndarray]) -> None:
        """Refuse specs that do not fit the reference outputs (one sample's), and integer outputs."""
        for spec in self.outputs:
            value = reference[spec.name]
            if value.dtype.kind != "f":
                raise BadInput(f"output '{spec.name}' holds {value.dtype} values: a {self.metric} tolerance "
                               "needs a float output (or --metric-fn)")
            spec.check(value.shape)
        if self.fn is None and not self.outputs and not any(v.dtype.kind == "f" for v in reference.values()):
            raise BadInput("the model has no float output to hold to a tolerance: use --metric-fn")

    def score(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
        """One sample: the metric, worst over the target's outputs. A NaN or Inf the reference does not
        have counts as the worst value there is."""
        if self.fn is not None:
            try:
                value = self.fn(dict(reference), dict(candidate))
                value = float(value)
            except SystemExit as err:  # sys.exit() in the user's code would end layerdiff with no result
                raise BadInput(f"--metric-fn {self.metric} called sys.exit({err.code!r}); it takes (reference, "
                               "candidate) dicts of output arrays and returns a number") from None
            except Exception as err:  # the user's code
                raise BadInput(f"--metric-fn {self.metric} failed ({type(err).__name__}: {err}); it takes "
                               "(reference, candidate) dicts of output arrays and returns a number") from None
            return value if not math.isnan(value) else self.worst_value
        specs = self.outputs or tuple(OutputSpec(n, (), n) for n, v in reference.items() if v.dtype.kind == "f")
        values = []
        for spec in specs:
            ref, cand = spec.apply(reference[spec.name]), spec.apply(candidate[spec.name])
            m = diff_metrics(ref, cand)
            if m.cand_nonfinite > m.ref_nonfinite:
                return self.worst_value
            value = {"cosine": m.cosine, "max-abs": m.max_abs, "sqnr": m.sqnr_db}[self.metric]
            if self.metric == "cosine" and m.count == 1:
                # one element: its cosine is only its sign; judged by the relative error a cosine allows
                rel = abs(float(cand.reshape(-1)[0]) - float(ref.reshape(-1)[0])) / max(abs(float(ref.reshape(-1)[0])), 1e-30)
                value = 1 - rel * rel / 2
            values.append(self.worst_value if math.isnan(value) else value)
        return self.worst(values)

    @property
    def worst_value(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def worst(self, values: Sequence[float]) -> float:
        if not values:
            return self.worst_value
        return min(values) if self.higher_is_better else max(values)

    def mixed_scales(self, reference: Mapping[str, np.ndarray]) -> tuple[str, ...]:
        """Warnings for whole outputs held to a cosine that mix values of very different scales along an
        axis (a detector's boxes beside its class scores): the large ones decide the cosine alone."""
        if self.fn is not None or self.metric != "cosine" or self.outputs:
            return ()
        out = []
        for name, value in reference.items():
            if value.dtype.kind != "f" or value.ndim < 2 or value.size < 8:
                continue
            for axis in range(1, value.ndim):
                if not 2 <= value.shape[axis] <= 256 or value.size // value.shape[axis] < 8:
                    continue  # (each slice a population of values: a classifier's probabilities are not)
                other = tuple(a for a in range(value.ndim) if a != axis)
                peaks = np.max(np.abs(value), axis=other)
                big, small = float(np.max(peaks)), float(np.percentile(peaks, 10))
                if small > 0 and big / small > 100 and np.count_nonzero(peaks > big / 10) < len(peaks) / 2:
                    out.append(f"output '{name}' mixes values of very different scales along axis {axis} (largest "
                               f"{big:.3g}, smallest {small:.3g}; a detector's boxes beside its scores?): a cosine "
                               f"of the whole output is decided by the large ones; hold a slice to the tolerance "
                               f"(--outputs '{name}[...]') or give --metric-fn")
                    break
        return tuple(out)

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def describe(self) -> str:
        """'cosine >= 0.999 on output0[:, 4:]'."""
        on = ", ".join(s.text for s in self.outputs) or "every float output"
        sign = ">=" if self.higher_is_better else "<="
        return f"{self.metric} {sign} {self.threshold:g} on {on}" if self.fn is None else \
            f"{self.metric} {sign} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": "function" if self.fn is not None else self.metric, "threshold": self.threshold,
                "outputs": [s.text for s in self.outputs], "direction": "min" if self.higher_is_better else "max",
                **({"metric_fn": self.metric} if self.fn is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], model_outputs: Sequence[str]) -> Target:
        if d.get("metric") == "function":
            return cls.parse("", d["threshold"], (), model_outputs, fn=d["metric_fn"],
                             higher_is_better=d.get("direction") == "min")
        return cls.parse(d["metric"], d["threshold"], d.get("outputs", []), model_outputs)


def _split(text: str) -> list[str]:
    """'a,b[:, 1:3]' -> ['a', 'b[:, 1:3]']: commas inside brackets belong to the index."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]
