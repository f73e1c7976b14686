"""TensorRT per-layer profiles (trtexec --exportProfile): read, and matched to an engine's layers; tested on
the real TREx mobilenet profile in ../shared/fixtures/trt_engine_info/ and on copies of it edited here."""

import json

import pytest

from layerdiff.engine_info import parse_engine_info
from layerdiff.engine_info.profile import TrtProfile, match_profile, read_trt_profile
from layerdiff.errors import BadInput
from tests.conftest import SHARED

INFO_DIR = SHARED / "fixtures" / "trt_engine_info"
PROFILE = INFO_DIR / "trex_mobilenet_qat_int8_trt84.profile.json"
GRAPH = INFO_DIR / "trex_mobilenet_qat_int8_trt84.graph.json"


@pytest.fixture
def raw(shared_dir):
    """The real profile, as json.load reads it: [{"count": N}, {"name", "timeMs", ...}, ...]."""
    return json.loads(PROFILE.read_text())


def _write(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _bad(path, *parts):
    """read_trt_profile(path) fails with one line naming the file and each of `parts`."""
    with pytest.raises(BadInput) as err:
        read_trt_profile(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for part in parts:
        assert part in msg, msg
    return msg


# --- the real profile -----------------------------------------------------------------------------------


def test_real_profile_reads_median_per_layer(raw):
    profile = read_trt_profile(PROFILE)
    assert isinstance(profile, TrtProfile) and profile.path == str(PROFILE)
    assert raw[0] == {"count": 6610} and profile.runs == 6610
    assert profile.statistic == "median"
    assert len(profile.layers) == len(raw) - 1 == 73
    assert profile.layers == tuple((e["name"], e["medianMs"]) for e in raw[1:])  # file order, medianMs
    assert ("QuantizeLinear_2", raw[1]["medianMs"]) == profile.layers[0]


def test_real_profile_matches_its_graph_entirely(raw):
    info = parse_engine_info(GRAPH)
    ms = match_profile(read_trt_profile(PROFILE), info)
    assert set(ms) == {layer.name for layer in info.layers} and len(ms) == len(info.layers) == 73
    assert ms == {e["name"]: e["medianMs"] for e in raw[1:]}
    assert sum(ms.values()) == pytest.approx(sum(e["medianMs"] for e in raw[1:]), rel=1e-12)


def test_profile_against_another_engine_with_no_common_name(shared_dir):
    other = INFO_DIR / "trex_resnet18_a100_fp16_trt84.graph.json"
    with pytest.raises(BadInput) as err:
        match_profile(read_trt_profile(PROFILE), parse_engine_info(other))
    msg = str(err.value)
    assert "\n" not in msg and str(PROFILE) in msg and str(other) in msg
    assert "none of its 73 layer names is a layer of the engine" in msg and "another engine" in msg


def test_profile_against_another_engine_sharing_one_name(shared_dir):
    # the resnet18 QAT engine also has a layer "QuantizeLinear_2": 72 of 73 names match nothing
    other = INFO_DIR / "trex_resnet18_a100_qat_int8_trt84.graph.json"
    with pytest.raises(BadInput) as err:
        match_profile(read_trt_profile(PROFILE), parse_engine_info(other))
    msg = str(err.value)
    assert "\n" not in msg and str(other) in msg
    assert "72 of its 73 layer names are no layer of the engine" in msg
    assert "'features.0.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)'" in msg
    assert "QuantizeLinear_2'" not in msg  # the name that does match is not listed
    assert "same engine build" in msg


def test_names_cannot_tell_two_builds_of_one_model_apart(shared_dir):
    # a known limit (documented in match_profile): the TRT 8.2 build of the same mobilenet has all 73 names,
    # plus 12 reformat layers the 8.4 build does not have; those are simply absent from the result
    info = parse_engine_info(INFO_DIR / "trex_v010_mobilenet_qat_int8_trt82.graph.json")
    ms = match_profile(read_trt_profile(PROFILE), info)
    assert len(ms) == 73 and len(info.layers) == 85
    assert {layer.name for layer in info.layers} - set(ms) == {
        layer.name for layer in info.layers if layer.type in ("Reformat", "NoOp")} - set(ms)


# --- older layouts ----------------------------------------------------------------------------------------


def test_profile_without_median_reads_average(raw, tmp_path):
    old = [raw[0]] + [{k: v for k, v in e.items() if k != "medianMs"} for e in raw[1:]]  # TensorRT <= 8.2
    profile = read_trt_profile(_write(tmp_path, old))
    assert profile.statistic == "average" and profile.runs == 6610
    assert profile.layers == tuple((e["name"], e["averageMs"]) for e in raw[1:])
    assert profile.layers != tuple((e["name"], e["medianMs"]) for e in raw[1:])


def test_one_entry_without_median_makes_the_whole_file_average(raw, tmp_path):
    raw[5].pop("medianMs")
    profile = read_trt_profile(_write(tmp_path, raw))
    assert profile.statistic == "average"
    assert [ms for _, ms in profile.layers] == [e["averageMs"] for e in raw[1:]]


def test_profile_with_only_total_time_divides_by_count(raw, tmp_path):
    total = [raw[0]] + [{"name": e["name"], "timeMs": e["timeMs"]} for e in raw[1:]]
    profile = read_trt_profile(_write(tmp_path, total))
    assert profile.statistic == "total/count" and profile.runs == 6610
    assert [n for n, _ in profile.layers] == [e["name"] for e in raw[1:]]
    assert [ms for _, ms in profile.layers] == pytest.approx([e["timeMs"] / 6610 for e in raw[1:]], rel=1e-12)
    # trtexec's averageMs is that same quotient, rounded to 6 digits
    assert [ms for _, ms in profile.layers] == pytest.approx([e["averageMs"] for e in raw[1:]], rel=1e-5)


def test_total_time_without_count_cannot_be_read(raw, tmp_path):
    path = _write(tmp_path, [{"name": e["name"], "timeMs": e["timeMs"]} for e in raw[1:]])
    _bad(path, "entry [0] 'QuantizeLinear_2'", "only timeMs", '{"count": N}', "--exportProfile")


def test_profile_without_count_element(raw, tmp_path):
    profile = read_trt_profile(_write(tmp_path, raw[1:]))
    assert profile.runs is None and profile.statistic == "median"
    assert profile.layers == tuple((e["name"], e["medianMs"]) for e in raw[1:])


def test_entry_without_any_time(raw, tmp_path):
    raw[3] = {"name": raw[3]["name"], "percentage": 1.0}
    _bad(_write(tmp_path, raw), "entry [3]", repr(raw[3]["name"]), "no time", "--exportProfile")


def test_mixed_layouts_name_the_entry(tmp_path):
    path = _write(tmp_path, [{"count": 2}, {"name": "a", "medianMs": 1.0}, {"name": "b", "averageMs": 2.0}])
    _bad(path, "entry [2] 'b'", "no medianMs", "mixes profile layouts")


# --- names: duplicates, control characters --------------------------------------------------------------


def test_repeated_names_are_summed(tmp_path):
    info = parse_engine_info(_write(tmp_path, {"Layers": ["a || b", "conv", "a || b", "tail"]}, "layers.json"))
    profile = read_trt_profile(_write(tmp_path, [
        {"count": 4}, {"name": "a || b", "medianMs": 0.25}, {"name": "conv", "medianMs": 1.5},
        {"name": "a || b", "medianMs": 0.5}]))
    assert profile.layers == (("a || b", 0.25), ("conv", 1.5), ("a || b", 0.5))  # the file as it is
    assert match_profile(profile, info) == {"a || b": 0.75, "conv": 1.5}  # "tail" was not timed: absent


def test_unescaped_control_character_in_name_matches_layer_info(tmp_path):
    # trtexec writes names verbatim; the layer information (JSON-escaped) holds the same \x1e
    name = "/conv/Conv\x1e/relu/Relu"
    info = parse_engine_info(_write(tmp_path, {"Layers": [name]}, "layers.json"))
    path = tmp_path / "p.json"
    path.write_text('[\n  { "count" : 3 }\n, { "name" : "' + name + '", "timeMs" : 3, "averageMs" : 1, '
                    '"medianMs" : 1, "percentage" : 100 }\n]\n')
    assert match_profile(read_trt_profile(path), info) == {name: 1.0}


def test_some_names_unmatched_shows_at_most_two(tmp_path):
    info = parse_engine_info(_write(tmp_path, {"Layers": ["x"]}, "layers.json"))
    profile = TrtProfile("prof.json", 1, "median", (("x", 1.0), ("y", 1.0), ("z", 1.0), ("w", 1.0)))
    with pytest.raises(BadInput) as err:
        match_profile(profile, info)
    msg = str(err.value)
    assert msg.startswith("prof.json: 3 of its 4 layer names are no layer of the engine in ")
    assert "('y', 'z', ...)" in msg and "'w'" not in msg and "\n" not in msg


# --- broken files ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _bad(tmp_path / "nope.json", "not found", "--exportProfile")


def test_not_json(tmp_path):
    _bad(_write(tmp_path, '[\n  { "count" : 3 }\n, { "name" : "a", "timeMs'), "is not JSON", "--exportProfile")


def test_empty_file(tmp_path):
    _bad(_write(tmp_path, "  \n"), "is empty")


def test_object_instead_of_list(tmp_path):
    _bad(_write(tmp_path, {}), "not a TensorRT profile", "--exportProfile")


def test_layer_information_given_as_profile(shared_dir):
    _bad(GRAPH, "is TensorRT layer information, not a profile", "--exportProfile")


def test_metadata_given_as_profile(shared_dir):
    _bad(INFO_DIR / "trex_mobilenet_qat_int8_trt84.profile.metadata.json", "metadata file", "--exportProfile")


def test_string_time(raw, tmp_path):
    raw[2]["medianMs"] = "0.008608"
    _bad(_write(tmp_path, raw), "entry [2]", repr(raw[2]["name"]), 'medianMs is "0.008608", not a number')


def test_negative_time(raw, tmp_path):
    raw[4]["averageMs"] = -0.5
    _bad(_write(tmp_path, raw), "entry [4]", "averageMs is negative (-0.5)")


def test_nan_written_by_trtexec(tmp_path):
    path = _write(tmp_path, '[\n  { "count" : 1 }\n, { "name" : "a", "timeMs" : 0, "averageMs" : 0, '
                            '"medianMs" : 0, "percentage" : -nan }\n]\n')
    _bad(path, "nan or inf", "--exportProfile")


def test_json_nan_time(tmp_path):
    _bad(_write(tmp_path, '[{"count": 1}, {"name": "a", "medianMs": NaN}]'), "medianMs is NaN, not a number")


@pytest.mark.parametrize("data, part", [
    ([], "has no layer entries"),
    ([{"count": 5}], "has no layer entries (only its count element)"),
    ([{"count": 0}, {"name": "a", "medianMs": 1}], '{"count": 0} is not a positive number of timed runs'),
    ([{"count": "5"}, {"name": "a", "medianMs": 1}], "is not a positive number of timed runs"),
    ([{"count": 5}, {"timeMs": 1.0, "medianMs": 1}], "entry [1] has no layer name"),
    ([{"count": 5}, {"name": 7, "medianMs": 1}], "entry [1] has a layer name that is not a string"),
    ([{"count": 5}, "a"], "entry [1] is not an object"),
    ([[{"count": 5}, {"name": "a", "medianMs": 1}]], "is a list of lists"),
])
def test_malformed_lists(tmp_path, data, part):
    _bad(_write(tmp_path, data), part, "--exportProfile")
