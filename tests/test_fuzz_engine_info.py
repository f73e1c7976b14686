"""parse_engine_info on arbitrary and damaged files: an EngineInfo or an EngineInfoError, nothing else.

The strategies live in scripts/fuzz_parsers.py, which runs them for many more cases
(`python scripts/fuzz_parsers.py --cases 10000`); here they run with a fixed seed.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from layerdiff.engine_info import EngineInfoError, parse_engine_info  # noqa: E402
from tests.conftest import load_script  # noqa: E402

fuzz = load_script("fuzz_parsers")
FIXED = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "engine_info"


@FIXED
@given(data=fuzz.generated_engine_info())
def test_generated_files_parse_or_raise_engine_info_error(fuzz_path, data):
    fuzz_path.write_bytes(data)
    fuzz.check_engine_info(fuzz_path)


# shared_dir's value is the same for every example
@settings(FIXED, suppress_health_check=[*FIXED.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_real_files_parse_or_raise_engine_info_error(shared_dir, fuzz_path, data):
    real_files = shared_dir / "fixtures" / "trt_engine_info"
    fuzz_path.write_bytes(data.draw(fuzz.real_file_mutations(real_files), label="file"))
    fuzz.check_engine_info(fuzz_path)


def _layers(*layers):
    return json.dumps({"Layers": list(layers)})


# inputs on which the parser raised TypeError, AttributeError, ValueError or RecursionError before
MALFORMED = {
    "deep JSON": ("[" * 100_000 + "]" * 100_000, "nests JSON arrays or objects thousands deep"),
    "5000-digit number": ('{"Layers": [{"Name": "b", "Dimensions": [' + "7" * 5000 + "]}]}",
                          "holds a number with thousands of digits"),
    "Inputs a string": (_layers({"Name": "a", "Inputs": "x"}),
                        "layer 0 ('a'): 'Inputs' is not a list of tensor objects; the file was edited"),
    "Outputs a number": (_layers({"Name": "a", "Outputs": 7.5}), "layer 0 ('a'): 'Outputs' is not a list of tensor"),
    "Dimensions strings": (_layers({"Name": "a", "Inputs": [{"Name": "t", "Dimensions": ["1", 3]}]}),
                           "layer 0 ('a'): an input tensor's 'Dimensions' is not a list of integers"),
    "format not a string": (_layers({"Name": "a", "Outputs": [{"Name": "t", "Format/Datatype": True}]}),
                            "layer 0 ('a'): an output tensor's 'Format/Datatype' is not a string"),
    "Metadata an object": (_layers({"Name": "a", "Metadata": {"x": 1}}), "layer 0 ('a'): 'Metadata' is not a string"),
    "LayerType a list": (_layers({"Name": "a", "LayerType": ["Reformat"]}),
                         "layer 0 ('a'): 'LayerType' is not a string"),
    "Name a number": (_layers({"Name": "a"}, {"Name": 5}), "layer 1: 'Name' is missing or not a string"),
    "nested lists in Layers": (_layers([["deep"]]), "layer 0: an array, not a layer object"),
    "Bindings a number": (json.dumps({"Layers": [], "Bindings": 10 ** 30}), "'Bindings' is not a list of tensor names"),
    "per-layer dump": ('--- Layer 0 ---\n{"Name": "a", "LayerType": "NoOp", "Inputs": "x"}\n',
                       "layer 0 ('a'): 'Inputs' is not a list of tensor objects"),
    "null": ("null", "is JSON but not TensorRT layer information"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_one_line_engine_info_errors(tmp_path, case):
    text, message = MALFORMED[case]
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(EngineInfoError, match="^[^\n]*" + re.escape(message) + "[^\n]*$"):
        parse_engine_info(tmp_path / "bad.json")


def test_deep_and_long_names_parse(tmp_path):
    """PWN(...) nested 5000 deep (beyond Python's recursion limit) and a log line holding a 5000-digit number."""
    (tmp_path / "names.json").write_text(_layers("PWN(" * 5000 + "Conv_9" + ")" * 5000))
    assert parse_engine_info(tmp_path / "names.json").layers[0].onnx_nodes == ("Conv_9",)
    (tmp_path / "build.log").write_text(
        "[V] [TRT] Engine Layer Information:\n"
        f"[V] [TRT] Layer(Reformat): Conv_9, Tactic: 0x0, a (Float[1,{'9' * 5000},2]) -> b (Half[1,4])\n")
    layer = parse_engine_info(tmp_path / "build.log").layers[0]
    assert (layer.inputs[0].dims, layer.outputs[0].dims) == ((1, 2), (1, 4))  # no dimension has 5000 digits
