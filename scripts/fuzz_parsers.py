"""Fuzz layerdiff's file parsers with hypothesis: whatever a file holds, a parser returns its result or
raises its own error (one line), never anything else.

    python scripts/fuzz_parsers.py [--cases 10000] [--target engine-info] [--seed N]

Each entry of TARGETS is one parser: a hypothesis strategy of file contents and a check that parses one
file. tests/test_fuzz_engine_info.py runs the same strategies with fewer cases. To fuzz another parser
(Polygraphy results, reports, recipes), add its strategy and check and one TARGETS entry.
"""

from __future__ import annotations

import argparse
import copy
import json
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
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        if not paths:
            break
        interesting = [p for p in paths if p[-1] in KEYS]
        path = draw(st.sampled_from(interesting if interesting and draw(st.booleans()) else paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["delete", "wrong type", "garbage"]))
        if how == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(WRONG if how == "wrong type" else json_values))  # WRONG's are shared
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


# ---------------------------------------------------------------- targets


class Target(NamedTuple):
    inputs: Callable[[], st.SearchStrategy[bytes]]  # file contents to try
    check: Callable[[Path], None]  # parses one file; raises on a bug
    needs: Path | None = None  # real files its strategy also mutates, where present


TARGETS: dict[str, Target] = {
    "engine-info": Target(engine_info_inputs, check_engine_info, ENGINE_INFO_DIR),
}


def fuzz(target: Target, cases: int, seed_value: int | None = None) -> tuple[int, list[tuple[bytes, BaseException]]]:
    """Run `cases` inputs through `target.check`; return how many ran and the (input, exception) of each
    failure. Not stopping at the first failure, and not shrinking: this counts failures."""
    failures: list[tuple[bytes, BaseException]] = []
    ran = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input"

        @settings(max_examples=cases, deadline=None, database=None, derandomize=seed_value is None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(target.inputs())
        def one(data: bytes) -> None:
            nonlocal ran
            ran += 1
            path.write_bytes(data)
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
        kinds: dict[str, tuple[int, bytes, BaseException]] = {}
        for data, err in failures:  # one line per exception type and place raised
            frames = traceback.extract_tb(err.__traceback__)
            frame = next((f for f in reversed(frames) if "/layerdiff/" in f.filename), frames[-1])
            where = Path(frame.filename)
            kind = f"{type(err).__name__} at {where.parent.name}/{where.name}:{frame.lineno}"
            count, first, first_err = kinds.get(kind, (0, data, err))
            kinds[kind] = (count + 1, first, first_err)
        for kind, (count, data, err) in kinds.items():
            message = (str(err).splitlines() or [""])[0][:150]
            print(f"  {count} x {kind}: {message}\n    first input: {data[:200]!r}{'...' if len(data) > 200 else ''}")
        failed = failed or bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
