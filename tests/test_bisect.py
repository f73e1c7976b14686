"""bisect, recipes, export and apply, end to end on the fixtures (FakeBackend, ort-int8, ort-fp16)."""

from __future__ import annotations

import argparse
import json
import shlex

import numpy as np
import onnx
import pytest

from layerdiff.backends.fake import FakeBackend
from layerdiff.bisect import bisect, prepare_split, split_samples
from layerdiff.errors import BadInput
from layerdiff.export import ort_quantize_settings
from layerdiff.plan import PrecisionPlan
from layerdiff.recipe import load_recipe, recipe_dict, write_recipe
from layerdiff.target import Target
from tests.conftest import FIXTURES, cosine64, run_plain

CNN = FIXTURES / "cnn.onnx"
INPUTS = FIXTURES / "cnn_inputs"


def samples_of(path=INPUTS):
    return [dict(np.load(f)) for f in sorted(path.glob("*.npz"))]


@pytest.fixture(scope="module")
def split():
    return prepare_split(CNN, inputs=INPUTS)


def test_the_last_third_is_held_out_and_not_calibrated_on(split):
    session, held = split
    assert len(session.samples) == 3 and len(held) == 1
    assert len(session.calib) == 3  # calibration never sees the held-out sample
    np.testing.assert_array_equal(held.feeds[0]["input"], samples_of()[3]["input"])
    one, none = split_samples(session.samples.__class__((session.samples.feeds[0],), "x"))
    assert none is None and len(one) == 1


def test_fake_errors_are_found_exactly(split):
    session, held = split
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    result = bisect(session, "fake", target, holdout=held, backend=backend)
    assert result.status == "found"
    assert {p.node for p in result.pins} == {"conv2", "fc"}
    assert result.outcome.passed and not result.baseline.passed
    assert result.evaluations <= result.bound
    assert result.holdout is not None and result.holdout.holds


def test_prefix_and_suffix_reproduce_a_contiguous_bisect(split):
    session, held = split
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    order = [lay.name for lay in session.model.layers if lay.name not in session.model.weight_layers]
    prefix = bisect(session, "fake", target, strategy="prefix", backend=backend, evidence=False)
    got = {p.node for p in prefix.pins}
    assert "fc" in got and got == set(order[:order.index("fc") + 1]) & got  # a run from the start to fc
    suffix = bisect(session, "fake", target, strategy="suffix", backend=backend, evidence=False)
    assert "conv2" in {p.node for p in suffix.pins} and len(suffix.pins) > 2


def test_jobs_share_the_cores_and_give_the_same_answer(int8_recipe, monkeypatch):
    import layerdiff.backends.ort as ort_backend

    session, held = prepare_split(CNN, inputs=INPUTS, int8_placement="ort-all")  # the recipe's placement
    made = []
    real = ort_backend.session_options

    def spy(*args, **kwargs):
        so = real(*args, **kwargs)
        made.append(so.intra_op_num_threads)
        return so

    monkeypatch.setattr(ort_backend, "session_options", spy)
    monkeypatch.setattr("layerdiff.bisect._cores", lambda: 4)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    two = bisect(session, "ort-int8", target, holdout=held, jobs=2, evidence=False)
    assert {p.node for p in two.pins} == {p.node for p in int8_recipe[0].pins}
    assert two.evaluations == int8_recipe[0].evaluations
    assert made.count(2) >= two.evaluations  # every evaluated plan ran on 4 // 2 threads
    assert made[-1] == 0  # the held-out check after the search: ONNX Runtime's default again


@pytest.fixture(scope="module")
def int8_recipe(tmp_path_factory):
    # ort-all: onnxruntime.quantization's own arguments rebuild that placement exactly (trt's residual
    # Adds read their Conv branch unquantized, which quantize_static cannot say; --format onnx can)
    session, held = prepare_split(CNN, inputs=INPUTS, int8_placement="ort-all")
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    result = bisect(session, "ort-int8", target, holdout=held)
    path = tmp_path_factory.mktemp("recipe") / "recipe.json"
    write_recipe(recipe_dict(result, session, str(CNN)), path)
    return result, path


def test_int8_answer_meets_the_tolerance_in_a_plain_session(int8_recipe, cli, tmp_path):
    result, path = int8_recipe
    assert result.status == "found" and result.pins
    assert not result.baseline.passed
    saved = tmp_path / "cand.onnx"
    code, out, err = cli("apply", path, CNN, "--inputs", INPUTS, "-o", saved)
    assert code == 0, err
    # the oracle: plain ONNX Runtime sessions of the saved candidate and of the FP32 model, numpy cosines
    samples = samples_of()
    worst = min(cosine64(run_plain(CNN, s)["probs"], run_plain(saved, s)["probs"]) for s in samples[:3])
    assert worst >= 0.99999
    assert worst == pytest.approx(result.outcome.value, abs=1e-9)
    saved_model = onnx.load(saved)
    pinned = {p.node for p in result.pins}
    dq_out = {o for n in saved_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for node in saved_model.graph.node:
        if node.name in pinned:
            assert not set(node.input) & dq_out, f"pinned {node.name} still reads through Q/DQ"
    assert "requested fp32, ran fp32" in out


def test_export_ort_feeds_onnxruntime_quantization(int8_recipe, cli, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantType,
        quantize_static,
    )

    result, path = int8_recipe
    code, text, err = cli("export", path, "--format", "ort")
    assert code == 0, err
    args = json.loads(text)
    assert args["nodes_to_exclude"] == [p.node for p in result.pins]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples_of()[:3])  # the samples bisect calibrated on

        def get_next(self):
            return next(self.it, None)

    theirs = tmp_path / "theirs.onnx"
    quantize_static(str(CNN), str(theirs), Reader(), quant_format=getattr(__import__("onnxruntime.quantization",
                    fromlist=["QuantFormat"]).QuantFormat, args["quant_format"]),
                    activation_type=getattr(QuantType, args["activation_type"]),
                    weight_type=getattr(QuantType, args["weight_type"]), per_channel=args["per_channel"],
                    op_types_to_quantize=args["op_types_to_quantize"], nodes_to_exclude=args["nodes_to_exclude"],
                    extra_options=args["extra_options"], calibrate_method=CalibrationMethod.MinMax)
    ours = tmp_path / "ours.onnx"
    assert cli("export", path, "--format", "onnx", "-o", ours)[0] == 0
    for s in samples_of():
        np.testing.assert_allclose(run_plain(theirs, s)["probs"], run_plain(ours, s)["probs"], atol=1e-6)


def test_export_ort_overrides_rebuild_the_searched_scales_from_any_data(int8_recipe, cli, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.static_quantize_runner import (
        get_tensor_quant_overrides,
    )

    result, path = int8_recipe
    args = json.loads(cli("export", path, "--format", "ort")[1])
    overrides = tmp_path / "overrides.json"
    code, _, err = cli("export", path, "--format", "ort-overrides", "-o", overrides)
    assert code == 0, err
    extra = dict(args["extra_options"], TensorQuantOverrides=get_tensor_quant_overrides(str(overrides)))

    class Reader(CalibrationDataReader):  # other data than bisect calibrated on: the overrides set the scales
        def __init__(self):
            self.it = iter([{k: v * 3 + 1 for k, v in s.items()} for s in samples_of()[3:]])

        def get_next(self):
            return next(self.it, None)

    theirs = tmp_path / "theirs.onnx"
    quantize_static(str(CNN), str(theirs), Reader(), quant_format=getattr(QuantFormat, args["quant_format"]),
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=args["op_types_to_quantize"], nodes_to_exclude=args["nodes_to_exclude"],
                    extra_options=extra)
    ours = tmp_path / "ours.onnx"
    assert cli("export", path, "--format", "onnx", "-o", ours)[0] == 0
    for s in samples_of():
        np.testing.assert_allclose(run_plain(theirs, s)["probs"], run_plain(ours, s)["probs"], atol=1e-6)


def test_export_ort_overrides_refuses_recipes_without_usable_ranges(int8_recipe, cli, tmp_path):
    doc = json.loads(int8_recipe[1].read_text())
    tensor = next(iter(doc["candidate"]["calibration"]["ranges"]["tensors"]))
    doc["candidate"]["calibration"]["ranges"]["tensors"][tensor] = [float("nan"), 1.0]
    (tmp_path / "nan.json").write_text(json.dumps(doc))
    del doc["candidate"]["calibration"]
    (tmp_path / "none.json").write_text(json.dumps(doc))
    for name, message in (("nan.json", f"range of '{tensor}' is not [lowest, highest]"),
                          ("none.json", "carries no INT8 calibration ranges")):
        code, out, err = cli("export", tmp_path / name, "--format", "ort-overrides", "-o", tmp_path / "o.json")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "o.json").exists()


def test_export_polygraphy_parses_with_polygraphys_own_parser(int8_recipe, cli):
    from polygraphy.tools.args import util as args_util
    from polygraphy.tools.convert.convert import Convert

    result, path = int8_recipe
    code, text, _ = cli("export", path, "--format", "polygraphy")
    command = next(line for line in text.splitlines() if line.startswith("polygraphy "))
    parser = argparse.ArgumentParser()
    Convert().setup_parser(parser.add_subparsers())
    args = parser.parse_args(shlex.split(command)[1:])
    assert args.precision_constraints == "obey" and args.int8
    assert args_util.parse_arglist_to_dict(args.layer_precisions, allow_empty_key=False) == \
        {p.node: "float32" for p in result.pins}


def test_export_trtexec_and_modelopt_strings(int8_recipe, cli):
    result, path = int8_recipe
    nodes = [p.node for p in result.pins]
    code, text, _ = cli("export", path, "--format", "trtexec")
    flags = shlex.split(next(line for line in text.splitlines() if line.startswith("trtexec ")))
    assert "--precisionConstraints=obey" in flags and "--int8" in flags
    assert f"--layerPrecisions={','.join(n + ':fp32' for n in nodes)}" in flags
    assert f"--layerOutputTypes={','.join(n + ':fp32' for n in nodes)}" in flags
    assert "TensorRT 11 removed" in text
    code, text, _ = cli("export", path, "--format", "modelopt")
    flags = shlex.split(text.splitlines()[-1])
    at = flags.index("--nodes_to_exclude")
    assert flags[at + 1:] == [f"^{n}$" for n in nodes]
    assert flags[flags.index("--high_precision_dtype") + 1] == "fp32"
    assert "--calibration_data_path=CALIB.npz" in flags  # ModelOpt 0.47's flag (run by hand, see README)
    for fmt in ("trtexec", "polygraphy", "modelopt"):  # the comments fit an 80-column terminal
        text = cli("export", path, "--format", fmt)[1]
        assert all(len(line) <= 80 for line in text.splitlines() if line.startswith("#")), text


def test_max_pins_gives_the_best_plan_within_it_and_fails(split, cli, tmp_path):
    session, held = split
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.02}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    seen = []
    result = bisect(session, "fake", target, backend=backend, max_pins=1, evidence=False,
                    on_outcome=lambda o, n, bound, cached: seen.append(o))
    assert result.status == "max-pins" and not result.outcome.passed and len(result.pins) == 1
    within = [o for o in seen if len(o.pins) <= 1]
    assert len(within) > 2 and all(not target.better(o.value, result.outcome.value) for o in within)
    assert target.better(result.outcome.value, result.baseline.value)  # one pin helps, not enough
    recipe = tmp_path / "r.json"
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99999",
                         "--max-pins", "0", "-o", recipe)
    assert code == 1 and "max-pins" in out and "cosine" in out
    data = json.loads(recipe.read_text())
    assert data["status"] == "max-pins" and data["pins"] == [] and not data["achieved"]["passed"]


def test_fp16_pins_nodes_beyond_fp16_range_first(tmp_path):
    session, held = prepare_split(FIXTURES / "fp16_overflow.onnx")
    target = Target.parse("cosine", 0.999, [], session.model.outputs)
    result = bisect(session, "ort-fp16", target, holdout=held)
    assert "big_matmul" in result.forced and result.plan.precision_of("big_matmul") == "fp32"
    assert result.outcome.passed
    assert any("no held-out samples" in w for w in result.warnings)  # one random sample
    write_recipe(recipe_dict(result, session, str(FIXTURES / "fp16_overflow.onnx")), tmp_path / "r.json")
    assert "big_matmul" in load_recipe(tmp_path / "r.json").nodes


def test_interrupt_keeps_the_best_plan_marked_unfinished(split):
    session, held = split
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    seen = []

    def stop(outcome, n, bound, cached):
        seen.append(outcome)
        if n == 4:
            raise KeyboardInterrupt

    result = bisect(session, "fake", target, backend=backend, on_outcome=stop)
    assert result.status == "interrupted" and result.evaluations == 4
    assert result.outcome.passed  # all pinned passed, so the best so far passes
    assert not recipe_dict(result, session, str(CNN))["finished"]


def test_resume_repeats_no_evaluation(split, tmp_path):
    session, held = split
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    state = tmp_path / "state.json"
    first = bisect(session, "fake", target, backend=backend, state=state, max_evals=5, evidence=False)
    assert first.status == "budget"
    second = bisect(session, "fake", target, backend=backend, state=state, evidence=False)
    assert {p.node for p in second.pins} == {"conv2", "fc"}
    rows = json.loads(state.read_text())["evaluations"]
    assert len(rows) == second.evaluations
    assert len({tuple(r["pins"]) for r in rows}) == len(rows), "an evaluation was repeated"


# -- the command line: results, exit codes, and bad input --------------------------------------------------


def test_cli_bisect_writes_a_recipe_and_apply_checks_it(cli, tmp_path):
    recipe = tmp_path / "r.json"
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99999",
                         "-o", recipe)
    assert code == 0, err
    assert "at most" in err and "pins" in err  # the bound first, then a line per evaluation
    data = json.loads(recipe.read_text())
    assert data["schema"] == "layerdiff.recipe/1" and data["finished"] and data["holdout"]["holds"]
    assert data["pins"] and all(p["precision"] == "fp32" and p["covers"] for p in data["pins"])
    assert data["model"]["sha256"] and data["tolerance"]["threshold"] == 0.99999
    # the result lines fit 80 columns (prose such as warnings is never broken when piped: readers wrap it)
    assert all(len(line) <= 80 for line in out.splitlines() if not line.startswith(("warning:", "recipe written")))


@pytest.mark.parametrize("extra, message", [
    (["--outputs", "nope"], "not a final output"),
    (["--outputs", "probs[:, 20:]"], "selects no element"),
    (["--outputs", "probs[0, 0, 0]"], "does not fit"),
    (["--metric", "max-abs", "--min", "0.1"], "--max"),
    (["--min", "0.9", "--max", "0.1"], "one threshold"),
])
def test_cli_bad_tolerances(cli, tmp_path, extra, message):
    recipe = tmp_path / "r.json"
    args = ["bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "-o", recipe, *extra]
    if "--min" not in extra and "--max" not in extra:
        args += ["--min-cosine", "0.999"]
    code, out, err = cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not recipe.exists()


def test_cli_tolerance_met_and_unreachable(cli, tmp_path):
    recipe = tmp_path / "r.json"
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99",
                         "-o", recipe)
    assert code == 0 and "already met" in out
    assert json.loads(recipe.read_text())["pins"] == []
    recipe.unlink()
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--metric", "max-abs",
                         "--max", "0", "-o", recipe)
    assert code == 1 and "even with all" in err
    assert not recipe.exists()


def test_cli_state_files_of_another_run_or_damaged(cli, tmp_path):
    state = tmp_path / "s.json"
    state.write_text("{not json")
    base = ["bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99999"]
    code, _, err = cli(*base, "--resume", state)
    assert code == 2 and "damaged" in err
    state.unlink()
    assert cli(*base, "--resume", state)[0] == 0
    code, _, err = cli(*base[:-1], "0.9999", "--metric-fn", "x.py:f", "--resume", state)
    assert code == 2
    code, _, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--metric", "sqnr", "--min",
                       "60", "--resume", state)
    assert code == 2 and "another search" in err


def test_recipes_of_another_model_or_schema(cli, int8_recipe, tmp_path):
    _, path = int8_recipe
    code, _, err = cli("apply", path, FIXTURES / "transformer.onnx")
    assert code == 2 and "another model" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(path.read_text()), "schema": "layerdiff.recipe/9"}))
    code, _, err = cli("export", other, "--format", "trtexec")
    assert code == 2 and "schema" in err
    other.write_text("[1, 2]")
    assert cli("export", other, "--format", "ort")[0] == 2
    with pytest.raises(BadInput, match="not found"):
        load_recipe(tmp_path / "none.json")
    before = CNN.read_bytes()
    code, _, err = cli("export", path, "--format", "onnx", "-o", CNN)  # the recipe's model: never overwritten
    assert code == 2 and "input" in err and CNN.read_bytes() == before


def test_a_slice_of_an_output_as_the_tolerance(split):
    session, held = split
    backend = FakeBackend(session.model, errors={"fc": 0.05}, default_error=0.0)
    whole = Target.parse("cosine", 0.99999, [], session.model.outputs)
    part = Target.parse("cosine", 0.99999, ["probs[:, :3]"], session.model.outputs)
    a = bisect(session, "fake", whole, backend=backend, evidence=False)
    b = bisect(session, "fake", part, backend=backend, evidence=False)
    assert {p.node for p in a.pins} == {"fc"} and {p.node for p in b.pins} == {"fc"}
    assert b.baseline.value != a.baseline.value  # the slice is measured on its own


def test_fp16_nodes_pinned_side_by_side_exchange_fp32_values():
    # onnxruntime's converter casts every tensor between two blocked nodes down to FP16 and back (an
    # overflow to inf beyond 65504); a pinned node must read its FP32 neighbour's values as they are
    import layerdiff
    from layerdiff.plan import PrecisionPlan

    session = layerdiff.prepare(FIXTURES / "fp16_overflow.onnx")
    every = [lay.name for lay in session.model.layers if lay.name not in session.model.weight_layers]
    cand = session.candidate("ort-fp16", PrecisionPlan.uniform("fp16", every))
    assert not [n for n in cand.model.graph.node if n.op_type == "Cast"]
    feed = session.samples.feeds[0]
    np.testing.assert_array_equal(run_plain(cand.model.SerializeToString(), feed)["out"],
                                  run_plain(str(FIXTURES / "fp16_overflow.onnx"), feed)["out"])
    one = session.candidate("ort-fp16", PrecisionPlan.uniform("fp16", ["big_matmul"]))
    big = next(n for n in one.model.graph.node if n.name == "big_matmul")
    assert big.input[0] == "x"  # the graph input, not a round trip through FP16


def test_fp16_keeps_an_integer_cast_to_float_before_a_node_left_in_fp32(tmp_path):
    """YOLOv8's head: Shape -> Gather -> Cast(to FLOAT) -> Range. The converter turns the model's Cast
    into one to FP16 and casts back up before Range (which it leaves in FP32): that is no round trip of
    an FP32 tensor, and Range must keep reading a float (it read the int64 and the candidate did not
    load: a new user's crash on NudeNet's YOLOv8)."""
    import layerdiff
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.1, np.float32), "w")
    inits = [w, numpy_helper.from_array(np.array([2], np.int64), "axis_idx"),
             numpy_helper.from_array(np.array(0.5, np.float32), "start"),
             numpy_helper.from_array(np.array(1.0, np.float32), "delta")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Shape", ["y"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "axis_idx"], ["h"], name="gather", axis=0),
             helper.make_node("Squeeze", ["h"], ["h0"], name="squeeze"),
             helper.make_node("Cast", ["h0"], ["hf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Range", ["start", "hf", "delta"], ["r"], name="range")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, r], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "range.onnx"
    onnx.save(model, path)
    session = layerdiff.prepare(path)
    cand = session.candidate("ort-fp16")
    range_node = next(n for n in cand.model.graph.node if n.name == "range")
    assert range_node.input[1] != "h0"  # it reads a float, not the int64
    feed = session.samples.feeds[0]
    got, want = run_plain(cand.model.SerializeToString(), feed), run_plain(str(path), feed)
    np.testing.assert_array_equal(got["r"], want["r"])


def test_fp16_two_pinned_readers_of_one_fp16_tensor_load(tmp_path):
    """Two nodes kept in FP32 reading one FP16 tensor: the converter gives each a Cast up of the same
    name and output, which ONNX Runtime refuses to load; layerdiff keeps one (the pinned nodes then
    compute exactly what the FP32 model does on the FP16-rounded tensor)."""
    import layerdiff
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16]) for n in ("a", "b")]
    inits = [numpy_helper.from_array(np.full((1, 16), 1.5, np.float32), "k")]
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"),
             helper.make_node("Add", ["t", "k"], ["a"], name="add"),
             helper.make_node("Mul", ["t", "t"], ["b"], name="mul")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "two_readers.onnx"
    onnx.save(model, path)
    session = layerdiff.prepare(path)
    cand = session.candidate("ort-fp16", PrecisionPlan.uniform("fp16", ["add", "mul"]))
    names = [n.name for n in cand.model.graph.node]
    assert len(names) == len(set(names))
    feed = session.samples.feeds[0]
    t16 = np.maximum(feed["x"], 0).astype(np.float16).astype(np.float32)
    # the model layerdiff runs (the CPU has no FP16 Relu: emulated, its output rounded to FP16)
    got = run_plain(cand.executed.SerializeToString(), feed)
    np.testing.assert_array_equal(got["a"], t16 + np.float32(1.5))
    np.testing.assert_array_equal(got["b"], t16 * t16)


def test_fp16_pinned_layers_read_their_constant_weights_unrounded(tmp_path):
    # weights as Constant nodes (PaddlePaddle's exports): a pinned layer must not read them rounded to
    # FP16 and cast back up; with every compute node pinned the candidate is the FP32 model bit for bit
    import layerdiff
    from layerdiff.plan import PrecisionPlan

    w = onnx.numpy_helper.from_array(np.full((4, 4), 0.1, np.float32) + np.eye(4, dtype=np.float32) / 3, "w")
    nodes = [onnx.helper.make_node("Constant", [], ["W"], name="weights", value=w),
             onnx.helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
             onnx.helper.make_node("MatMul", ["r", "W"], ["y"], name="mm2")]
    graph = onnx.helper.make_graph(nodes, "const_weights",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])])
    path = tmp_path / "const.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9), path)
    session = layerdiff.prepare(path)
    feed = session.samples.feeds[0]
    every = session.candidate("ort-fp16", PrecisionPlan.uniform("fp16", ["mm", "relu", "mm2"]))
    assert not [n for n in every.model.graph.node if n.op_type == "Cast"]
    np.testing.assert_array_equal(run_plain(every.model.SerializeToString(), feed)["y"], run_plain(str(path), feed)["y"])
    one = session.candidate("ort-fp16", PrecisionPlan.uniform("fp16", ["mm"]))  # W shared with an FP16 reader
    mm = next(n for n in one.model.graph.node if n.name == "mm")
    producer = {o: n for n in one.model.graph.node for o in n.output}[mm.input[1]]
    assert producer.op_type == "Constant" and producer.attribute[0].t.data_type == onnx.TensorProto.FLOAT
    none = session.candidate("ort-fp16")  # nothing pinned: the weights are FP16 as before
    const = next(n for n in none.model.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == onnx.TensorProto.FLOAT16


def test_compare_checks_min_cosine_on_a_slice(cli, tmp_path):
    saved, report = tmp_path / "cand.onnx", tmp_path / "r.json"
    base = ["compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "-q"]
    code, _, err = cli(*base, "--min-cosine", "-1", "--outputs", "probs[:, :3]", "--save-candidate", saved, "-o", report)
    assert code == 0, err
    tol = json.loads(report.read_text())["tolerance"]
    assert tol["outputs"] == ["probs[:, :3]"] and tol["passed"]
    # the oracle: plain sessions and numpy, on the slice only (the FP32 session here runs ONNX Runtime's
    # graph optimizations, layerdiff's reference does not: cosines agree to ~1e-8)
    worst = min(cosine64(run_plain(CNN, s)["probs"][:, :3], run_plain(saved, s)["probs"][:, :3]) for s in samples_of())
    assert cli(*base, "--min-cosine", str(worst - 1e-6), "--outputs", "probs[:, :3]")[0] == 0
    code, _, err = cli(*base, "--min-cosine", str(min(1.0, worst + (1 - worst) / 2)), "--outputs", "probs[:, :3]")
    assert code == 1 and "probs[:, :3]" in err
    code, _, err = cli(*base, "--outputs", "probs")
    assert code == 2 and "--min-cosine" in err
    code, _, err = cli(*base, "--min-cosine", "0.9", "--outputs", "probs[:, 99:]")
    assert code == 2 and "selects no element" in err


@pytest.mark.parametrize("change, said", [
    ({"status": "budget"}, "status 'budget'"),
    ({"finished": False, "status": "interrupted"}, "unfinished"),
    ({"holdout": {"samples": 1, "source": "x", "achieved": 0.5, "holds": False}}, "fails its held-out samples"),
])
def test_export_warns_of_a_recipe_not_to_trust(int8_recipe, cli, tmp_path, change, said):
    sound = int8_recipe[1]
    data = json.loads(sound.read_text())
    data.update(change)
    doubtful = tmp_path / "doubtful.recipe.json"
    doubtful.write_text(json.dumps(data))
    code, out, err = cli("export", doubtful, "--format", "trtexec")
    assert code == 0 and said in err and "warning" in err
    assert out == cli("export", sound, "--format", "trtexec")[1]  # the command itself is unchanged
    # a sound recipe: only what bisect said of it when it wrote it (every warning that applies is printed)
    stored = json.loads(sound.read_text())["warnings"]
    assert cli("export", sound, "--format", "trtexec")[2] == "".join(f"layerdiff: warning: {w}\n" for w in stored)


def test_export_prints_every_doubt_a_held_out_failure_first(int8_recipe, cli, tmp_path):
    data = json.loads(int8_recipe[1].read_text())
    data.update({"status": "budget", "holdout": {"samples": 1, "source": "x", "achieved": 0.5, "holds": False},
                 "warnings": ["the metric varies more between samples than the gap being closed"]})
    doubtful = tmp_path / "doubtful.recipe.json"
    doubtful.write_text(json.dumps(data))
    code, _, err = cli("export", doubtful, "--format", "trtexec")
    lines = err.splitlines()
    assert code == 0 and len(lines) == 3
    assert "fails its held-out samples" in lines[0] and "status 'budget'" in lines[1] and "varies more" in lines[2]


@pytest.fixture(scope="module")
def renamed_cnn(tmp_path_factory):
    """The CNN with conv2's name cleared and conv4 named as conv3 is: two names layerdiff must give."""
    proto = onnx.load(CNN)
    by = {n.name: n for n in proto.graph.node}
    conv2_out = by["conv2"].output[0]
    by["conv2"].name = ""
    by["conv4"].name = "conv3"
    path = tmp_path_factory.mktemp("renamed") / "cnn_renamed.onnx"
    onnx.save(proto, path)
    return path, conv2_out


def _fake_recipe(model, outputs, path, error=0.05):
    """A recipe of bisect's answer on `model` where the nodes writing `outputs` err (FakeBackend), marked
    as an ort-int8 recipe so that every export format takes it."""
    session, held = prepare_split(model, inputs=INPUTS)
    names = {lay.outputs[0]: lay.name for lay in session.model.layers}
    errors = {names[t]: error for t in outputs}
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    result = bisect(session, "fake", target, backend=FakeBackend(session.model, errors=errors, default_error=0.0),
                    evidence=False)
    data = recipe_dict(result, session, str(model))
    data["candidate"].update(spec="ort-int8", precision="int8",
                             ort_quantize=ort_quantize_settings({n.op_type for n in session.model.proto.graph.node}))
    write_recipe(data, path)
    return result


def test_exports_name_an_unnamed_node_as_tensorrt_does(renamed_cnn, cli, tmp_path):
    """TensorRT's ONNX parser names an unnamed node's layer "node_of_" + its first output (onnx-tensorrt
    getNodeName): the trtexec and polygraphy exports must use that name, not the one layerdiff gave."""
    model, conv2_out = renamed_cnn
    path = tmp_path / "r.json"
    result = _fake_recipe(model, [conv2_out], path)
    (pin,) = [p.node for p in result.pins]
    assert pin != "conv2" and pin not in {n.name for n in onnx.load(model).graph.node}
    assert json.loads(path.read_text())["names_in_model"] == {pin: {"name": "", "output": conv2_out}}
    code, text, _ = cli("export", path, "--format", "trtexec")
    flags = shlex.split(text.splitlines()[-1])
    assert code == 0 and f"--layerPrecisions=node_of_{conv2_out}:fp32" in flags and pin not in text.splitlines()[-1]
    code, text, _ = cli("export", path, "--format", "polygraphy")
    assert code == 0 and f"node_of_{conv2_out}:float32" in shlex.split(text.splitlines()[-1])
    for fmt, tool in (("modelopt", "ModelOpt"), ("ort", "quantize_static")):
        code, out, err = cli("export", path, "--format", fmt)
        assert code == 2 and out == ""
        assert err.strip() == (f"layerdiff: error: node {pin} has no name in the model ({pin} is layerdiff's name "
                               f"for it), so {tool} cannot exclude it by name: give the model's nodes unique names, "
                               "or use --format onnx, which puts the recipe in the model itself")


def test_exports_refuse_a_node_whose_name_another_node_shares(renamed_cnn, cli, tmp_path):
    model, _ = renamed_cnn
    path = tmp_path / "r.json"
    second = onnx.load(model).graph.node
    conv4_out = next(n.output[0] for n in second if n.op_type == "Conv" and n.name == "conv3" and "conv4" in n.input[1])
    result = _fake_recipe(model, [conv4_out], path, error=0.5)
    (pin,) = [p.node for p in result.pins]
    assert pin != "conv3"
    for fmt in ("trtexec", "polygraphy", "modelopt", "ort"):
        code, out, err = cli("export", path, "--format", fmt)
        assert code == 2 and out == "" and "shares its name 'conv3' with another node" in err, (fmt, err)
        assert len(err.strip().splitlines()) == 1
    # the node that kept the shared name is refused too: TensorRT and the quantizers cannot tell it apart
    first = tmp_path / "first.json"
    conv3_out = next(n.output[0] for n in second if n.name == "conv3" and "conv3" in n.input[1])
    (kept,) = [p.node for p in _fake_recipe(model, [conv3_out], first, error=0.5).pins]
    assert kept == "conv3"
    for fmt in ("trtexec", "polygraphy", "modelopt", "ort"):
        code, out, err = cli("export", first, "--format", fmt)
        assert code == 2 and out == "" and "node conv3 shares its name 'conv3' with another node" in err, (fmt, err)
    # the recipe in the model itself is still there to take
    code, _, err = cli("export", path, "--format", "onnx", "--model", model, "-o", tmp_path / "m.onnx")
    assert code == 0, err


def test_named_nodes_export_under_their_own_names(int8_recipe):
    _, path = int8_recipe
    assert json.loads(path.read_text())["names_in_model"] == {}
