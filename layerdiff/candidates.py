"""Where the candidate's tensor values come from: an ONNX model run by ONNX Runtime here
(`OrtCandidate`), or the outputs a GPU machine saved with `polygraphy run ... --save-outputs`
(`ImportedCandidate`). Both answer the same two questions per sample: the values of some tensors
(exposed), and the final outputs of the model as deployed (plain)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from layerdiff.backends.ort import Session, make_session
from layerdiff.errors import BackendError, BadInput
from layerdiff.graph import expose_tensors, serialize

Run = Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (sample index, feed) -> values


class OrtCandidate:
    mode = "mark-outputs"

    def __init__(self, proto: onnx.ModelProto, providers: list | None = None):
        self.proto, self.providers = proto, providers
        self.provider = ""
        self.tensors = {o for n in proto.graph.node for o in n.output if o} | {i.name for i in proto.graph.input}
        self.graph_outputs = [o.name for o in proto.graph.output]

    def open(self, names: list[str]) -> Run:
        sess = self._session(expose_tensors(self.proto, names, {}), low_memory=True)
        return lambda si, feed: sess.run(names, feed)

    def plain(self, names: list[str]) -> Run:
        sess = self._session(serialize(self.proto))
        return lambda si, feed: sess.run(names, feed)

    def _session(self, blob: bytes, low_memory: bool = False) -> Session:
        sess = make_session(blob, self.providers, "candidate", low_memory=low_memory)
        wanted = self.providers[0][0] if self.providers and isinstance(self.providers[0], tuple) else None
        if wanted and sess.provider != wanted:
            raise BackendError(f"ONNX Runtime fell back from {wanted} to {sess.provider} for the candidate; "
                               "the report would not describe the GPU deployment, so it stops here")
        self.provider = sess.provider
        return sess


class ImportedCandidate:
    """Saved per-iteration outputs of one Polygraphy runner; iteration i belongs to input sample i."""

    mode = "imported"

    def __init__(self, iterations: list[dict[str, np.ndarray]], runner: str, path: str,
                 model_outputs: tuple[str, ...]):
        self.iterations, self.runner, self.path = iterations, runner, path
        self.provider = f"imported from {path} (runner {runner})"
        self.tensors = set().union(*(it.keys() for it in iterations)) if iterations else set()
        self.graph_outputs = [o for o in model_outputs if o in self.tensors]

    def open(self, names: list[str]) -> Run:
        return lambda si, feed: {n: self.iterations[si][n] for n in names}

    def plain(self, names: list[str]) -> Run:
        return self.open(names)


def load_polygraphy_results(path: str | Path, model_outputs: tuple[str, ...], samples: int) -> ImportedCandidate:
    """Read `polygraphy run --save-outputs` results (a JSON file, or a directory of per-iteration files)
    with Polygraphy's own loader. A file with several runners: the TensorRT one (name starting 'trt')."""
    from polygraphy.comparator import RunResults
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    path = Path(path)
    if not path.exists():
        raise BadInput(f"Polygraphy results not found: {path}")
    runs: dict[str, list[dict[str, np.ndarray]]] = {}
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL), contextlib.redirect_stdout(None):
            for one in RunResults.load_streaming(str(path)):
                for runner, iters in one.items():
                    runs.setdefault(runner, []).extend({k: np.asarray(v) for k, v in it.items()} for it in iters)
    except (PolygraphyException, ValueError, KeyError, TypeError, OSError) as err:
        raise BadInput(f"{path} is not a Polygraphy --save-outputs results file: {str(err).splitlines()[0]}") from err
    if not runs:
        raise BadInput(f"{path} holds no runner results")
    runner = next((r for r in runs if r.startswith("trt")), next(iter(runs)))
    iterations = runs[runner]
    names = set().union(*(it.keys() for it in iterations))
    if not any(o in names for o in model_outputs):
        raise BadInput(
            f"results file {path} holds none of the model's outputs {list(model_outputs)}; it holds: "
            f"{sorted(names)[:8]}{' ...' if len(names) > 8 else ''}: were they saved from another model?"
        )
    if len(iterations) != samples:
        raise BadInput(
            f"results file {path} has {len(iterations)} iteration(s) but --inputs has {samples} sample(s): give "
            "the --save-inputs file of the same polygraphy run"
        )
    return ImportedCandidate(iterations, runner, str(path), model_outputs)
