"""`FakeBackend`: a backend that realises any plan instantly and deterministically, for testing what is
built on plans (bisect, the CLI, the TUI) without quantizing, calibrating or building engines.

Every node whose plan precision is not fp32 gets a known relative error injected on each float output:
`y' = y * (1 + e * sin(997 * y))`, elementwise (so cosine, SQNR and max error all move, unlike a plain
scale): a relative error of at most e, about e / sqrt(2) in rel_rms. `e` is `errors[node]` when given, else `default_error`. The candidate is an ONNX model run by
ONNX Runtime on the CPU, so everything downstream (capture, metrics, reports) runs for real; its rows
carry the plan's precision, labelled with the kernel "fake".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from layerdiff.backends.base import Candidate, Kernel
from layerdiff.backends.ort_backend import MarkedOutputs, OrtRunner
from layerdiff.errors import PlanError
from layerdiff.graph import FINAL_KEY, LoadedModel
from layerdiff.plan import PrecisionPlan


class FakeBackend:
    name = "fake"

    def __init__(self, model: LoadedModel, errors: Mapping[str, float] | None = None, default_error: float = 1e-3):
        self.model, self.errors, self.default_error = model, dict(errors or {}), default_error
        known = {lay.name for lay in model.layers}
        unknown = sorted(n for n in self.errors if n not in known)
        if unknown:
            raise PlanError(f"FakeBackend errors name node(s) the model does not have: {', '.join(unknown[:5])}")
        bad = [f"{n}={e!r}" for n, e in [("default_error", default_error), *self.errors.items()]
               if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0)]
        if bad:
            raise PlanError(f"FakeBackend errors are finite numbers >= 0; got {', '.join(bad[:5])}")

    def error_of(self, node: str) -> float:
        return self.errors.get(node, self.default_error)

    def realise(self, plan: PrecisionPlan) -> Candidate:
        plan.check((lay.name for lay in self.model.layers), self.model.tensor_producers)
        perturbed = {lay.name: self.error_of(lay.name) for lay in self.model.layers
                     if lay.name not in self.model.weight_layers and plan.precision_of(lay.name) != "fp32"}
        executed = _inject(self.model, perturbed)
        precision = {t: plan.precision_of(lay.name) for lay in self.model.layers for t in lay.outputs}
        # ONNX Runtime's optimizations off: the plain and the exposed runs are the same computation
        runner = OrtRunner(executed, None, "disabled", "mark-outputs",
                           view=lambda r: _FakeDeployment(r, precision))
        return Candidate(of=self.model.key, spec="fake", kind="fake", backend=self.name,
                         runtime=f"onnxruntime {onnxruntime.__version__} (CPU, injected errors)", plan=plan,
                         model=executed, executed=executed, runner=runner, pinned=plan.pinned,
                         requested=dict(plan.overrides),
                         details={"injected_errors": {n: perturbed[n] for n in sorted(perturbed)}})


def _inject(model: LoadedModel, errors: dict[str, float]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model.proto)
    final: dict[str, dict[str, str]] = {}
    nodes = []
    freq = numpy_helper.from_array(np.array(997.0, np.float32), "layerdiff/fake/freq")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "layerdiff/fake/one")
    inits = [freq, one]
    for node in out.graph.node:
        nodes.append(node)
        e = errors.get(node.name)
        if e is None:
            continue
        for i, y in enumerate(node.output):
            if not y or model.tensor_types.get(y) != TensorProto.FLOAT:
                continue
            exact, tag = f"{y}::exact", f"layerdiff/fake/{node.name}/{i}"
            node.output[i] = exact
            inits.append(numpy_helper.from_array(np.array(e, np.float32), f"{tag}/e"))
            nodes += [
                helper.make_node("Mul", [exact, freq.name], [f"{tag}/a"], name=f"{tag}/a"),
                helper.make_node("Sin", [f"{tag}/a"], [f"{tag}/s"], name=f"{tag}/s"),
                helper.make_node("Mul", [f"{tag}/s", f"{tag}/e"], [f"{tag}/es"], name=f"{tag}/es"),
                helper.make_node("Add", [f"{tag}/es", one.name], [f"{tag}/g"], name=f"{tag}/g"),
                helper.make_node("Mul", [exact, f"{tag}/g"], [y], name=f"{tag}/y"),
            ]
            final.setdefault(node.name, {})[exact] = y
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    helper.set_model_props(out, {FINAL_KEY: json.dumps(final)})
    return out


class _FakeDeployment(MarkedOutputs):
    mode = "fake"

    def __init__(self, runner: OrtRunner, precision: dict[str, str]):
        super().__init__(runner)
        self.precision = precision  # {tensor: the plan's precision of the node that computes it}

    def kernel(self, tensor: str) -> Kernel | None:
        return Kernel("fake", self.precision[tensor]) if tensor in self.precision else None
