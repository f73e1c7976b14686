"""Damaged JSON files of every kind layerdiff reads: one line naming the file, a BadInput subclass (exit 2
on the command line), never an internal error (exit 3), and never a value "measured" from a damaged
number. Every kind goes through layerdiff.jsonread's one reader, with the same limits (size, depth,
NaN/Infinity/1e999, integers of thousands of digits); each kind then checks its own fields."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from layerdiff import jsonread
from layerdiff.backends.calibrate import RangesCache, activations
from layerdiff.backends.imported import load_polygraphy_results
from layerdiff.bisect import bisect, prepare_split
from layerdiff.bisect_state import STATE_SCHEMA, SearchState
from layerdiff.engine_info import parse_engine_info
from layerdiff.engine_info.profile import read_trt_profile
from layerdiff.errors import BadInput, EngineInfoError, InputDataError, ReportError
from layerdiff.inputs import load_samples
from layerdiff.recipe import load_recipe, recipe_dict, write_recipe
from layerdiff.report import load_report
from layerdiff.search import Outcome
from layerdiff.session import prepare
from layerdiff.target import Target
from tests.conftest import FIXTURES, load_script

CNN = FIXTURES / "cnn.onnx"
INPUTS = FIXTURES / "cnn_inputs"
try:
    fuzz = load_script("fuzz_parsers")  # its pickled payloads
except SystemExit:  # no hypothesis
    fuzz = None


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An ort-int8 recipe of the CNN fixture (with calibration ranges) and the state file of its search."""
    tmp = tmp_path_factory.mktemp("made")
    session, held = prepare_split(CNN, inputs=INPUTS)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    result = bisect(session, "ort-int8", target, holdout=held, state=tmp / "state.json", evidence=False)
    write_recipe(recipe_dict(result, session, str(CNN)), tmp / "recipe.json")
    return {"recipe": json.loads((tmp / "recipe.json").read_text()),
            "state": json.loads((tmp / "state.json").read_text()), "samples": len(session.samples)}


def _one_line(err: BaseException, path) -> str:
    text = str(err)
    assert "\n" not in text and str(path) in text, text
    return text


# ---------------------------------------------------------------- every kind, the same limits

def _npy_b64(arr) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


# each kind: (a file holding @@ where a damaged value goes, otherwise one the reader gets through, how it
# is read, the error class)
FEED = {"input": {"array": _npy_b64(np.zeros((1, 3, 32, 32), np.float32)), "polygraphy_class": "ndarray"}}


def _read_state(path):
    return SearchState(path, {}).load(Target.parse("cosine", 0.9, [], ["probs"]))


def _read_inputs(path):
    from layerdiff.graph import load_model

    return load_samples(path, load_model(CNN).inputs, {})


KINDS = {
    "recipe": (None, load_recipe, BadInput),
    "state": (json.dumps({"schema": STATE_SCHEMA, "evaluations": [{"pins": [], "per_sample": ["@@"]}]}),
              _read_state, BadInput),
    "cache": (json.dumps({"method": "MinMax", "tensors": {"x": [0.0, "@@"]}}),
              lambda p: RangesCache(p.parent, "", "", _NoSamples()).load(), InputDataError),
    "report": (json.dumps({"schema": "layerdiff.report/1", "warnings": ["@@"]}), load_report, ReportError),
    "trt profile": (json.dumps([{"count": 1}, {"name": "a", "medianMs": 1.0, "percentage": "@@"}]),
                    read_trt_profile, BadInput),
    "engine info": (json.dumps({"Layers": [{"Name": "a", "LayerType": "NoOp", "Extra": "@@"}]}),
                    lambda p: parse_engine_info(p), EngineInfoError),
    "polygraphy results": (json.dumps({"lst": [], "polygraphy_class": "RunResults", "extra": "@@"}),
                           lambda p: load_polygraphy_results(p, ("probs",), 1), BadInput),
    "polygraphy inputs": (json.dumps([{**FEED, "extra": "@@"}]), _read_inputs, InputDataError),
}
# the damaged value, and a word the message holds
DAMAGE = {
    "NaN": ("NaN", "NaN"),
    "-Infinity": ("-Infinity", "Infinity"),
    "1e999": ("1e999", ("1e999", "Infinity")),
    "5000-digit integer": ("7" * 5000, "digits"),
    "100 deep": ("[" * 100 + "]" * 100, "deep"),
    "100,000 deep": ("[" * 100_000 + "]" * 100_000, "deep"),
}


class _NoSamples:
    def digest(self) -> str:
        return ""


def _damaged_file(tmp_path, kind, value, made):
    template = KINDS[kind][0]
    if template is None:  # a recipe bisect wrote, with one more field
        template = json.dumps({**made["recipe"], "extra": "@@"})
    if kind == "cache":
        path = RangesCache(tmp_path, "", "", _NoSamples()).path
    else:
        path = tmp_path / ("in.json" if kind != "trt profile" else "profile.json")
    path.write_text(template.replace('"@@"', value))
    return path


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_refuses_numbers_json_lacks_and_deep_nesting(tmp_path, made, kind, damage):
    value, words = DAMAGE[damage]
    path = _damaged_file(tmp_path, kind, value, made)
    with pytest.raises(KINDS[kind][2]) as err:
        KINDS[kind][1](path)
    text = _one_line(err.value, path)
    assert any(w in text for w in ((words,) if isinstance(words, str) else words)), text


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if not k.startswith("polygraphy")))
def test_every_kind_refuses_a_file_over_the_size_limit(tmp_path, made, monkeypatch, kind):
    """Polygraphy's results and inputs hold the user's tensors: they have no size limit."""
    path = _damaged_file(tmp_path, kind, "1", made)
    monkeypatch.setattr(jsonread, "MAX_BYTES", path.stat().st_size - 1)
    with pytest.raises(KINDS[kind][2]) as err:
        KINDS[kind][1](path)
    assert f"{path.stat().st_size:,} bytes, more than the" in _one_line(err.value, path)


def test_the_templates_are_read_when_undamaged(tmp_path, made):
    """The premise of the table above: with a plain number where the damage goes, each file gets past
    the reader (the kinds that refuse it then do so for another reason)."""
    assert load_recipe(_damaged_file(tmp_path, "recipe", "1", made)).pins
    assert len(_read_state(_damaged_file(tmp_path, "state", "1", made))) == 1
    assert read_trt_profile(_damaged_file(tmp_path, "trt profile", "1", made)).layers == (("a", 1.0),)
    assert parse_engine_info(_damaged_file(tmp_path, "engine info", "1", made)).layers[0].name == "a"
    with pytest.raises(InputDataError, match="input 'extra' is not an array"):
        _read_inputs(_damaged_file(tmp_path, "polygraphy inputs", "1", made))
    with pytest.raises(BadInput, match="holds no runner results"):
        load_polygraphy_results(_damaged_file(tmp_path, "polygraphy results", "1", made), ("probs",), 1)


# ---------------------------------------------------------------- recipes


def _tensors(doc):
    return doc["candidate"]["calibration"]["ranges"]["tensors"]


RECIPE_DAMAGE = {
    "NaN range": (lambda d: _tensors(d).update(input=[float("nan"), 1.0]),
                  "range of 'input' is not [lowest, highest] of two finite float32 numbers"),
    "infinite range": (lambda d: _tensors(d).update(input=[float("-inf"), float("inf")]),
                       "range of 'input' is not [lowest, highest]"),
    "empty range": (lambda d: _tensors(d).update(input=[]), "range of 'input' is not [lowest, highest]"),
    "range beyond float32": (lambda d: _tensors(d).update(input=[-1e39, 1e39]),
                             "range of 'input' is not [lowest, highest]"),
    "lowest above highest": (lambda d: _tensors(d).update(input=[2.0, -2.0]), "with lowest <= highest: it is [2.0, -2.0]"),
    "no ranges": (lambda d: d["candidate"]["calibration"]["ranges"].update(tensors={}),
                  "candidate.calibration.ranges: no tensor has a range"),
    "unknown method": (lambda d: d["candidate"]["calibration"]["ranges"].update(method="Foo"),
                       'the method is "Foo", not one of MinMax, Entropy, Percentile'),
    "calibration method an object": (lambda d: d["candidate"]["calibration"].update(method={}),
                                     "candidate.calibration.method is {}, not one of minmax, entropy, percentile"),
    "calibration a list": (lambda d: d["candidate"].update(calibration=[1]), "candidate.calibration is not an object"),
    "threshold a string": (lambda d: d["tolerance"].update(threshold="x"),
                           'tolerance.threshold is "x", not a finite number'),
    "outputs a number": (lambda d: d["tolerance"].update(outputs=5), "tolerance.outputs is not a list of strings"),
    "ort_optimization a number": (lambda d: d["candidate"].update(ort_optimization=5),
                                  "candidate.ort_optimization is 5, not one of all, extended, basic, disabled"),
    "engine_layers of numbers": (lambda d: d["pins"][0].update(engine_layers=[1]),
                                 "pins[0]: engine_layers and covers are not a list of strings"),
    "achieved NaN": (lambda d: d["achieved"].update(value=float("nan")),
                     "achieved.value is NaN, which is not a JSON number"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_DAMAGE))
def test_damaged_recipe_fields_are_named(tmp_path, made, case):
    edit, message = RECIPE_DAMAGE[case]
    doc = json.loads(json.dumps(made["recipe"]))
    edit(doc)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    assert _one_line(err.value, path).startswith(f"{path} is a damaged layerdiff recipe (")
    assert message in str(err.value)


@pytest.mark.parametrize("case", ["NaN range", "infinite range", "threshold a string", "ort_optimization a number"])
def test_apply_refuses_a_damaged_recipe_with_exit_2(cli, tmp_path, made, case):
    """These were an internal error (exit 3), or (infinite ranges) measured as a cosine of -inf."""
    edit, message = RECIPE_DAMAGE[case]
    doc = json.loads(json.dumps(made["recipe"]))
    edit(doc)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    code, out, err = cli("apply", path, CNN, "--inputs", INPUTS, "-q")
    assert (code, out) == (2, "")
    assert err.startswith(f"layerdiff: error: {path} is a damaged layerdiff recipe (") and message in err
    assert err.count("\n") == 1


def test_export_refuses_a_recipe_nested_100000_deep(cli, tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    code, out, err = cli("export", path, "--format", "trtexec")
    assert (code, out) == (2, "")
    assert err == f"layerdiff: error: {path} is a damaged layerdiff recipe (it nests arrays or objects thousands deep)\n"


def test_a_recipe_with_a_number_json_lacks_is_written_with_null_and_reads_back(tmp_path, made):
    doc = json.loads(json.dumps(made["recipe"]))
    doc["achieved"]["value"] = float("-inf")
    doc["baseline"]["value"] = float("nan")
    write_recipe(doc, tmp_path / "r.json")
    assert "Infinity" not in (tmp_path / "r.json").read_text() and "NaN" not in (tmp_path / "r.json").read_text()
    data = load_recipe(tmp_path / "r.json").data
    assert data["achieved"]["value"] is None and data["baseline"]["value"] is None


# ---------------------------------------------------------------- bisect state files (--resume)


def _state(tmp_path, made, edit=None, text=None):
    doc = json.loads(json.dumps(made["state"]))
    if edit:
        edit(doc)
    path = tmp_path / "s.json"
    path.write_text(text if text is not None else json.dumps(doc))
    identity = {k: v for k, v in made["state"].items() if k != "evaluations"}
    return path, SearchState(path, identity)


TARGET = Target.parse("cosine", 0.99999, [], ["probs"])


def test_a_state_file_written_by_bisect_loads_with_values_json_lacks(tmp_path, made):
    path, store = _state(tmp_path, made)
    assert len(store.load(TARGET, made["samples"])) == len(made["state"]["evaluations"])
    store.add(Outcome(frozenset({"conv1"}), float("-inf"), (float("nan"), float("-inf"), 0.5), False, 0.25))
    assert '"nan"' in path.read_text() and '"-inf"' in path.read_text()
    outcomes = SearchState(path, store.identity).load(TARGET, made["samples"])
    assert len(outcomes) == len(made["state"]["evaluations"]) + 1
    last = outcomes[-1]
    assert last.pins == {"conv1"} and np.isnan(last.per_sample[0]) and last.per_sample[1:] == (float("-inf"), 0.5)
    assert np.isnan(last.value) and not last.passed  # the worst of a NaN is NaN, which fails


STATE_DAMAGE = {
    "nested 100,000 deep": (None, '{"a": ' * 100_000 + "1" + "}" * 100_000, "it nests arrays or objects thousands deep"),
    "NaN": (None, "NaN", "it holds NaN, which is not a JSON number"),
    "one value for 3 samples": (lambda d: d["evaluations"][1].update(per_sample=[0.5]), None,
                                "evaluations[1] has 1 per-sample value(s), not one for each of the 3 sample(s)"),
    "a value a word": (lambda d: d["evaluations"][0].update(per_sample=["high", 1, 1]), None,
                       'evaluations[0].per_sample is not a list of numbers (or "inf", "-inf", "nan")'),
    "pins of numbers": (lambda d: d["evaluations"][0].update(pins=[1]), None, "evaluations[0].pins is not a list of"),
    "seconds negative": (lambda d: d["evaluations"][0].update(seconds=-1), None,
                         "evaluations[0].seconds is -1, not a number of seconds"),
    "evaluations an object": (lambda d: d.update(evaluations={}), None, "evaluations is not a list"),
}


@pytest.mark.parametrize("case", sorted(STATE_DAMAGE))
def test_damaged_state_files_are_one_line_bad_input(tmp_path, made, case):
    edit, text, message = STATE_DAMAGE[case]
    path, store = _state(tmp_path, made, edit, text)
    with pytest.raises(BadInput) as err:
        store.load(TARGET)
    text = _one_line(err.value, path)
    assert text.startswith(f"--resume {path} is damaged (") and text.endswith("); delete it or give another path")
    assert message in text


def test_per_sample_values_are_counted_against_the_search(tmp_path, made):
    """Every evaluation with one value, for a search of 3 samples: consistent in itself, refused when the
    count of this search is given."""
    def one_each(doc):
        for row in doc["evaluations"]:
            row["per_sample"] = row["per_sample"][:1]

    path, store = _state(tmp_path, made, one_each)
    assert len(store.load(TARGET)) == len(made["state"]["evaluations"])  # no count to check against
    with pytest.raises(BadInput, match=r"evaluations\[0\] has 1 per-sample value\(s\), not one for each of the 3"):
        SearchState(path, store.identity).load(TARGET, made["samples"])


def test_cli_resume_of_a_state_nested_100000_deep_is_exit_2(cli, tmp_path):
    state = tmp_path / "s.json"
    state.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99999",
                       "--resume", state, "-q")
    assert code == 2
    assert err == (f"layerdiff: error: --resume {state} is damaged (it nests arrays or objects thousands deep); "
                   "delete it or give another path\n")


def test_resume_refuses_a_state_of_another_ort_optimization(tmp_path):
    """The ONNX Runtime optimization level changes what an INT8 plan computes (8 of 18 evaluations of the
    CNN differ between all and basic): a state file of one level is not the search of another."""
    state = tmp_path / "s.json"
    target = Target.parse("cosine", 0.99999, [], ["probs"])
    session, _ = prepare_split(CNN, inputs=INPUTS, optimization="all")
    bisect(session, "ort-int8", target, state=state, max_evals=3, evidence=False)
    other, _ = prepare_split(CNN, inputs=INPUTS, optimization="basic")
    with pytest.raises(BadInput, match="was written by another search"):
        bisect(other, "ort-int8", target, state=state, max_evals=3, evidence=False)


def test_resume_counts_per_sample_values_against_the_search(tmp_path):
    """A state file whose every evaluation holds one value, for a search of 3 samples."""
    state = tmp_path / "s.json"
    target = Target.parse("cosine", 0.99999, [], ["probs"])
    session, _ = prepare_split(CNN, inputs=INPUTS)
    bisect(session, "ort-int8", target, state=state, max_evals=3, evidence=False)
    doc = json.loads(state.read_text())
    for row in doc["evaluations"]:
        row["per_sample"] = row["per_sample"][:1]
    state.write_text(json.dumps(doc))
    with pytest.raises(BadInput, match="per-sample value"):
        bisect(session, "ort-int8", target, state=state, max_evals=3, evidence=False)


# ---------------------------------------------------------------- calibration caches (--cache-dir)


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    """The cache a compare --cache-dir writes for the CNN fixture, and its model's float tensors."""
    directory = tmp_path_factory.mktemp("cache")
    session = prepare(CNN, inputs=INPUTS, cache_dir=directory)
    session.candidate("ort-int8")
    (path,) = directory.glob("calibration-*.json")
    return path, json.loads(path.read_text()), activations(session.model)


CACHE_DAMAGE = {
    "NaN": ('{"method": "MinMax", "tensors": {"input": [NaN, 1.0]}}', "it holds NaN, which is not a JSON number"),
    "Infinity": ('{"method": "MinMax", "tensors": {"input": [-Infinity, 1.0]}}', "it holds -Infinity"),
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "it nests arrays or objects thousands deep"),
    "no ranges": ('{"method": "MinMax", "tensors": {}}', "no tensor has a range"),
    "an empty range": ('{"method": "MinMax", "tensors": {"input": []}}', "the range of 'input' is not [lowest, highest]"),
    "lowest above highest": ('{"method": "MinMax", "tensors": {"input": [1, 0]}}',
                             ("the range of 'input' is not [lowest, highest] of two finite float32 numbers with lowest "
                              "<= highest: it is [1, 0]")),
    "a list": ("[]", "it holds an array, not an object"),
}


@pytest.mark.parametrize("case", sorted(CACHE_DAMAGE))
def test_damaged_caches_are_one_line_input_data_errors(tmp_path, cache_file, case):
    text, message = CACHE_DAMAGE[case]
    cache = RangesCache(tmp_path, "m", "minmax", _NoSamples())
    cache.path.write_text(text)
    with pytest.raises(InputDataError) as err:
        cache.load()
    assert _one_line(err.value, cache.path).startswith(f"calibration cache {cache.path} is damaged ({message}")
    assert str(err.value).endswith("); delete it")


def test_a_cache_lacking_a_tensor_of_the_model_is_refused_given_the_tensors(tmp_path, cache_file):
    _, doc, tensors = cache_file
    cache = RangesCache(tmp_path, "m", "minmax", _NoSamples())
    cache.path.write_text(json.dumps({**doc, "tensors": {t: r for t, r in doc["tensors"].items() if t != "input"}}))
    assert cache.load() is not None
    with pytest.raises(InputDataError, match=r"damaged \(they lack the range of 1 of the model's \d+ float tensors "
                                             r"\('input'\)\); delete it$"):
        cache.load(tensors)


@pytest.mark.parametrize("case", ["NaN", "Infinity", "nested 100,000 deep", "no ranges"])
def test_compare_with_a_damaged_cache_is_exit_2(cli, tmp_path, cache_file, case):
    """NaN and empty ranges were an internal error (exit 3); infinite ones were used."""
    path, _, _ = cache_file
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / path.name).write_text(CACHE_DAMAGE[case][0])
    code, out, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--cache-dir", directory, "-q")
    assert (code, out) == (2, "")
    assert err.startswith(f"layerdiff: error: calibration cache {directory / path.name} is damaged (")
    assert CACHE_DAMAGE[case][1] in err and err.count("\n") == 1


def test_compare_with_a_cache_lacking_a_tensor_is_exit_2(cli, tmp_path, cache_file):
    path, doc, _ = cache_file
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / path.name).write_text(json.dumps({**doc, "tensors": {t: r for t, r in doc["tensors"].items()
                                                                      if t != "input"}}))
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--cache-dir", directory, "-q")
    assert code == 2 and "lack the range of 1 of the model's" in err


def test_apply_with_a_recipe_lacking_a_range_is_exit_2(cli, tmp_path, made):
    doc = json.loads(json.dumps(made["recipe"]))
    _tensors(doc).pop("input")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    code, _, err = cli("apply", path, CNN, "--inputs", INPUTS, "-q")
    assert code == 2 and "lack the range of 1 of the model's" in err


# ---------------------------------------------------------------- Polygraphy --save-inputs files


def _inputs_file(tmp_path, value) -> str:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps([{"input": value}]))
    return path


def test_an_inputs_file_with_an_empty_payload_is_exit_2(cli, tmp_path):
    """An empty array payload was an internal error (EOFError, exit 3)."""
    path = _inputs_file(tmp_path, {"array": "", "polygraphy_class": "ndarray"})
    code, out, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", path, "-q")
    assert (code, out) == (2, "")
    assert err == (f"layerdiff: error: --inputs file {path} is not a Polygraphy --save-inputs JSON file (EOFError: "
                   "No data left in file)\n")


def test_an_inputs_file_polygraphy_cannot_decode_is_one_line_and_nothing_else_on_stderr(tmp_path, capfd):
    """Polygraphy logs what it cannot decode, then raises its own exception (an internal error before)."""
    path = _inputs_file(tmp_path, {"array": "AAAA", "polygraphy_class": 5})
    with pytest.raises(InputDataError, match=r"is not a Polygraphy --save-inputs JSON file \(PolygraphyException: "
                                             r"Could not decode serialized type: 5"):
        _read_inputs(path)
    assert capfd.readouterr() == ("", "")


@pytest.mark.skipif(fuzz is None, reason="scripts/fuzz_parsers.py needs hypothesis")
@pytest.mark.parametrize("case", sorted(fuzz.pickled_payloads()) if fuzz else [])
def test_pickled_content_in_an_inputs_file_is_refused_not_unpickled(tmp_path, case):
    """A serialized torch tensor was decoded (with torch.load, an unpickler, wherever torch is installed)
    or an internal error; an object array or a pickle is refused by numpy."""
    path = _inputs_file(tmp_path, fuzz.pickled_payloads()[case])
    with pytest.raises(InputDataError, match=r"^[^\n]*(pickled Python objects|serialized 'Tensor' object)[^\n]*"
                                             r"refused, because inputs are data, never code"):
        _read_inputs(path)
    assert not fuzz.UNPICKLED.exists()


# ---------------------------------------------------------------- JSON in a candidate model's metadata


def test_metadata_json_is_read_within_the_limits_and_checked():
    from layerdiff.errors import ModelError

    def names(v):
        return isinstance(v, list) and all(isinstance(n, str) for n in v)

    assert jsonread.metadata_json('["a", "b"]', "k", names, "a list of node names") == ["a", "b"]
    for value, reason in (("5", "it is not a list of node names"), ("[" * 100_000 + "]" * 100_000, "thousands deep"),
                          ("[NaN]", "it holds NaN"), ("[1", "Expecting")):
        with pytest.raises(ModelError, match=r"^the candidate model's metadata 'k' is damaged \([^\n]*"
                                             + reason.replace("(", r"\(") + r"[^\n]*save the candidate again"):
            jsonread.metadata_json(value, "k", names, "a list of node names")


def _candidate_with_metadata(tmp_path, key, value):
    import onnx

    model = onnx.load(CNN)
    prop = model.metadata_props.add()
    prop.key, prop.value = key, value
    path = tmp_path / "candidate.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("key, value", [("layerdiff.final_outputs", "5"),
                                        ("layerdiff.final_outputs", "[" * 100_000 + "]" * 100_000),
                                        ("layerdiff.fp16_emulated", "5")])
def test_a_candidate_with_damaged_layerdiff_metadata_is_exit_2(cli, tmp_path, key, value):
    """Each was an internal error (AttributeError, RecursionError, TypeError)."""
    path = _candidate_with_metadata(tmp_path, key, value)
    code, _, err = cli("compare", CNN, "--candidate", path, "--inputs", INPUTS, "-q")
    assert code == 2 and err.startswith(f"layerdiff: error: the candidate model's metadata '{key}' is damaged (")
