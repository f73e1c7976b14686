"""Every ONNX model layerdiff writes (compare --save-candidate and --save-emulation, export --format onnx,
apply -o) passes ONNX's full check by path and is topologically sorted, and computes what the candidate
layerdiff compared computes: sorting moves nodes, it changes none."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from layerdiff.errors import LayerdiffError
from layerdiff.graph import max_ir_version, serialize
from layerdiff.modelfile import write_model
from layerdiff.session import prepare
from tests.conftest import FIXTURES, run_plain

CNN, TRANSFORMER, IF_MODEL = FIXTURES / "cnn.onnx", FIXTURES / "transformer.onnx", FIXTURES / "if_model.onnx"
INPUTS = FIXTURES / "cnn_inputs"


def unsorted_read(graph: onnx.GraphProto, known: frozenset[str] = frozenset()) -> str | None:
    """The first node input (in this graph or a subgraph body) that no earlier node, graph input,
    initializer or enclosing graph provides; None when the graph is topologically sorted."""
    seen = set(known) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        missing = next((t for t in node.input if t and t not in seen), None)
        if missing is not None:
            return f"{node.name} reads {missing}"
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                inner = unsorted_read(body, frozenset(seen))
                if inner is not None:
                    return inner
        seen.update(t for t in node.output if t)
    return None


def node_multiset(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.SerializeToString(deterministic=True) for n in model.graph.node)


def assert_valid_and_sorted(path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)  # by path: external data included
    model = onnx.load(str(path))
    assert unsorted_read(model.graph) is None, unsorted_read(model.graph)
    assert model.ir_version <= max_ir_version()
    return model


def assert_same_outputs(path, expected: onnx.ModelProto, feeds) -> None:
    """A plain ONNX Runtime session of the written file gives the outputs of the candidate as built."""
    blob = serialize(expected)
    for feed in feeds:
        got, want = run_plain(str(path), feed), run_plain(blob, feed)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def session_of(model):
    return prepare(model, inputs=INPUTS if model == CNN else None)


# -- compare --save-candidate / --save-emulation ------------------------------------------------------------

@pytest.mark.parametrize("model, spec", [
    (CNN, "ort-int8"), (CNN, "ort-fp16"), (TRANSFORMER, "ort-int8"), (TRANSFORMER, "ort-fp16"),
    (IF_MODEL, "ort-fp16"),
])
def test_compare_saves_valid_sorted_models(cli, tmp_path, model, spec):
    cand_path, emu_path = tmp_path / "cand.onnx", tmp_path / "emu.onnx"
    args = ["compare", model, "--candidate", spec, "-q", "--save-candidate", cand_path]
    if model == CNN:
        args += ["--inputs", INPUTS]
    if spec == "ort-fp16":
        args += ["--save-emulation", emu_path]
    code, _, err = cli(*args)
    assert code == 0, err
    session = session_of(model)
    cand = session.candidate(spec)
    written = assert_valid_and_sorted(cand_path)
    assert node_multiset(written) == node_multiset(cand.model)
    assert_same_outputs(cand_path, cand.model, session.samples.feeds)
    if spec == "ort-fp16":
        emulation = assert_valid_and_sorted(emu_path)
        assert node_multiset(emulation) == node_multiset(cand.executed)
        assert_same_outputs(emu_path, cand.executed, session.samples.feeds)
        # the emulation computes what layerdiff compared
        for got, want in zip((run_plain(str(emu_path), f) for f in session.samples.feeds),
                             session.outputs_on(cand), strict=True):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# -- export --format onnx and apply -o, on recipes bisect wrote -------------------------------------------

@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    """{spec: (model, recipe path)}: a CNN INT8 and a transformer FP16 recipe, each with pins."""
    from layerdiff.cli import main

    out = {}
    for model, spec, extra in ((CNN, "ort-int8", ["--inputs", INPUTS, "--min-cosine", "0.99999"]),
                               (TRANSFORMER, "ort-fp16", ["--min-cosine", "0.9999999"])):
        path = tmp_path_factory.mktemp("recipe") / f"{spec}.json"
        code = main([str(a) for a in ["bisect", model, "--candidate", spec, *extra, "--max-evals", "8", "-q",
                                      "-o", path]])
        assert code == 0
        assert json.loads(path.read_text())["pins"]  # pinned nodes: the builders' edits are exercised
        out[spec] = (model, path)
    return out


@pytest.mark.parametrize("spec", ["ort-int8", "ort-fp16"])
@pytest.mark.parametrize("command", ["export", "apply"])
def test_export_and_apply_write_valid_sorted_models(cli, tmp_path, recipes, spec, command):
    from layerdiff.cli_bisect import _realise_recipe
    from layerdiff.recipe import load_recipe

    model, recipe = recipes[spec]
    saved = tmp_path / "out.onnx"
    inputs = ["--inputs", INPUTS] if model == CNN else []
    if command == "export":
        code, _, err = cli("export", recipe, "--format", "onnx", "-o", saved)
    else:
        code, _, err = cli("apply", recipe, model, *inputs, "-q", "-o", saved)
    assert code == 0, err
    written = assert_valid_and_sorted(saved)
    # the candidate the command builds, built again the way it does
    cand, session = _realise_recipe(load_recipe(recipe), recipe, None, None,
                                    INPUTS if model == CNN else None, ())
    assert node_multiset(written) == node_multiset(cand.model)
    assert_same_outputs(saved, cand.model, session.samples.feeds)


# -- the builders: sorted where the models are made -------------------------------------------------------

@pytest.mark.parametrize("model", [CNN, TRANSFORMER])
def test_builders_make_sorted_candidates(model):
    """INT8 (all-INT8 and with pins) and FP16 candidates are sorted in memory, before any writing:
    TensorRT 11's strongly typed build parses the same models."""
    from layerdiff.plan import PrecisionPlan

    session = session_of(model)
    layers = [lay.name for lay in session.model.layers if lay.name not in session.model.weight_layers]
    own = [n.name for n in onnx.load(str(model)).graph.node]
    for precision in ("int8", "fp16"):
        for plan in (PrecisionPlan.uniform(precision),
                     PrecisionPlan(precision, {layers[0]: "fp32", layers[len(layers) // 2]: "fp32"})):
            cand = session.realise(plan)
            for proto in (cand.model, cand.executed):
                assert unsorted_read(proto.graph) is None, (precision, plan.overrides, unsorted_read(proto.graph))
                # the model's own nodes keep their order: the added ones go in before their readers
                kept = [n.name for n in proto.graph.node if n.name in own]
                assert kept == [n for n in own if n in kept]


@pytest.mark.parametrize("spec", ["ort-int8", "ort-fp16"])
def test_sorting_changes_no_node_and_no_output(monkeypatch, tmp_path, spec):
    """The candidate as the builders made it before they sorted (their sort switched off here: the
    quantizer and the converter append their nodes at the end) holds the same nodes as the sorted one,
    computes the same outputs, and write_model writes it sorted and valid."""
    from layerdiff.backends import fp16, int8

    session = session_of(CNN)
    sorted_cand = session.candidate(spec)
    monkeypatch.setattr(int8, "sort_graph", lambda graph: None, raising=False)
    monkeypatch.setattr(fp16, "sort_graph", lambda graph: None, raising=False)
    unsorted = session_of(CNN).candidate(spec)
    assert unsorted_read(unsorted.model.graph) is not None  # the builders' own order is not topological
    assert node_multiset(unsorted.model) == node_multiset(sorted_cand.model)
    path = tmp_path / "cand.onnx"
    write_model(path, unsorted.model)
    assert_valid_and_sorted(path)
    assert_same_outputs(path, unsorted.model, session.samples.feeds)
    assert_same_outputs(path, sorted_cand.model, session.samples.feeds)


# -- write_model: the guard -------------------------------------------------------------------------------

def _model(nodes, name="g", inputs=("x",), ir_version=8, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2]) for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def test_write_model_sorts_a_copy_and_names_the_graph(tmp_path):
    proto = _model([helper.make_node("Relu", ["a"], ["y"], name="relu"),
                    helper.make_node("Neg", ["x"], ["a"], name="neg")], name="")
    before = proto.SerializeToString()
    path = tmp_path / "m.onnx"
    write_model(path, proto)
    written = assert_valid_and_sorted(path)
    assert [n.name for n in written.graph.node] == ["neg", "relu"] and written.graph.name
    assert proto.SerializeToString() == before  # the caller's model is not edited
    feed = {"x": np.array([1.0, -2.0], np.float32)}
    np.testing.assert_array_equal(run_plain(str(path), feed)["y"], [0.0, 2.0])


def test_write_model_sorts_subgraph_bodies(tmp_path):
    """An If branch whose nodes are out of order (it reads the outer graph's `h` too)."""
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    then = helper.make_graph([helper.make_node("Neg", ["t"], ["b"], name="then_neg"),
                              helper.make_node("Relu", ["h"], ["t"], name="then_relu")], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["b"], name="else_id")], "else", [], [out])
    nodes = [helper.make_node("Abs", ["x"], ["h"], name="abs"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    proto = _model(nodes)
    proto.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    path = tmp_path / "if.onnx"
    write_model(path, proto)
    written = assert_valid_and_sorted(path)
    branch = next(a.g for a in written.graph.node[1].attribute if a.name == "then_branch")
    assert [n.name for n in branch.node] == ["then_relu", "then_neg"]
    feed = {"x": np.array([1.0, -2.0], np.float32), "cond": np.array(True)}
    np.testing.assert_array_equal(run_plain(str(path), feed)["y"], [-1.0, -2.0])


@pytest.mark.parametrize("why, proto", [
    ("a node reads a tensor nothing writes", _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")])),
    ("a cycle", _model([helper.make_node("Add", ["x", "b"], ["a"], name="one"),
                        helper.make_node("Neg", ["a"], ["b"], name="two"),
                        helper.make_node("Relu", ["a"], ["y"], name="three")])),
    ("IR version newer than ONNX Runtime reads", _model([helper.make_node("Relu", ["x"], ["y"])], ir_version=99)),
    ("a node's inputs of two types", _model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                                             helper.make_node("Add", ["x", "i"], ["y"])])),
])
def test_write_model_refuses_an_invalid_model_and_writes_nothing(tmp_path, why, proto):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the user's file")
    with pytest.raises(RuntimeError) as err:  # a bug of layerdiff, not the user's input
        write_model(path, proto)
    assert not isinstance(err.value, LayerdiffError) and "\n" not in str(err.value)
    assert path.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_cli_reports_an_invalid_candidate_as_an_internal_error(cli, tmp_path, monkeypatch):
    from layerdiff.backends.int8 import Int8Quantizer

    real = Int8Quantizer.derive

    def broken(self, pinned):
        out = real(self, pinned)
        out.graph.node[-1].input[0] = "ghost"  # a bug: the last node reads a tensor nothing writes
        return out

    monkeypatch.setattr(Int8Quantizer, "derive", broken)
    saved = tmp_path / "cand.onnx"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "-q",
                       "--save-candidate", saved)
    assert code == 3 and "internal error" in err and "not valid ONNX" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not saved.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spec", ["ort-int8", "ort-fp16", "user-file"])
def test_a_users_unsorted_model_gives_sorted_models(cli, tmp_path, spec):
    """ONNX Runtime loads a model whose nodes are out of order (here the CNN's, reversed); what
    layerdiff writes from it, a candidate built from it or that model saved back as the candidate, is
    sorted and computes the same."""
    model = onnx.load(str(CNN))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    unsorted = tmp_path / "reversed.onnx"
    onnx.save(model, str(unsorted))
    saved = tmp_path / "cand.onnx"
    if spec == "user-file":
        code, _, err = cli("compare", CNN, "--candidate", unsorted, "--inputs", INPUTS, "-q", "--save-candidate", saved)
    else:
        code, _, err = cli("compare", unsorted, "--candidate", spec, "--inputs", INPUTS, "-q",
                           "--save-candidate", saved)
    assert code == 0, err
    written = assert_valid_and_sorted(saved)
    assert len(written.graph.node) >= len(nodes)
    feeds = prepare(CNN, inputs=INPUTS).samples.feeds
    if spec == "user-file":
        assert_same_outputs(saved, model, feeds)
    else:
        cand = prepare(unsorted, inputs=INPUTS).candidate(spec)
        assert node_multiset(written) == node_multiset(cand.model)
        assert_same_outputs(saved, cand.model, feeds)


def test_contrib_qdq_candidates_of_opset_12_models_are_valid(cli, tmp_path):
    """Below opset 13 the Q/DQ are ONNX Runtime's com.microsoft ops: the written model imports that
    domain and passes the check."""
    model = onnx.load(str(CNN))
    model.opset_import[0].version = 12  # the CNN's ops read the same at opset 12
    old = tmp_path / "cnn12.onnx"
    onnx.save(model, str(old))
    saved = tmp_path / "cand.onnx"
    code, _, err = cli("compare", old, "--candidate", "ort-int8", "--inputs", INPUTS, "-q", "--save-candidate", saved)
    assert code == 0, err
    written = assert_valid_and_sorted(saved)
    assert {n.domain for n in written.graph.node if n.op_type == "QuantizeLinear"} == {"com.microsoft"}
    assert "com.microsoft" in {o.domain for o in written.opset_import}
    session = prepare(old, inputs=INPUTS)
    assert_same_outputs(saved, session.candidate("ort-int8").model, session.samples.feeds)
