"""Model inputs: read them from `.npz` files or a Polygraphy `--save-inputs` JSON file, check them
against the model, or make seeded random ones when the user gives none (and say so)."""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerdiff.errors import InputDataError
from layerdiff.graph import InputSpec

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Samples:
    feeds: tuple[Feed, ...]
    source: str  # a path, or "random (seed N)"
    random: bool = False
    defaulted: tuple[str, ...] = ()  # random inputs whose dynamic dimensions were set to 1, e.g. "x (batch, len)"
    names: tuple[str, ...] = ()  # each sample's name as a user knows it: its file, or "NAME.json[k]"

    def name(self, k: int) -> str:
        return self.names[k] if k < len(self.names) else f"sample {k + 1}"

    def hint(self) -> str:
        """What to say when a model fails on these samples: nothing, or that dynamic dimensions were 1."""
        if not self.defaulted:
            return ""
        return (f"; the random inputs set dynamic dimensions to 1 ({'; '.join(self.defaulted)}): give --shape "
                "NAME:DIMxDIM... for the shapes you deploy, or --inputs")

    def __len__(self) -> int:
        return len(self.feeds)

    def digest(self) -> str:
        """Tells sample sets apart: a hash of every feed's names, shapes and values."""
        h = hashlib.sha256()
        for feed in self.feeds:
            for name in sorted(feed):
                h.update(name.encode())
                h.update(str(feed[name].shape).encode())
                h.update(np.ascontiguousarray(feed[name]).tobytes())
        return h.hexdigest()[:16]


RANDOM_WARNING = (
    "no --inputs given: using seeded random inputs; layer rankings from random data can differ "
    "from real data, so pass real samples with --inputs"
)


def parse_shapes(specs: list[str] | tuple[str, ...], inputs: tuple[InputSpec, ...]) -> dict[str, tuple[int, ...]]:
    """`NAME:1x3x224x224` -> {NAME: (1, 3, 224, 224)}. Names may contain ':' (the last one splits)."""
    names = {i.name for i in inputs}
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape:
            raise InputDataError(f"cannot parse --shape '{spec}': expected NAME:DIMxDIM..., e.g. input:1x3x224x224")
        if any(d < 1 for d in shape):
            raise InputDataError(f"cannot parse --shape '{spec}': expected NAME:DIMxDIM... with every DIM at least 1, "
                                 "e.g. input:1x3x224x224")
        if name not in names:
            raise InputDataError(f"--shape names '{name}', which is not a model input; inputs are: {sorted(names)}")
        fixed = next(i.shape for i in inputs if i.name == name)
        if fixed is not None:
            shown = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in fixed)
            if len(fixed) != len(shape) or any(isinstance(d, int) and d > 0 and d != g for d, g in zip(fixed, shape, strict=False)):
                raise InputDataError(f"--shape '{spec}' disagrees with the model, whose input '{name}' is {shown} "
                                     "(? marks the dynamic dimensions --shape sets)")
        shapes[name] = shape
    return shapes


def load_samples(
    spec: str | Path | None,
    inputs: tuple[InputSpec, ...],
    shapes: dict[str, tuple[int, ...]],
    seed: int = 1,
    what: str = "--inputs",
) -> Samples:
    if spec is None:
        return random_samples(inputs, shapes, seed)
    path = Path(spec)
    if not path.exists():
        raise InputDataError(f"{what} path not found: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputDataError(f"{what} directory {path} holds no .npz files (one sample per file)")
        feeds = [_read_npz(f, what) for f in files]
        names = [f.name for f in files]
    elif path.suffix == ".json":
        feeds = _read_polygraphy_json(path, what)
        names = [f"{path.name}[{k}]" for k in range(len(feeds))]
    elif path.suffix == ".npz":
        feeds = [_read_npz(path, what)]
        names = [path.name]
    else:
        raise InputDataError(f"{what} takes an .npz file, a directory of .npz files or a Polygraphy "
                             f"--save-inputs .json file, not {path}")
    if not feeds:
        raise InputDataError(f"{what} {path} holds no samples")
    for i, feed in enumerate(feeds):
        check_feed(feed, inputs, shapes, f"{what} sample {i} ({path.name})")
    return Samples(tuple({s.name: feed[s.name] for s in inputs} for feed in feeds), str(path), names=tuple(names))


def _read_npz(path: Path, what: str) -> Feed:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputDataError(f"{what} file {path} is a single .npy array, not an .npz of named arrays; save it "
                                 "with np.savez(path, NAME=array)")
        with data:
            return {k: data[k] for k in data.files}
    except ValueError as err:
        if "Object arrays" in str(err):
            raise InputDataError(
                f"{what} file {path} holds Python objects, not numeric arrays: refused, because inputs are "
                "data, never code; save plain numpy arrays (np.savez)"
            ) from err
        raise InputDataError(f"{what} file {path} is not a readable .npz file: {err}") from err
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise InputDataError(f"{what} file {path} is not a readable .npz file ({type(err).__name__}: {err})") from err


# the Polygraphy types a --save-inputs file holds; any other is refused before Polygraphy decodes it
# (layerdiff.jsonread, only_polygraphy_types): some run code
_INPUT_TYPES = frozenset({"ndarray", "LazyNumpyArray", "LazyArray"})


def _read_polygraphy_json(path: Path, what: str) -> list[Feed]:
    from polygraphy.json import from_json
    from polygraphy.logger import G_LOGGER

    from layerdiff.jsonread import (
        ForeignType,
        JsonLimit,
        only_polygraphy_types,
        parse_json,
    )

    not_inputs = f"{what} file {path} is not a Polygraphy --save-inputs JSON file"
    try:  # no size limit: the file holds the user's samples
        text = path.read_bytes().decode("utf-8")
        parse_json(text, hook=only_polygraphy_types(_INPUT_TYPES), limit=math.inf)
    except ForeignType as err:
        raise InputDataError(f"{what} file {path} holds a serialized {str(err)[:60]!r} object, not only arrays: "
                             "refused, because inputs are data, never code; save them again with polygraphy run "
                             "--save-inputs") from None
    except JsonLimit as err:
        raise InputDataError(f"{not_inputs}: {err}") from None
    except UnicodeDecodeError as err:
        raise InputDataError(f"{not_inputs}: not UTF-8 text at byte {err.start}") from None
    except (OSError, ValueError) as err:
        raise InputDataError(f"{not_inputs}: {(str(err).splitlines() or [type(err).__name__])[0][:200]}") from err
    try:  # Polygraphy logs its decoding errors too: only ours is shown
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
            data = from_json(text)
    except Exception as err:  # third-party code decoding a user's file: any failure means it is unreadable
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if isinstance(err, ValueError) and "pickle" in first:  # numpy, refusing an object array
            raise InputDataError(f"{what} file {path} holds pickled Python objects, not only arrays: refused, because "
                                 "inputs are data, never code; save plain numpy arrays") from err
        raise InputDataError(f"{not_inputs} ({type(err).__name__}: {first})") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise InputDataError(f"{what} file {path} is not a Polygraphy --save-inputs file (expected a list of feeds)")
    for feed in data:
        for k, v in feed.items():
            if not isinstance(v, np.ndarray):
                raise InputDataError(f"{what} file {path}: input {str(k)[:60]!r} is not an array")
    return data


def check_feed(feed: Feed, inputs: tuple[InputSpec, ...], shapes: dict[str, tuple[int, ...]], where: str) -> None:
    for spec in inputs:
        if spec.name not in feed:
            raise InputDataError(
                f"{where} has no array for model input '{spec.name}'; it holds: {sorted(feed)}"
            )
        arr = feed[spec.name]
        if arr.dtype.kind == "O":
            raise InputDataError(f"{where}: input '{spec.name}' holds Python objects; give a numeric array")
        if arr.dtype != spec.dtype:
            raise InputDataError(
                f"{where}: input '{spec.name}' is {arr.dtype} but the model expects {spec.dtype}; "
                f"save it as {spec.dtype}"
            )
        want = shapes.get(spec.name) or spec.shape
        if want is None:
            continue
        if len(arr.shape) != len(want) or any(
            isinstance(w, int) and w > 0 and w != a for w, a in zip(want, arr.shape, strict=False)
        ):
            shown = "x".join(str(d) if isinstance(d, int) else "?" for d in want)
            raise InputDataError(
                f"{where}: input '{spec.name}' has shape {'x'.join(map(str, arr.shape)) or 'scalar'} "
                f"but the model expects {shown}"
            )


def random_samples(inputs: tuple[InputSpec, ...], shapes: dict[str, tuple[int, ...]], seed: int) -> Samples:
    """One seeded random sample, drawn like Polygraphy's default data loader: floats uniform in [0, 1),
    integers in {0, 1}, booleans at random. Dynamic dimensions not set by --shape are 1."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    defaulted = []
    for spec in inputs:
        if spec.name in shapes:
            shape = shapes[spec.name]
        elif spec.shape is None:
            raise InputDataError(f"input '{spec.name}' has no shape in the model (its rank is unknown): give --shape "
                                 f"{spec.name}:DIMxDIM... or --inputs")
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
            dynamic = [str(d) if isinstance(d, str) and d else f"dim {k}" for k, d in enumerate(spec.shape)
                       if not (isinstance(d, int) and d > 0)]
            if dynamic:
                defaulted.append(f"{spec.name}: {', '.join(dynamic)}")
        dtype = spec.dtype
        if dtype.kind == "f":
            feed[spec.name] = rng.random(shape, dtype=np.float64).astype(dtype)
        elif dtype.kind in "iu":
            feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise InputDataError(f"cannot make random data for input '{spec.name}' of type {dtype}; give --inputs")
    return Samples((feed,), f"random (seed {seed})", random=True, defaulted=tuple(defaulted))
