"""Candidates whose values were computed elsewhere: the outputs a GPU machine saved with
`polygraphy run ... --save-outputs` (read with Polygraphy's own loader, arrays only), optionally with
the TensorRT layer information of that engine (`trtexec --exportLayerInfo`), which groups the ONNX nodes
TensorRT fused into one engine layer and gives each its realised precision.

A source answers only for the inputs the results were computed on: `infer(feed)` finds the iteration
whose saved inputs equal `feed`, and refuses any other feed.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import threading
from pathlib import Path

import numpy as np

from layerdiff.backends.base import Candidate
from layerdiff.backends.engine import EngineView
from layerdiff.errors import BackendError, BadInput
from layerdiff.graph import LoadedModel
from layerdiff.inputs import Samples
from layerdiff.jsonread import ForeignType, JsonLimit, only_polygraphy_types, parse_json


def feed_key(feed: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(feed):
        arr = np.ascontiguousarray(feed[name])
        h.update(name.encode() + str(arr.shape).encode() + arr.dtype.str.encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# The Polygraphy types a results file holds (FormattedArray: TensorRT outputs in a vectorized format,
# refused below as not an array); any other is refused before Polygraphy decodes the file (some run
# code: layerdiff.jsonread, only_polygraphy_types).
_RESULT_TYPES = frozenset({"RunResults", "IterationResult", "LazyArray", "LazyNumpyArray", "ndarray",
                           "FormattedArray"})
_SAVE_AGAIN = "save them again with polygraphy run --save-outputs"


def _check_results_file(file: str) -> None:
    """`file` is JSON within layerdiff's limits and names no Polygraphy type but those of results
    (before Polygraphy decodes it). No size limit: the file holds the user's tensors."""
    try:
        parse_json(Path(file).read_bytes().decode("utf-8"), hook=only_polygraphy_types(_RESULT_TYPES), limit=math.inf)
    except ForeignType as err:
        raise BadInput(f"{file} holds a serialized {_short(err.args[0])} object, not only arrays: refused, because "
                       f"results files are data, never code; {_SAVE_AGAIN}") from None
    except JsonLimit as err:  # too deep: Python's own words too, as before
        why = f"{err}: {str(err.__cause__).splitlines()[0]}" if isinstance(err.__cause__, RecursionError) else err
        raise BadInput(f"{file} is not a Polygraphy --save-outputs results file ({why}); {_SAVE_AGAIN}") from None
    except (OSError, ValueError) as err:  # ValueError: not JSON, not UTF-8
        raise _unreadable(file, err) from err


def _unreadable(file: str | Path, err: BaseException) -> BadInput:
    """The one-line BadInput for a file that JSON or Polygraphy's decoder could not read."""
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else type(err).__name__
    if isinstance(err, ValueError) and "pickle" in first:  # numpy, refusing an object array or a pickle
        return BadInput(f"{file} holds pickled Python objects, not only arrays: refused, because results files are "
                        f"data, never code; {_SAVE_AGAIN}")
    detail = f"an object lacks {first}" if isinstance(err, KeyError) else first
    return BadInput(f"{file} is not a Polygraphy --save-outputs results file ({detail}); {_SAVE_AGAIN}")


def _what(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    for kind, name in ((dict, "a JSON object"), (list, "a JSON array"), (str, "a string"), (bool, "a boolean"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else f"a {type(value).__name__}"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _arrays(it: object, runner: str, path: Path) -> dict[str, np.ndarray]:
    """The outputs of one decoded iteration, if it is an IterationResult of numeric arrays."""
    from polygraphy.comparator.struct import IterationResult

    if not isinstance(it, IterationResult):
        raise BadInput(f"{path}: an iteration of runner {_short(runner)} is {_what(it)}, not a Polygraphy "
                       f"IterationResult; {_SAVE_AGAIN}")
    arrays = dict(it.items())
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise BadInput(f"{path}: output {_short(name)} of runner {_short(runner)} is {_what(arr)}, not an array "
                           f"of numbers; {_SAVE_AGAIN}")
    return arrays


def load_polygraphy_results(path: str | Path, model_outputs: tuple[str, ...], samples: int
                            ) -> tuple[list[dict[str, np.ndarray]], str]:
    """(iterations, runner) of `polygraphy run --save-outputs` results (a JSON file, or a directory of
    per-iteration files), read with Polygraphy's own loader. With several runners: the TensorRT one
    (its name starts with 'trt'). Anything but runner names and numeric arrays is a BadInput."""
    from polygraphy.comparator import RunResults
    from polygraphy.logger import G_LOGGER

    path = Path(path)
    if not path.exists():
        raise BadInput(f"Polygraphy results not found: {path}")
    # the files Polygraphy reads: a directory's *.json, as its list_iteration_files lists them
    files = sorted(glob.glob(os.path.join(glob.escape(str(path)), "*.json"))) if path.is_dir() else [str(path)]
    for file in files:
        _check_results_file(file)
    runs: dict[str, list[dict[str, np.ndarray]]] = {}
    try:  # Polygraphy's messages are multi-line (with the whole decoded object): the first line goes in ours
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
            for one in RunResults.load_streaming(str(path)):
                for runner, iters in one.items():
                    if not isinstance(runner, str):
                        raise BadInput(f"{path}: a runner name is {_what(runner)}, not a string; {_SAVE_AGAIN}")
                    runs.setdefault(runner, []).extend(_arrays(it, runner, path) for it in iters)
    except BadInput:
        raise
    except Exception as err:  # third-party code decoding a user's file: any failure means it is unreadable
        raise _unreadable(path, err) from err
    if not runs:
        raise BadInput(f"{path} holds no runner results; give the results polygraphy run --save-outputs wrote")
    runner = next((r for r in runs if r.startswith("trt")), next(iter(runs)))
    iterations = runs[runner]
    names = set().union(*(it.keys() for it in iterations)) if iterations else set()
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
    return iterations, runner


class ImportedSource:
    def __init__(self, by_feed: dict[str, dict[str, np.ndarray]], names: list[str] | None, provider: str):
        self.by_feed, self.names, self.provider = by_feed, names, provider

    def __enter__(self) -> ImportedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.by_feed.get(feed_key(feed))
        if values is None:
            raise BadInput("the imported results were not computed on this input: give the --save-inputs file "
                           "of the same polygraphy run as --inputs")
        names = self.names if self.names is not None else list(values)
        return {n: values[n] for n in names if n in values}


class ImportedDeployment(EngineView):
    mode = "imported"
    missing = "fused inside an engine layer, or not in the saved results (not marked as an output)"

    def __init__(self, runner: ImportedRunner):
        super().__init__(runner.model, runner.tensors, runner.info)
        self.runner = runner

    def matches_plain(self) -> bool | None:
        return None

    def open(self, tensors, cancel: threading.Event | None = None) -> ImportedSource:
        return ImportedSource(self.runner.by_feed, list(tensors), self.runner.provider)


class ImportedRunner:
    def __init__(self, model: LoadedModel, iterations, samples: Samples, provider: str, info=None):
        self.model, self.provider, self.info = model, provider, info
        self.by_feed = {feed_key(feed): it for feed, it in zip(samples.feeds, iterations, strict=True)}
        self.tensors = set().union(*(it.keys() for it in iterations)) if iterations else set()
        self.outputs = [o for o in model.outputs if o in self.tensors]

    def open(self, cancel: threading.Event | None = None) -> ImportedSource:
        return ImportedSource(self.by_feed, self.outputs, self.provider)

    def deployment(self) -> ImportedDeployment:
        return ImportedDeployment(self)


class ImportedBackend:
    name = "imported"

    def __init__(self, model: LoadedModel, results: str | Path, samples: Samples, engine_info: str | Path | None):
        self.model, self.results, self.samples, self.engine_info = model, results, samples, engine_info

    def realise(self, plan=None) -> Candidate:
        if plan is not None:
            raise BackendError("imported results are compared as they are: they cannot realise a precision plan")
        if self.samples.random:
            raise BadInput("importing Polygraphy results needs the inputs of that run: pass its --save-inputs "
                           "file with --inputs")
        iterations, runner_name = load_polygraphy_results(self.results, self.model.outputs, len(self.samples))
        info = None
        details: dict = {"path": str(self.results), "runner": runner_name}
        if self.engine_info is not None:
            from layerdiff.engine_info import parse_engine_info
            from layerdiff.groups import boundary_tensors

            info = parse_engine_info(self.engine_info, self.model)
            tensors = set().union(*(it.keys() for it in iterations)) if iterations else set()
            boundary = boundary_tensors(self.model, info)
            details["engine_info"] = {"path": info.path, "kind": info.kind, "engine_layers": len(info.layers),
                                      "boundary_tensors": len(boundary),
                                      "boundary_tensors_captured": len(boundary & tensors)}
        provider = f"imported from {self.results} (runner {runner_name})"
        runner = ImportedRunner(self.model, iterations, self.samples, provider, info)
        return Candidate(of=self.model.key, spec=f"polygraphy:{self.results}", kind="polygraphy-results",
                         backend=self.name,
                         runtime="TensorRT (results imported; not run here)", plan=None, model=None, executed=None,
                         runner=runner, details=details)
