"""Fuzz layerdiff's file parsers with hypothesis: whatever a file holds, a parser returns its result or
raises its own error (one line), never anything else.

    python scripts/fuzz_parsers.py [--cases 10000] [--target engine-info|polygraphy-results|report|recipe|state|cache|
        polygraphy-inputs] [--seed N]

Each entry of TARGETS is one parser: a hypothesis strategy of file contents (or directories) and a check
that parses one. tests/test_fuzz_engine_info.py and tests/test_fuzz_parsers.py run the same strategies
with fewer cases. To fuzz another parser, add its strategy and check and one TARGETS entry.
"""

from __future__ import annotations

import argparse
import base64
import copy
import functools
import io
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

try:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
except ImportError:
    raise SystemExit("fuzz_parsers.py needs hypothesis: pip install hypothesis") from None

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENGINE_INFO_DIR = ROOT.parent / "shared" / "fixtures" / "trt_engine_info"

# ---------------------------------------------------------------- engine info (layerdiff.engine_info)

NODES = ["Conv_9", "QuantizeLinear_7", "/conv1/Conv", "/relu/Relu", "/classifier/classifier.1/Gemm", "Mul_137",
         "GlobalAveragePool_843", "Add_139"]
TENSORS = ["conv1.weight", "270", "input", "onnx::Mul_4104", "/Constant_11_output_0", "conv1/ReadVariableOp:0"]
INTERNAL = ["(Unnamed Layer* 58) [ElementWise]", "ONNXTRT_Broadcast_779", "reshape_after_Gemm_48",
            "copied_squeeze_after_(Unnamed Layer* 850) [ElementWise]", "__myl_MulSumAdd_myl24_1",
            "/classifier/classifier_1/Gemm_myl9_2", "dummy_shape_call__mye548_0_myl24_0",
            "[CONVOLUTION]-[aten_ops.convolution.default]-[/conv1/convolution]"]
LAYER_TYPES = ["CaskConvolution", "Reformat", "NoOp", "Myelin", "MyelinReformat", "kgen", "gemm", "shape_call",
               "PointWiseV2", "Scale"]
FORMATS = ["Row major linear FP32", "Channel major FP16 format where channel % 8 == 0", "Float", "Half", "Int8",
           "Thirty-two wide channel vectorized row major Int8 format", "N/A due to dynamic shapes", "BFloat16"]
KEYS = ["Layers", "Bindings", "Name", "LayerType", "Inputs", "Outputs", "Dimensions", "Format/Datatype", "Metadata",
        "Weights", "weights", "Type", "Count", "TacticName", "TacticValue", "Origin", "count", "model_options"]
# values of the wrong type for any field
WRONG = st.sampled_from([None, 0, -1, 2.5, True, "", "x", [], {}, [[["deep"]]], {"Name": 5}, [1, "a"], "\x1e",
                         {"Name": "x", "Inputs": "y"}, [{"Name": None}], 10 ** 30])

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(NODES + TENSORS + FORMATS))
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                     kids, max_size=4),
    max_leaves=25)


def _sometimes_wrong(right: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(right, right, right, WRONG, json_values)


def _compose(kids: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return (st.tuples(kids, st.sampled_from([" + ", " || ", "+", ", "]), kids).map("".join)
            | st.lists(kids, min_size=1, max_size=3).map(lambda args: f"PWN({', '.join(args)})")
            | st.tuples(kids, kids).map(lambda ends: f"{{ForeignNode[{ends[0]}...{ends[1]}]}}")
            | st.tuples(st.sampled_from(["Input", "Output"]), st.integers(0, 3), kids).map(
                lambda t: f"Reformatting CopyNode for {t[0]} Tensor {t[1]} to {t[2]}"))


layer_names = st.one_of(
    st.recursive(st.sampled_from(NODES + TENSORS + INTERNAL) | st.text(max_size=12), _compose, max_leaves=8),
    st.integers(1, 3000).map(lambda n: "PWN(" * n + "Conv_9" + ")" * n),  # deeper than Python's recursion limit
    st.integers(1, 3000).map(lambda n: "{ForeignNode[" + "." * n),  # regex backtracking
)
metadata = st.tuples(st.lists(st.sampled_from(NODES) | st.text(max_size=10), max_size=4),
                     st.sampled_from(["\x1e", "\x1f", "\x1e\x1f", ""]), st.booleans()).map(
    lambda t: t[1].join(f"[ONNX Layer: {n}]" for n in t[0]) + (t[1] if t[2] else ""))
tensors = st.fixed_dictionaries({}, optional={
    "Name": _sometimes_wrong(st.sampled_from(TENSORS) | st.text(max_size=8)),
    "Dimensions": _sometimes_wrong(st.lists(st.integers(-1, 64), max_size=4)),
    "Format/Datatype": _sometimes_wrong(st.sampled_from(FORMATS) | st.text(max_size=8)),
    "Location": st.just("Device")})
layer_objects = st.fixed_dictionaries({"Name": _sometimes_wrong(layer_names)}, optional={
    "LayerType": _sometimes_wrong(st.sampled_from(LAYER_TYPES)),
    "Inputs": _sometimes_wrong(st.lists(tensors, max_size=3)),
    "Outputs": _sometimes_wrong(st.lists(tensors, max_size=3)),
    "Metadata": _sometimes_wrong(metadata),
    "Weights": _sometimes_wrong(st.fixed_dictionaries({"Type": st.sampled_from(["Int8", "Half", "Float", "?"]),
                                                      "Count": st.integers()})),
    "TacticName": _sometimes_wrong(st.sampled_from(["sm80_xmma_fprop_f32f32_tf32f32", "h16816gemm", ""])),
    "TacticValue": _sometimes_wrong(st.sampled_from(["0x0000000000000000", "0x5b8bf1b8028629d9"])),
    "Origin": _sometimes_wrong(st.sampled_from(["REFORMAT", "QDQ", "SLICE"]))})
documents = st.one_of(
    st.fixed_dictionaries({"Layers": _sometimes_wrong(st.lists(_sometimes_wrong(layer_objects), max_size=6))},
                          optional={"Bindings": _sometimes_wrong(st.lists(st.sampled_from(TENSORS), max_size=3))}),
    st.fixed_dictionaries({"Layers": st.lists(_sometimes_wrong(layer_names), max_size=6)}),  # names only
    layer_objects,  # one get_layer_information() object
    st.lists(layer_objects, max_size=4),  # bare list of layer objects
    st.lists(json_values, max_size=3).map(lambda rest: [{"count": 3}, *rest]),  # --exportProfile
    json_values,
)


def _log_tensor(parts: tuple[str, str, str, bool]) -> str:
    name, dtype, dims, new = parts
    return f"{name} ({dtype}[{dims}])" if new else f"{name}[{dtype}({dims})]"


log_tensors = st.lists(st.tuples(st.sampled_from(TENSORS) | st.text(max_size=6),
                                 st.sampled_from(["Float", "Half", "Int8"]) | st.text(max_size=4),
                                 st.text(alphabet="-0123456789,:x \u00b2\u0663", max_size=14), st.booleans()).map(
    _log_tensor), max_size=3).map(", ".join)
log_lines = st.one_of(
    st.tuples(st.sampled_from(LAYER_TYPES) | st.text(max_size=6), layer_names,
              st.sampled_from(["0x0000000000000000", "1062367460111450758"]) | st.text(max_size=6), log_tensors,
              log_tensors).map(lambda t: f"[V] [TRT] Layer({t[0]}): {t[1]}, Tactic: {t[2]}, {t[3]} -> {t[4]}"),
    st.tuples(st.sampled_from(LAYER_TYPES), layer_names).map(lambda t: f"[V] [TRT] Layer({t[0]}): {t[1]}"),
    st.sampled_from(["[V] [TRT] Engine Layer Information:", "[I] [TRT] done", "Layer(", "--- Layer 0 ---"]),
    st.text(max_size=40),
)


@st.composite
def verbose_logs(draw) -> bytes:
    """trtexec --verbose logs, some lines cut short."""
    lines = []
    for line in draw(st.lists(log_lines, max_size=8)):
        lines.append(line[:draw(st.integers(0, len(line)))] if draw(st.integers(0, 3)) == 0 else line)
    return "\n".join(lines).encode()


@st.composite
def _serialized(draw, doc: Any) -> str:
    """A document as JSON (compact or indented), or its layers as per-layer dumps, names or a verbose log."""
    layers = doc.get("Layers") if isinstance(doc, dict) else None
    forms = ["compact", "indented"] + (["dumps", "names", "log"] if isinstance(layers, list) else [])
    form = draw(st.sampled_from(forms))
    if form in ("compact", "indented"):
        return json.dumps(doc, indent=4 if form == "indented" else None)
    if form == "dumps":
        return "".join(f"--- Layer {i} ---\n{json.dumps(x, indent=2)}\n" for i, x in enumerate(layers))
    if form == "names":
        return json.dumps({"Layers": [x.get("Name") if isinstance(x, dict) else x for x in layers]})
    lines = ["[V] [TRT] Engine Layer Information:"]
    for x in layers:
        x = x if isinstance(x, dict) else {"Name": x}
        io = [", ".join(f"{t.get('Name')} ({t.get('Format/Datatype')}{t.get('Dimensions')})" for t in ts
                        if isinstance(t, dict)) if isinstance(ts, list) else str(ts)
              for ts in (x.get("Inputs", []), x.get("Outputs", []))]
        lines.append(f"[V] [TRT] Layer({x.get('LayerType')}): {x.get('Name')}, Tactic: {x.get('TacticValue')}, "
                     f"{io[0]} -> {io[1]}")
    return "\n".join(lines)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _damaged(draw: Callable, doc: Any, keys: list[str], wrong: st.SearchStrategy = WRONG) -> Any:
    """A deep copy of `doc` with up to 3 fields (those named in `keys` more often) deleted, or replaced by a
    value of the wrong type (from `wrong`) or by random JSON."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        if not paths:
            break
        interesting = [p for p in paths if p[-1] in keys]
        path = draw(st.sampled_from(interesting if interesting and draw(st.booleans()) else paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["delete", "wrong type", "garbage"]))
        if how == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(wrong if how == "wrong type" else json_values))  # WRONG's are shared
    return doc


@st.composite
def _mutated(draw, docs: st.SearchStrategy[Any]) -> bytes:
    """A real file, cut to a few layers, with up to 3 fields deleted or replaced, serialized in one of the
    shapes TensorRT users write, and sometimes truncated."""
    doc = draw(docs)
    if isinstance(doc, dict) and isinstance(doc.get("Layers"), list):
        start = draw(st.integers(0, len(doc["Layers"])))
        doc = {**doc, "Layers": doc["Layers"][start:start + draw(st.integers(0, 12))]}
    elif isinstance(doc, list):
        doc = doc[:draw(st.integers(0, 12))]
    doc = _damaged(draw, doc, KEYS)
    text = draw(_serialized(doc))
    if draw(st.integers(0, 3)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text.encode()


@cache
def real_file_mutations(directory: Path = ENGINE_INFO_DIR) -> st.SearchStrategy[bytes]:
    """Mutations of the real files in `directory` (nothing when it holds none)."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]
    return _mutated(st.sampled_from(docs)) if docs else st.nothing()


def generated_engine_info() -> st.SearchStrategy[bytes]:
    """Engine-info-like files made from scratch: random bytes and text, JSON documents with wrong types, logs,
    and nesting or numbers that Python's json module refuses."""
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(str.encode),
        st.tuples(documents, st.booleans(), st.integers(0, 3)).map(
            lambda t: json.dumps(t[0], indent=2 if t[1] else None)[:-1 if t[2] == 0 else None].encode()),
        verbose_logs(),
        st.integers(1, 200_000).map(lambda n: ("[" * n + "]" * n).encode()),
        st.integers(1, 200_000).map(lambda n: ('{"Layers": [{"Name": "x", "Inputs": ' + "[" * n).encode()),
        st.integers(4300, 20_000).map(lambda n: f'{{"Layers": [{{"Name": "x", "Dimensions": [{"7" * n}]}}]}}'.encode()),
        st.integers(1, 20_000).map(  # a long line with no tensor in it
            lambda n: f"Engine Layer Information\nLayer(X): a, Tactic: 0, {'b' * n} -> c".encode()),
        st.integers(1, 20_000).map(lambda n: ("Layer(" * n).encode()),  # regex backtracking
    )


def engine_info_inputs() -> st.SearchStrategy[bytes]:
    return generated_engine_info() | real_file_mutations()


@cache
def fuzz_model():
    """A chain model whose node, initializer and input names are the ones the strategies use."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from layerdiff.graph import from_proto

    ops = ["Mul", "Relu", "Add", "Relu", "Relu", "Mul", "Relu", "Add"]
    extra = {0: "conv1.weight", 2: "input", 5: "270", 7: "270"}
    nodes, prev = [], "input"
    for i, (name, op) in enumerate(zip(NODES[2:] + NODES[:2], ops, strict=True)):
        nodes.append(helper.make_node(op, [prev] + ([extra[i]] if i in extra else []), [f"t{i}"], name=name))
        prev = f"t{i}"
    inits = [numpy_helper.from_array(np.ones([1, 4], np.float32), n) for n in ("conv1.weight", "270")]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return from_proto(model)


def check_engine_info(path: Path) -> None:
    """parse_engine_info, without and with a model, returns an EngineInfo or raises a one-line
    EngineInfoError; with a model, every ONNX node it names is one of the model's."""
    from layerdiff.engine_info import EngineInfo, EngineInfoError, parse_engine_info

    model = fuzz_model()
    for m in (None, model):
        try:
            info = parse_engine_info(path, m)
        except EngineInfoError as err:
            assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
            continue
        assert isinstance(info, EngineInfo)
        json.dumps(info.to_dict())
        for layer in info.layers:
            assert isinstance(layer.is_reformat, bool)
            if m is not None:
                assert set(layer.onnx_nodes) <= {x.name for x in m.layers}, (layer.name, layer.onnx_nodes)


# ---------------------------------------------------------------- Polygraphy results (layerdiff.backends.imported)

POLYGRAPHY_DIR = ROOT.parent / "shared" / "fixtures" / "polygraphy_results"
RESULT_OUTPUTS = ("probs", "logits", "A-V-12-Add", "A-V-14-ArgMax")
RESULT_KEYS = ["lst", "outputs", "values", "array", "polygraphy_class", "runtime", "runner_name", "tensor"]
LEGACY = "polygraphy_serialized_json_type"
# made (a directory) by any loader that unpickles what the fuzzer gives it
UNPICKLED = Path(tempfile.gettempdir()) / f"layerdiff-fuzz-unpickled-{os.getpid()}"


class Unpickled:
    """Unpickling this object runs os.mkdir(UNPICKLED): proof that a loader executed pickled code."""

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(UNPICKLED),)


def _npy(arr: Any, allow_pickle: bool = False) -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.save(out, arr, allow_pickle=allow_pickle)
    return out.getvalue()


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ndarray(payload: Any) -> dict:
    return {"array": payload, "polygraphy_class": "ndarray"}


def _lazy(value: Any) -> dict:
    return {"values": value, "polygraphy_class": "LazyNumpyArray"}


@cache
def pickled_payloads() -> dict[str, Any]:
    """Content that runs code if unpickled, in each place a Polygraphy JSON file can carry a pickle."""
    import numpy as np

    evil = pickle.dumps(Unpickled())
    npz = io.BytesIO()
    np.savez(npz, x=np.array([Unpickled()], dtype=object))
    obj_npy = _npy(np.array([Unpickled(), 1], dtype=object), allow_pickle=True)
    return {
        "object array (npy)": _ndarray(_b64(obj_npy)),
        "object array (npy, latin-1)": _ndarray(obj_npy.decode("latin-1")),
        "object array (npz)": _ndarray(_b64(npz.getvalue())),
        "pickle as an array": _ndarray(_b64(evil)),
        "torch tensor": {"tensor": _b64(evil), "polygraphy_class": "Tensor"},
        "torch tensor (legacy)": {"Tensor": LEGACY, "tensor": _b64(evil)},
        "torch tensor (legacy, encoded)": {"__polygraphy_encoded_Tensor": LEGACY, "tensor": _b64(evil)},
    }


@cache
def _array_payloads() -> list[Any]:
    """Values of an ndarray's "array" field: right, damaged, of other dtypes, or not arrays at all."""
    import numpy as np

    good = [_npy(a) for a in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array(3.5, np.float16),
                              np.array([1, 2], np.int32), np.array([True]), np.zeros((1, 0), np.float32))]
    npz = io.BytesIO()
    np.savez(npz, np.ones(2, np.float32))
    empty_npz = io.BytesIO()
    np.savez(empty_npz)
    others = [_npy(np.array(["ab"])), _npy(np.array([b"x"])), _npy(np.zeros(2, [("a", "<f4")])),
              _npy(np.array(["2024-01-01"], "datetime64[D]")), _npy(np.array([1j]))]
    return [*map(_b64, good), good[0].decode("latin-1"), _b64(npz.getvalue()), _b64(empty_npz.getvalue()),
            *map(_b64, others), _b64(good[0][:20]), _b64(good[0][:-3]), good[0][:40].decode("latin-1"),
            _b64(_npy_header("<f4", (10 ** 12,))), _b64(_npy_header("<f4", (10 ** 9,))),
            _b64(_npy_header("<f4", (-1,))), _b64(_npy_header("|O", (1,))), _b64(_npy_header("xx", (1,))),
            _b64(b"PK\x03\x04broken zip"), "", "not base64!", "\u2603", "k05VTVBZ", 5, None, [], {"array": "x"}]


def _result_values() -> st.SearchStrategy:
    """What a results file's JSON may hold where Polygraphy expects one of its types: wrong types, other
    Polygraphy types, pickles, arrays that are not numbers."""
    return st.one_of(WRONG, st.sampled_from(list(pickled_payloads().values())),
                     st.sampled_from(_array_payloads()).map(_ndarray),
                     st.sampled_from([{"polygraphy_class": name} for name in
                                      ("Foo", "AccuracyResult", "FormattedArray", "RunResults", "IterationResult",
                                       "LazyNumpyArray", "ndarray", "Tensor", "")]),
                     st.sampled_from([{"polygraphy_class": 5}, {"polygraphy_class": ["ndarray"]},
                                      {"ndarray": LEGACY}, {"Foo": LEGACY}, {"RunResults": LEGACY, "lst": 3}]))


def _sometimes_wrong_result(right: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(right, right, right, right, st.deferred(_result_values), json_values)


runner_names = st.sampled_from(["trt-runner-N0-08/24/23-07:55:24", "onnxrt-runner-N0", "custom_runner"]) | st.text(
    max_size=8)
arrays_json = st.deferred(lambda: st.sampled_from(_array_payloads()).map(_ndarray))
iteration_objects = st.fixed_dictionaries(
    {"polygraphy_class": _sometimes_wrong_result(st.just("IterationResult"))},
    optional={"outputs": _sometimes_wrong_result(st.dictionaries(
                  st.sampled_from(RESULT_OUTPUTS) | st.text(max_size=6),
                  _sometimes_wrong_result(arrays_json.map(_lazy) | arrays_json), max_size=3)),
              "runtime": _sometimes_wrong_result(st.floats(0, 1)),
              "runner_name": _sometimes_wrong_result(runner_names)})
run_results = st.fixed_dictionaries({
    "lst": _sometimes_wrong_result(st.lists(_sometimes_wrong_result(
        st.tuples(_sometimes_wrong_result(runner_names),
                  _sometimes_wrong_result(st.lists(_sometimes_wrong_result(iteration_objects), max_size=3))).map(list)),
        max_size=3)),
    "polygraphy_class": _sometimes_wrong_result(st.just("RunResults"))})


def _legacy(doc: Any) -> Any:
    """The legacy encoding: the type name as a key whose value is the marker."""
    if isinstance(doc, list):
        return [_legacy(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {k: _legacy(v) for k, v in doc.items() if k != "polygraphy_class"}
    if isinstance(doc.get("polygraphy_class"), str):
        out[doc["polygraphy_class"]] = LEGACY
    return out


# placeholders put in a document as strings, replaced in its text by what json.dumps will not write
RAW = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-400", "9" * 5000, "-0", "123456789012345678901234567890"]
DEEP = [10, 500, 990, 1500, 100_000]
PLACEHOLDERS = [f"@@RAW{i}@@" for i in range(len(RAW))] + [f"@@DEEP{n}@@" for n in DEEP]


def _fill(text: str) -> str:
    if "@@" not in text:
        return text
    text = re.sub(r'"@@RAW(\d+)@@"', lambda m: RAW[int(m[1])], text)
    return re.sub(r'"@@DEEP(\d+)@@"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)


@st.composite
def _json_text(draw, doc: Any, indent: int | None = 4) -> bytes:
    """`doc` as JSON (indented as Polygraphy writes it, or compact), placeholders filled, sometimes truncated."""
    text = _fill(json.dumps(doc, indent=indent if draw(st.booleans()) else None))
    if draw(st.integers(0, 3)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text.encode()


@st.composite
def _results_file(draw, docs: st.SearchStrategy[Any]) -> bytes:
    doc = draw(docs)
    if draw(st.integers(0, 4)) == 0:
        doc = _legacy(doc)
    return draw(_json_text(doc))


@st.composite
def _results_dir(draw, files: st.SearchStrategy[bytes]) -> dict:
    """A directory of per-iteration files, some of them broken, or not .json, or directories."""
    names = ["0000000000.json", "0000000001.json", "0000000002.json", "x.json", ".hidden.json", "notes.txt",
             "0000000003.JSON"]
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)):
        out[name] = draw(files) if draw(st.integers(0, 5)) else {"0.json": b"{}"}
    return out


def _single_iteration(doc: dict) -> list[dict]:
    """`doc` (RunResults JSON) split into one RunResults per iteration, as in a directory of them."""
    lst = doc["lst"]
    count = max(len(iters) for _, iters in lst)
    return [{**doc, "lst": [[name, iters[i:i + 1]] for name, iters in lst if i < len(iters)]} for i in range(count)]


def _written_runs() -> list:
    """RunResults of small arrays of several dtypes, with one to three runners and iterations."""
    import numpy as np
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult

    rng = np.random.default_rng(0)
    outputs = [
        {"probs": rng.random((1, 4), np.float32), "logits": rng.standard_normal((1, 4)).astype(np.float16)},
        {"A-V-12-Add": rng.random((2, 3)).astype(np.float32), "A-V-14-ArgMax": np.array([1, 0], np.int32)},
        {"probs": np.array([[np.nan, np.inf, 0.5]], np.float32), "mask": np.array([True, False])},
    ]
    runs = []
    for i, runners in enumerate([["trt-runner-N0"], ["onnxrt-runner-N0", "trt-runner-N1"], ["custom_runner"]]):
        results = RunResults()
        for r, name in enumerate(runners):
            results.append((name, [IterationResult(outputs[(i + r + k) % 3], runtime=0.01, runner_name=name)
                                   for k in range(1 + (i + r) % 2)]))
        runs.append(results)
    return runs


def written_results(directory: Path) -> list[Path]:
    """The RunResults of _written_runs, written into `directory` by Polygraphy's RunResults.save."""
    from polygraphy.logger import G_LOGGER

    paths = []
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        for i, results in enumerate(_written_runs()):
            paths.append(directory / f"written{i}.json")
            results.save(str(paths[-1]))
    return paths


@cache
def results_file_mutations(*directories: Path, written: bool = False) -> st.SearchStrategy[bytes | dict]:
    """Damaged copies of the RunResults files in `directories` (and, with `written`, of _written_runs as
    RunResults.save writes them); nothing when there are none. Single files, and directories of
    per-iteration files one of which is damaged."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for d in directories for p in sorted(d.glob("*.json"))]
    docs = [d for d in docs if isinstance(d, dict) and "lst" in d]  # not --save-inputs files
    docs += [json.loads(results.to_json()) for results in _written_runs()] if written else []
    if not docs:
        return st.nothing()

    @st.composite
    def damaged(draw) -> bytes:
        doc = _damaged(draw, draw(st.sampled_from(docs)), RESULT_KEYS, _result_values() | st.sampled_from(
            PLACEHOLDERS))
        return draw(_results_file(st.just(doc)))

    @st.composite
    def split(draw) -> dict:
        parts = _single_iteration(draw(st.sampled_from(docs)))
        files = {f"{i:010d}.json": json.dumps(part, indent=4).encode() for i, part in enumerate(parts)}
        files[draw(st.sampled_from(sorted(files) + ["0000000009.json"]))] = draw(damaged())
        return files

    return st.one_of(damaged(), damaged(), split())


def generated_results() -> st.SearchStrategy[bytes | dict]:
    """Results-like files and directories made from scratch."""
    files = st.one_of(
        st.binary(max_size=300),
        st.text(max_size=100).map(str.encode),
        json_values.flatmap(_json_text),
        _results_file(run_results),
        _results_file(_result_values()),
        st.sampled_from(list(pickled_payloads().values())).flatmap(lambda v: _results_file(st.just(
            {"lst": [["trt-runner", [{"outputs": {"probs": v}, "runtime": 0.1, "runner_name": "trt-runner",
                                      "polygraphy_class": "IterationResult"}]]], "polygraphy_class": "RunResults"}))),
        st.just(pickle.dumps(Unpickled())),  # Polygraphy 0.26 and older pickled its results
        st.sampled_from(PLACEHOLDERS).flatmap(lambda v: _json_text({"lst": v, "polygraphy_class": "RunResults"})),
    )
    return files | _results_dir(files)


def results_inputs() -> st.SearchStrategy[bytes | dict]:
    return generated_results() | results_file_mutations(POLYGRAPHY_DIR, written=True)


def check_polygraphy_results(path: Path) -> None:
    """load_polygraphy_results returns (iterations, runner) of numeric arrays or raises a one-line
    BadInput, and never unpickles anything."""
    import numpy as np

    from layerdiff.backends.imported import load_polygraphy_results
    from layerdiff.errors import BadInput

    try:
        iterations, runner = load_polygraphy_results(path, RESULT_OUTPUTS, 1)
    except BadInput as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
    else:
        assert isinstance(runner, str) and isinstance(iterations, list) and len(iterations) == 1
        for it in iterations:
            assert all(isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
                       for k, v in it.items()), it
    finally:
        if UNPICKLED.exists():
            UNPICKLED.rmdir()
            raise AssertionError("the loader unpickled an object from the file")


# ---------------------------------------------------------------- reports (layerdiff.load_report)

REPORT_KEYS = ["schema", "model", "inputs", "reference", "candidate", "capture", "layers", "outputs",
               "first_divergence", "thresholds", "counts", "tolerance", "warnings", "paired", "mean", "local",
               "samples", "nonfinite", "nonfinite_values", "count", "cosine", "shape", "index", "name", "tensor",
               "onnx_nodes", "kind", "plan", "pinned_fp32", "match_rate", "min_cosine", "failed", "max_memory"]
REPORT_WRONG = st.one_of(WRONG, st.sampled_from(PLACEHOLDERS), st.sampled_from(
    ["nan", "inf", "-inf", -0.0, 1e308, -1e308, 2 ** 63, 2 ** 64, 10 ** 400, "layerdiff.report/1", {"cosine": None},
     {"mean": {}}, [None], {"reference": "x"}, {"cosine": "nan"}, False]))


@cache
def real_reports() -> list[dict]:
    """Reports of two fixture runs, written by write_report and read back as JSON: the fake candidate on
    the CNN, and FP16 on a model whose FP16 run overflows (NaN and inf metrics, a failed tolerance)."""
    import layerdiff

    fixtures = ROOT / "fixtures"
    reports = [layerdiff.compare(fixtures / "cnn.onnx", "fake", inputs=fixtures / "cnn_inputs",
                                 reference_provider="cpu"),
               layerdiff.compare(fixtures / "fp16_overflow.onnx", "ort-fp16", reference_provider="cpu",
                                 min_cosine=0.99)]
    with tempfile.TemporaryDirectory() as tmp:
        docs = []
        for report in reports:
            layerdiff.write_report(report, Path(tmp) / "r.json")
            docs.append(json.loads((Path(tmp) / "r.json").read_text()))
    return docs


@st.composite
def damaged_reports(draw) -> bytes:
    """A real report cut to a few rows, with up to 3 fields deleted or replaced, sometimes truncated."""
    doc = draw(st.sampled_from(real_reports()))
    layers = doc["layers"]
    start = draw(st.integers(0, len(layers)))  # fewer rows: smaller and faster, damage more likely to matter
    doc = {**doc, "layers": layers[start:start + draw(st.integers(0, 4))]}
    return draw(_json_text(_damaged(draw, doc, REPORT_KEYS, REPORT_WRONG), indent=1))


def generated_reports() -> st.SearchStrategy[bytes]:
    """Report-like files made from scratch: random bytes, random JSON, objects with the report's schema."""
    return st.one_of(
        st.binary(max_size=300),
        json_values.flatmap(_json_text),
        st.dictionaries(st.sampled_from(REPORT_KEYS), json_values | REPORT_WRONG, max_size=8).flatmap(
            lambda d: _json_text({"schema": "layerdiff.report/1", **d})),
    )


def report_inputs() -> st.SearchStrategy[bytes]:
    return damaged_reports() | generated_reports()


def check_report(path: Path) -> None:
    """load_report returns a Report or raises a one-line ReportError; a report it returns can be written
    again and reads back equal, and ranks."""
    from layerdiff.errors import ReportError
    from layerdiff.report import Report, load_report, rank_layers, write_report

    try:
        report = load_report(path)
    except ReportError as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
        return
    assert isinstance(report, Report)
    again = path.with_name(path.name + ".again.json")
    write_report(report, again)
    assert load_report(again) == report, "read back differently"
    for layer in rank_layers(report):
        assert layer.local_rel_rms is None or isinstance(layer.local_rel_rms, float)
    for layer in report.layers:  # the rows' derived values compute on whatever was read
        assert layer.request_realised in (None, True, False) and isinstance(layer.local_nonfinite, bool)
        assert all(x is None or isinstance(x, float) for x in (layer.cosine, layer.local_cosine))


# ---------------------------------------------------------------- recipes (layerdiff.recipe.load_recipe)

RECIPE_KEYS = ["schema", "model", "path", "sha256", "candidate", "spec", "precision", "calibration", "ranges",
               "tensors", "tolerance", "metric", "threshold", "outputs", "pins", "node", "covers", "forced",
               "achieved", "holdout", "finished", "method", "ort_optimization", "direction", "engine_layers",
               "per_sample", "value", "input", "conv1_out"]
# wrong values for the files layerdiff writes itself (recipes, state files, caches): numbers JSON has not
# (placeholders), ones beyond float32, ranges of every wrong shape, the strings a state file writes
FILE_WRONG = st.one_of(WRONG, st.sampled_from(PLACEHOLDERS), st.sampled_from(
    ["nan", "inf", "-inf", -0.0, 1e39, -1e39, 3.4e38, 2 ** 64, [1], [1, 0], [0, 1, 2], ["0", 1], [True, 1], [],
     {"x": [0, 1]}, "MinMax", "Entropy", "fp32", "all", "min", "function"]))


@functools.lru_cache(maxsize=1)
def real_recipes() -> tuple[str, ...]:
    """Recipes of two bisect runs on the CNN fixture: FakeBackend errors and ort-int8 (with ranges)."""
    from layerdiff.backends.fake import FakeBackend
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.recipe import recipe_dict
    from layerdiff.target import Target as Tolerance

    fixtures = ROOT / "fixtures"
    session, held = prepare_split(fixtures / "cnn.onnx", inputs=fixtures / "cnn_inputs", reference_provider="cpu")
    target = Tolerance.parse("cosine", 0.99999, [], session.model.outputs)
    fake = bisect(session, "fake", target, backend=FakeBackend(session.model, {"conv2": 0.05}, 0.0), evidence=False)
    int8 = bisect(session, "ort-int8", target, holdout=held, evidence=False)
    return tuple(json.dumps(recipe_dict(r, session, str(fixtures / "cnn.onnx"))) for r in (fake, int8))


@st.composite
def damaged_recipes(draw) -> bytes:
    doc = json.loads(draw(st.sampled_from(real_recipes())))
    return draw(_json_text(_damaged(draw, doc, RECIPE_KEYS, FILE_WRONG), indent=1))


def recipe_inputs() -> st.SearchStrategy[bytes]:
    return damaged_recipes() | st.binary(max_size=300) | json_values.flatmap(_json_text) | st.dictionaries(
        st.sampled_from(RECIPE_KEYS), json_values, max_size=8).flatmap(
        lambda d: _json_text({"schema": "layerdiff.recipe/1", **d}))


@cache
def _cnn() -> tuple[tuple[str, ...], list[str]]:
    """The CNN fixture's outputs and float activations (the tensors its calibration ranges cover)."""
    from layerdiff.backends.calibrate import activations
    from layerdiff.graph import load_model

    model = load_model(ROOT / "fixtures" / "cnn.onnx")
    return model.outputs, activations(model)


def _check_ranges(ranges) -> None:
    import numpy as np

    for name, data in ranges.items():
        lo, hi = (np.float32(v) for v in data.range_value)
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi, (name, lo, hi)


def check_recipe(path: Path) -> None:
    """load_recipe returns a Recipe or raises a one-line BadInput; what the commands read of a recipe it
    returns can be used: the text exports give text or a one-line BadInput, its calibration ranges are
    finite with lowest <= highest (apply), its tolerance is a Target or a one-line BadInput (apply)."""
    from layerdiff.backends.calibrate import ranges_from_json
    from layerdiff.errors import BadInput
    from layerdiff.export import TEXT
    from layerdiff.recipe import Recipe, load_recipe
    from layerdiff.target import Target as Tolerance

    try:
        recipe = load_recipe(path)
    except BadInput as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
        return
    assert isinstance(recipe, Recipe)
    assert recipe.plan.default == recipe.precision and all(isinstance(d, str) for d in recipe.doubts())
    for fmt, export in TEXT.items():
        try:
            assert isinstance(export(recipe), str)
        except BadInput as err:
            assert "\n" not in str(err), f"{fmt}: not a one-line message"
    calibration = recipe.candidate.get("calibration") or {}
    if "ranges" in calibration:
        _check_ranges(ranges_from_json(calibration["ranges"]))
    if recipe.tolerance and recipe.tolerance.get("metric") != "function":  # a function is a file to import
        try:
            assert isinstance(Tolerance.from_dict(recipe.tolerance, _cnn()[0]), Tolerance)
        except BadInput as err:
            assert "\n" not in str(err), "tolerance: not a one-line message"


# ---------------------------------------------------------------- bisect state files (SearchState.load)

STATE_KEYS = ["schema", "model", "candidate", "precision", "calibration", "samples", "calib", "target", "forced",
              "evaluations", "pins", "per_sample", "seconds"]


@functools.lru_cache(maxsize=1)
def real_state() -> tuple[str, dict, int]:
    """The --resume state file of a bisect run on the CNN fixture (FakeBackend), the identity of that
    search and its number of samples."""
    from layerdiff.backends.fake import FakeBackend
    from layerdiff.bisect import bisect, prepare_split
    from layerdiff.target import Target as Tolerance

    fixtures = ROOT / "fixtures"
    session, _ = prepare_split(fixtures / "cnn.onnx", inputs=fixtures / "cnn_inputs", reference_provider="cpu")
    target = Tolerance.parse("cosine", 0.99999, [], session.model.outputs)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        bisect(session, "fake", target, backend=FakeBackend(session.model, {"conv2": 0.05, "fc": 0.5}, 0.0),
               state=state, evidence=False)
        text = state.read_text()
    doc = json.loads(text)
    doc["evaluations"][0]["per_sample"][-1] = "-inf"  # as add() writes a value JSON has no number for
    return json.dumps(doc), {k: v for k, v in doc.items() if k != "evaluations"}, len(session.samples)


@st.composite
def damaged_states(draw) -> bytes:
    doc = json.loads(real_state()[0])
    return draw(_json_text(_damaged(draw, doc, STATE_KEYS, FILE_WRONG), indent=None))


def state_inputs() -> st.SearchStrategy[bytes]:
    from layerdiff.bisect_state import STATE_SCHEMA

    return damaged_states() | st.binary(max_size=300) | json_values.flatmap(_json_text) | st.dictionaries(
        st.sampled_from(STATE_KEYS), json_values | FILE_WRONG, max_size=8).flatmap(
        lambda d: _json_text({"schema": STATE_SCHEMA, **real_state()[1], **d}))


def check_state(path: Path) -> None:
    """SearchState.load, as `bisect --resume` calls it, returns outcomes of this search or raises a
    one-line BadInput: each outcome names nodes and has one number per sample, its value and verdict
    those of the target."""
    import math

    from layerdiff.bisect_state import SearchState
    from layerdiff.errors import BadInput
    from layerdiff.target import Target as Tolerance

    _, identity, samples = real_state()
    target = Tolerance.parse("cosine", 0.99999, [], _cnn()[0])
    try:
        outcomes = SearchState(path, identity).load(target, samples)
    except BadInput as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
        return
    for o in outcomes:
        assert isinstance(o.pins, frozenset) and all(isinstance(p, str) and p for p in o.pins)
        assert len(o.per_sample) == samples and all(isinstance(v, float) for v in o.per_sample)
        assert isinstance(o.seconds, float) and math.isfinite(o.seconds) and o.seconds >= 0
        assert o.passed == target.passes(target.worst(o.per_sample))


# ---------------------------------------------------------------- calibration caches (RangesCache.load)


def real_cache() -> dict:
    """The ranges a --cache-dir file of the CNN fixture holds (those of its ort-int8 recipe)."""
    return json.loads(real_recipes()[1])["candidate"]["calibration"]["ranges"]


@st.composite
def damaged_caches(draw) -> bytes:
    return draw(_json_text(_damaged(draw, real_cache(), ["method", "tensors", "input", "conv1_out"], FILE_WRONG),
                           indent=None))


def cache_inputs() -> st.SearchStrategy[bytes]:
    ranges = st.lists(FILE_WRONG | st.floats(), max_size=3)
    return damaged_caches() | st.binary(max_size=300) | json_values.flatmap(_json_text) | st.fixed_dictionaries(
        {"method": st.sampled_from(["MinMax", "Percentile", "Distribution", "minmax"]) | FILE_WRONG,
         "tensors": st.dictionaries(st.sampled_from(_cnn()[1]) | st.text(max_size=4), ranges, max_size=3)
         | FILE_WRONG}).flatmap(_json_text)


def check_cache(path: Path) -> None:
    """RangesCache.load, as a session with --cache-dir calls it, returns ranges INT8 can use (finite,
    lowest <= highest, one for each of the model's float tensors) or raises a one-line InputDataError."""
    from layerdiff.backends.calibrate import RangesCache
    from layerdiff.errors import InputDataError

    cache = RangesCache(None, "", "", None)
    cache.path = path
    try:
        ranges = cache.load(_cnn()[1])
    except InputDataError as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
        return
    assert set(_cnn()[1]) <= set(ranges)
    _check_ranges(ranges)


# ---------------------------------------------------------------- Polygraphy --save-inputs files (load_samples)

INPUT_NAMES = ["tensorX", "input", "x"]


@cache
def real_inputs() -> list[Any]:
    """The --save-inputs files among the shared Polygraphy fixtures, as JSON."""
    return [json.loads(p.read_text()) for p in sorted(POLYGRAPHY_DIR.glob("*input*.json"))]


feeds_json = st.lists(_sometimes_wrong_result(st.dictionaries(
    st.sampled_from(INPUT_NAMES) | st.text(max_size=4), _sometimes_wrong_result(arrays_json), max_size=3)),
    max_size=3)


@st.composite
def damaged_inputs(draw) -> bytes:
    """A real --save-inputs file with up to 3 fields deleted or replaced (by pickles, other Polygraphy
    types, arrays that are not numbers...), sometimes truncated."""
    doc = draw(st.sampled_from(real_inputs()))
    return draw(_json_text(_damaged(draw, doc, ["array", "polygraphy_class", *INPUT_NAMES], st.deferred(_result_values))))


def inputs_inputs() -> st.SearchStrategy[bytes]:
    generated = st.one_of(st.binary(max_size=300), json_values.flatmap(_json_text), feeds_json.flatmap(_json_text))
    return generated | damaged_inputs() if real_inputs() else generated


def check_inputs(path: Path) -> None:
    """load_samples of a Polygraphy --save-inputs file returns samples of the model's inputs (arrays of
    their types) or raises a one-line InputDataError, and never unpickles anything."""
    from onnx import TensorProto

    from layerdiff.errors import InputDataError
    from layerdiff.graph import InputSpec
    from layerdiff.inputs import load_samples

    specs = (InputSpec("tensorX", TensorProto.FLOAT, ("N", 1, 28, 28)),)
    as_json = path.with_name("inputs.json")
    shutil.copyfile(path, as_json)
    try:
        samples = load_samples(as_json, specs, {})
    except InputDataError as err:
        assert str(err) and "\n" not in str(err), f"not a one-line message: {str(err)!r}"
    else:
        assert len(samples) >= 1
        for feed in samples.feeds:
            assert set(feed) == {"tensorX"} and feed["tensorX"].dtype == specs[0].dtype
    finally:
        if UNPICKLED.exists():
            UNPICKLED.rmdir()
            raise AssertionError("the loader unpickled an object from the file")


# ---------------------------------------------------------------- targets


Input = bytes | dict  # a file's contents, or a directory: {name: Input}


class Target(NamedTuple):
    inputs: Callable[[], st.SearchStrategy[Input]]  # files (or directories) to try
    check: Callable[[Path], None]  # parses one file; raises on a bug
    needs: Path | None = None  # real files its strategy also mutates, where present


TARGETS: dict[str, Target] = {
    "engine-info": Target(engine_info_inputs, check_engine_info, ENGINE_INFO_DIR),
    "polygraphy-results": Target(results_inputs, check_polygraphy_results, POLYGRAPHY_DIR),
    "report": Target(report_inputs, check_report),
    "recipe": Target(recipe_inputs, check_recipe),
    "state": Target(state_inputs, check_state),
    "cache": Target(cache_inputs, check_cache),
    "polygraphy-inputs": Target(inputs_inputs, check_inputs, POLYGRAPHY_DIR),
}


def write_input(path: Path, data: Input) -> None:
    """Make `path` hold `data` (a file's bytes, or a directory), replacing what was there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if isinstance(data, bytes):
        path.write_bytes(data)
        return
    path.mkdir()
    for name, content in data.items():
        write_input(path / name, content)


def _show(data: Input) -> str:
    text = repr(data)
    return text[:200] + ("..." if len(text) > 200 else "")


def fuzz(target: Target, cases: int, seed_value: int | None = None) -> tuple[int, list[tuple[Input, BaseException]]]:
    """Run `cases` inputs through `target.check`; return how many ran and the (input, exception) of each
    failure. Not stopping at the first failure, and not shrinking: this counts failures."""
    failures: list[tuple[Input, BaseException]] = []
    ran = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input"

        @settings(max_examples=cases, deadline=None, database=None, derandomize=seed_value is None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(target.inputs())
        def one(data: Input) -> None:
            nonlocal ran
            ran += 1
            write_input(path, data)
            try:
                target.check(path)
            except Exception as err:  # noqa: BLE001 - anything the parser raises is a finding to count
                failures.append((data, err))

        (seed(seed_value)(one) if seed_value is not None else one)()
    return ran, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="inputs per target (default 10000)")
    parser.add_argument("--target", choices=["all", *TARGETS], default="all", help="parser to fuzz (default all)")
    parser.add_argument("--seed", type=int, help="random seed (default: the same fixed inputs every run)")
    args = parser.parse_args(argv)
    failed = False
    for name, target in TARGETS.items():
        if args.target not in ("all", name):
            continue
        ran, failures = fuzz(target, args.cases, args.seed)
        missing = target.needs is not None and not any(target.needs.glob("*.json"))
        print(f"{name}: {ran} cases, {len(failures)} failures"
              + (f" (no real files in {target.needs}: generated inputs only)" if missing else ""))
        kinds: dict[str, tuple[int, Input, BaseException]] = {}
        for data, err in failures:  # one line per exception type and place raised
            frames = traceback.extract_tb(err.__traceback__)
            frame = next((f for f in reversed(frames) if "/layerdiff/" in f.filename), frames[-1])
            where = Path(frame.filename)
            kind = f"{type(err).__name__} at {where.parent.name}/{where.name}:{frame.lineno}"
            count, first, first_err = kinds.get(kind, (0, data, err))
            kinds[kind] = (count + 1, first, first_err)
        for kind, (count, data, err) in kinds.items():
            message = (str(err).splitlines() or [""])[0][:150]
            print(f"  {count} x {kind}: {message}\n    first input: {_show(data)}")
        failed = failed or bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
