"""load_polygraphy_results and load_report on arbitrary and damaged files: their result, or a one-line
BadInput (a ReportError for reports), nothing else; and nothing in a results file is ever unpickled.

The strategies live in scripts/fuzz_parsers.py, which runs them for many more cases
(`python scripts/fuzz_parsers.py --cases 10000`); here they run with a fixed seed.
"""

from __future__ import annotations

import base64
import json
import pickle
import re

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import layerdiff  # noqa: E402
from layerdiff import BadInput, ReportError, load_report  # noqa: E402
from layerdiff.backends.imported import load_polygraphy_results  # noqa: E402
from tests.conftest import FIXTURES, load_script  # noqa: E402

fuzz = load_script("fuzz_parsers")
FIXED = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# shared_dir's value is the same for every example
WITH_SHARED = settings(FIXED, suppress_health_check=[*FIXED.suppress_health_check, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """RunResults files written here by Polygraphy's RunResults.save."""
    directory = tmp_path_factory.mktemp("written")
    fuzz.written_results(directory)
    return directory


# ---------------------------------------------------------------- Polygraphy results


@FIXED
@given(data=fuzz.generated_results())
def test_generated_results_load_or_raise_bad_input(fuzz_path, data):
    fuzz.write_input(fuzz_path, data)
    fuzz.check_polygraphy_results(fuzz_path)


@FIXED
@given(data=st.data())
def test_damaged_written_results_load_or_raise_bad_input(written, fuzz_path, data):
    fuzz.write_input(fuzz_path, data.draw(fuzz.results_file_mutations(written), label="results"))
    fuzz.check_polygraphy_results(fuzz_path)


@WITH_SHARED
@given(data=st.data())
def test_damaged_real_results_load_or_raise_bad_input(shared_dir, fuzz_path, data):
    real = shared_dir / "fixtures" / "polygraphy_results"
    fuzz.write_input(fuzz_path, data.draw(fuzz.results_file_mutations(real), label="results"))
    fuzz.check_polygraphy_results(fuzz_path)


def _results(value, runner="trt-runner-N0") -> str:
    """A RunResults file in Polygraphy's JSON with one iteration whose output 'probs' is `value`."""
    it = {"outputs": {"probs": value}, "runtime": 0.1, "runner_name": runner, "polygraphy_class": "IterationResult"}
    return json.dumps({"lst": [[runner, [it]]], "polygraphy_class": "RunResults"})


def _array(arr) -> dict:
    return {"values": {"array": base64.b64encode(fuzz._npy(arr)).decode(), "polygraphy_class": "ndarray"},
            "polygraphy_class": "LazyNumpyArray"}


@pytest.mark.parametrize("case", sorted(fuzz.pickled_payloads()))
def test_pickled_content_is_refused_not_unpickled(tmp_path, case):
    """Every place a Polygraphy JSON file can carry a pickle: an object array (npy, npz, latin-1), a
    pickle where an array belongs, a torch tensor (current and legacy encodings)."""
    path = tmp_path / "results.json"
    path.write_text(_results(fuzz.pickled_payloads()[case]))
    with pytest.raises(BadInput, match=r"^[^\n]*(pickled Python objects|serialized 'Tensor' object)[^\n]*refused"):
        load_polygraphy_results(path, ("probs",), 1)
    assert not fuzz.UNPICKLED.exists()


def test_a_pickled_results_file_is_refused(tmp_path):
    """Polygraphy 0.26 and older pickled RunResults; such a file is not JSON and is never unpickled."""
    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps({"trt-runner": [fuzz.Unpickled()]}))
    with pytest.raises(BadInput, match="is not a Polygraphy --save-outputs results file"):
        load_polygraphy_results(path, ("probs",), 1)
    assert not fuzz.UNPICKLED.exists()


def test_types_polygraphy_would_unpickle_are_refused_before_it_decodes(tmp_path, monkeypatch):
    """Polygraphy 0.49 decodes a serialized torch tensor with torch.load (an unpickler) wherever torch is
    installed. With such a decoder in Polygraphy's registry, Polygraphy's own loader runs the pickle in
    the file; layerdiff's refuses the file before Polygraphy decodes it."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import Decoder

    monkeypatch.setitem(Decoder.polygraphy_registered, "Tensor",
                        lambda dct: pickle.loads(base64.b64decode(dct["tensor"])))  # what torch.load does
    for case in ("torch tensor", "torch tensor (legacy)"):
        path = tmp_path / "results.json"
        path.write_text(_results(fuzz.pickled_payloads()[case]))
        RunResults.load(str(path))
        assert fuzz.UNPICKLED.exists()  # the premise: this decoder unpickles
        fuzz.UNPICKLED.rmdir()
        with pytest.raises(BadInput, match=r"holds a serialized 'Tensor' object, not only arrays: refused"):
            load_polygraphy_results(path, ("probs",), 1)
        assert not fuzz.UNPICKLED.exists()


# inputs on which load_polygraphy_results raised EOFError, or returned values that are not arrays of numbers
MALFORMED_RESULTS = {
    "empty array payload": (_results({"values": {"array": "", "polygraphy_class": "ndarray"},
                                      "polygraphy_class": "LazyNumpyArray"}),
                            "is not a Polygraphy --save-outputs results file (No data left in file); save them again"),
    "output an object": (_results({"values": {"a": 1}, "polygraphy_class": "LazyNumpyArray"}),
                         "output 'probs' of runner 'trt-runner-N0' is a JSON object, not an array of numbers"),
    "output a string": (_results("0.5"), "output 'probs' of runner 'trt-runner-N0' is a string, not an array"),
    "output a number": (_results(0.5), "output 'probs' of runner 'trt-runner-N0' is a number, not an array"),
    "output of strings": (_array(np.array(["a"])), "output 'probs' of runner 'trt-runner-N0' is an array of <U1"),
    "output in a vectorized format": ({"values": {"array": _array(np.zeros(32, np.float16))["values"], "shape": [1, 3],
                                                  "polygraphy_class": "FormattedArray"},
                                       "polygraphy_class": "LazyNumpyArray"},
                                      "output 'probs' of runner 'trt-runner-N0' is a FormattedArray, not an array"),
    "iteration a plain object": (json.dumps({"lst": [["trt", [{"probs": 1}]]], "polygraphy_class": "RunResults"}),
                                "an iteration of runner 'trt' is a JSON object, not a Polygraphy IterationResult"),
    "runner name a number": (_results(_array(np.zeros(2, np.float32)), runner=7),
                             "a runner name is a number, not a string"),
    "lst not a list": (json.dumps({"lst": 5, "polygraphy_class": "RunResults"}),
                       "is not a Polygraphy --save-outputs results file ('int' object is not iterable)"),
    "lst missing": (json.dumps({"polygraphy_class": "RunResults"}), "(an object lacks 'lst')"),
    "unknown type": (json.dumps({"polygraphy_class": "Foo"}), "holds a serialized 'Foo' object"),
    "deep JSON": ("[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_RESULTS))
def test_malformed_results_are_one_line_bad_input(tmp_path, case):
    content, message = MALFORMED_RESULTS[case]
    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else _results(content))
    with pytest.raises(BadInput, match="^[^\n]*" + re.escape(message) + "[^\n]*$"):
        load_polygraphy_results(path, ("probs",), 1)


def test_a_directory_with_a_broken_file_names_it(written, tmp_path):
    from polygraphy.comparator import RunResults

    results = RunResults.load(str(written / "written0.json"))
    results.save(str(tmp_path / "0000000000.json"))
    (tmp_path / "0000000001.json").write_text('{"lst": [')
    (tmp_path / "notes.txt").write_text("not read")
    with pytest.raises(BadInput, match=f"^{re.escape(str(tmp_path / '0000000001.json'))} is not a Polygraphy"):
        load_polygraphy_results(tmp_path, ("probs",), 2)
    (tmp_path / "0000000001.json").unlink()
    iterations, runner = load_polygraphy_results(tmp_path, ("probs",), 1)
    assert runner == "trt-runner-N0" and iterations[0]["probs"].dtype == np.float32


# ---------------------------------------------------------------- reports


@FIXED
@given(data=fuzz.damaged_reports())
def test_damaged_reports_load_or_raise_report_error(fuzz_path, data):
    fuzz.write_input(fuzz_path, data)
    fuzz.check_report(fuzz_path)


@FIXED
@given(data=fuzz.generated_reports())
def test_generated_reports_load_or_raise_report_error(fuzz_path, data):
    fuzz.write_input(fuzz_path, data)
    fuzz.check_report(fuzz_path)


@pytest.fixture(scope="module")
def report_json():
    report = layerdiff.compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", reference_provider="cpu", min_cosine=0.99)
    return json.dumps(report.to_dict(), indent=1, allow_nan=False)


def _edit(text: str, path: str, value: str) -> str:
    """`text` (a report) with the value at `path` ("layers.0.index") written as the JSON text `value`."""
    doc = json.loads(text)
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = doc
    for key in parents:
        target = target[key]
    target[last] = "@@VALUE@@"
    return json.dumps(doc).replace('"@@VALUE@@"', value)


# edits on which load_report raised OverflowError, ValueError or RecursionError, read back a different
# report, or read a report write_report could not write again
MALFORMED_REPORTS = {
    "index 1e999": ("layers.0.index", "1e999", "it holds the number 1e999, too large for a float"),
    "index 1.0": ("layers.0.index", "1.0", "layers[0].index is not an integer"),
    "count -1e999": ("outputs.0.count", "-1e999", "it holds the number -1e999, too large for a float"),
    "cosine a 400-digit integer": ("layers.0.outputs.0.cosine", "9" * 400,
                                   "layers[0].outputs[0].cosine is not a number or null"),
    "samples a float": ("outputs.0.samples", "2.5", "outputs[0].samples is not an integer"),
    "reference count a string": ("layers.0.outputs.0.nonfinite.reference", '"1"',
                                 "layers[0].outputs[0].nonfinite.reference is not an integer"),
    "nonfinite_values wrong": ("outputs.0.nonfinite_values", '{"cosine": "huge"}',
                               'outputs[0].nonfinite_values.cosine is not "nan", "inf" or "-inf"'),
    "divergence threshold -Infinity": ("thresholds.divergence_cosine", "-Infinity",
                                       "it holds -Infinity, which is not a JSON number"),
    "min_cosine NaN": ("tolerance.min_cosine", "NaN", "it holds NaN, which is not a JSON number"),
    "5000-digit integer": ("counts.rows", "7" * 5000, "it holds an integer of 5000 digits"),
    "deep JSON": ("warnings", "[" * 100_000 + "]" * 100_000, "it nests arrays or objects thousands deep"),
    "plan a list": ("candidate.plan", "[]", "candidate.plan is not an object or null"),
    "name an object": ("layers.0.name", '{"a": 1}', "layers[0].name is not a string"),
    "shape of strings": ("layers.0.outputs.0.shape", '["1"]',
                         "layers[0].outputs[0].shape is not a list of integers or null"),
    "onnx_nodes a string": ("layers.0.onnx_nodes", '"conv1"', "layers[0].onnx_nodes is not a list of strings"),
    "paired a string": ("layers.0.outputs.0.paired", '"yes"', "layers[0].outputs[0].paired is not true or false"),
    "warnings a string": ("warnings", '"x"', "warnings is not a list of strings"),
    "layers an object": ("layers", "{}", "layers is not a list"),
    "a layer a number": ("layers.0", "3", "layers[0] is not an object"),
    "capture a list": ("capture", "[]", "capture is not an object"),
    "mean missing": ("outputs.0.mean", "null", "outputs[0].mean is not an object"),
    "failed a number": ("tolerance.failed", "1", "tolerance.failed is not a list of strings"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_REPORTS))
def test_malformed_reports_are_one_line_report_errors_naming_the_field(tmp_path, report_json, case):
    where, value, message = MALFORMED_REPORTS[case]
    path = tmp_path / "r.json"
    path.write_text(_edit(report_json, where, value))
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value) == f"{path} is a damaged layerdiff report ({message}); re-run layerdiff compare"


def test_a_missing_section_and_a_missing_field_are_named(tmp_path, report_json):
    doc = json.loads(report_json)
    del doc["capture"]
    del doc["layers"][1]["outputs"][0]["tensor"]
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"\(the report lacks capture\); re-run layerdiff compare$"):
        load_report(tmp_path / "r.json")
    doc["capture"] = json.loads(report_json)["capture"]
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"\(layers\[1\]\.outputs\[0\] lacks tensor\); re-run layerdiff compare$"):
        load_report(tmp_path / "r.json")


# ---------------------------------------------------------------- recipes


@FIXED
@given(data=fuzz.recipe_inputs())
def test_load_recipe_gives_a_recipe_or_one_line(data, fuzz_path):
    fuzz_path.write_bytes(data)
    fuzz.check_recipe(fuzz_path)


# ---------------------------------------------------------------- bisect state files and calibration caches


@FIXED
@given(data=fuzz.state_inputs())
def test_load_state_gives_this_searchs_outcomes_or_one_line(data, fuzz_path):
    fuzz_path.write_bytes(data)
    fuzz.check_state(fuzz_path)


@FIXED
@given(data=fuzz.cache_inputs())
def test_load_cache_gives_usable_ranges_or_one_line(data, fuzz_path):
    fuzz_path.write_bytes(data)
    fuzz.check_cache(fuzz_path)


# ---------------------------------------------------------------- Polygraphy --save-inputs files


@WITH_SHARED
@given(data=st.data())
def test_load_samples_of_polygraphy_inputs_gives_samples_or_one_line(shared_dir, fuzz_path, data):
    fuzz_path.write_bytes(data.draw(fuzz.inputs_inputs(), label="inputs"))
    fuzz.check_inputs(fuzz_path)
