"""Each bad input: one line on stderr naming what was wrong and what to do, exit 2, nothing written."""

import json

import numpy as np
import onnx
import pytest

from tests.conftest import FIXTURES

CNN = FIXTURES / "cnn.onnx"


def _expect(cli, tmp_path, args, message):
    report = tmp_path / "report.json"
    code, out, err = cli("compare", *args, "-o", report, "-q")
    assert code == 2
    assert err == f"layerdiff: error: {message}\n"
    assert "Traceback" not in err and not report.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_missing_model(cli, tmp_path):
    _expect(cli, tmp_path, [tmp_path / "nope.onnx", "--candidate", "ort-int8"],
            f"model not found: {tmp_path / 'nope.onnx'} (give the path of an .onnx file)")


def test_not_onnx(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 this is not a model \xff" * 10)
    _expect(cli, tmp_path, [bad, "--candidate", "ort-int8"],
            f"{bad} is not an ONNX model (protobuf could not parse it)")


def test_ir_version_too_new(cli, tmp_path):
    from layerdiff.graph import max_ir_version

    model = onnx.load(CNN)
    model.ir_version = max_ir_version() + 1
    path = tmp_path / "new.onnx"
    onnx.save(model, path)
    limit = max_ir_version()
    _expect(cli, tmp_path, [path, "--candidate", "ort-int8"],
            f"{path} has ONNX IR version {limit + 1}, but this ONNX Runtime reads at most {limit}: re-save it "
            f"with ir_version={limit} (model.ir_version = {limit}; onnx.save(model, path)) or upgrade onnxruntime")


def test_input_missing_from_npz(cli, tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, image=np.zeros((1, 3, 32, 32), np.float32))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            "--inputs sample 0 (s.npz) has no array for model input 'input'; it holds: ['image']")


def test_wrong_shape(cli, tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, input=np.zeros((1, 3, 16, 16), np.float32))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            "--inputs sample 0 (s.npz): input 'input' has shape 1x3x16x16 but the model expects 1x3x32x32")


def test_wrong_dtype(cli, tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, input=np.zeros((1, 3, 32, 32), np.float64))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            "--inputs sample 0 (s.npz): input 'input' is float64 but the model expects float32; save it as float32")


def test_unparseable_shape(cli, tmp_path):
    _expect(cli, tmp_path, [FIXTURES / "dynamic_batch.onnx", "--candidate", "ort-int8", "--shape", "images:2by3"],
            "cannot parse --shape 'images:2by3': expected NAME:DIMxDIM..., e.g. input:1x3x224x224")


def test_shape_for_unknown_input(cli, tmp_path):
    _expect(cli, tmp_path, [FIXTURES / "dynamic_batch.onnx", "--candidate", "ort-int8", "--shape", "x:1x3x16x16"],
            "--shape names 'x', which is not a model input; inputs are: ['images']")


def test_empty_calibration_set(cli, tmp_path):
    empty = tmp_path / "calib"
    empty.mkdir()
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--calib", empty],
            f"--calib directory {empty} holds no .npz files (one sample per file)")


def test_corrupt_npz(cli, tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, input=np.zeros((1, 3, 32, 32), np.float32))
    f.write_bytes(f.read_bytes()[:100])
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", f, "-q")
    assert code == 2 and err.startswith(f"layerdiff: error: --inputs file {f} is not a readable .npz file")
    assert err.count("\n") == 1


def test_npz_with_python_objects_is_refused(cli, tmp_path):
    f = tmp_path / "s.npz"
    np.savez(f, input=np.array([{"a": 1}], dtype=object))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            f"--inputs file {f} holds Python objects, not numeric arrays: refused, because inputs are data, "
            "never code; save plain numpy arrays (np.savez)")


def test_output_directory_missing(cli, tmp_path):
    out = tmp_path / "no" / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "-o", out, "-q")
    assert code == 2
    assert err == f"layerdiff: error: cannot write {out}: directory {out.parent} does not exist\n"


def test_save_candidate_directory_missing(cli, tmp_path):
    out = tmp_path / "no" / "c.onnx"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--save-candidate", out, "-q")
    assert (code, err) == (2, f"layerdiff: error: cannot write {out}: directory {out.parent} does not exist\n")


def test_unknown_candidate(cli, tmp_path):
    _expect(cli, tmp_path, [CNN, "--candidate", "int4-magic"],
            "unknown --candidate 'int4-magic': use one of ort-int8, ort-fp16, trt-fp16, trt-int8, trt-bf16, ort-cuda, "
            "ort-trt-fp16, ort-trt-int8, fake, polygraphy:RESULTS.json or the path of an ONNX model")


def test_tensorrt_candidate_without_tensorrt(cli, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    _expect(cli, tmp_path, [CNN, "--candidate", "trt-fp16"],
            "--candidate trt-fp16 needs TensorRT and an NVIDIA GPU, which are not available here; install them "
            "with pip install 'layerdiff[tensorrt]' on a GPU machine, or use ort-int8 / ort-fp16")


def test_candidate_from_another_model(cli, tmp_path):
    _expect(cli, tmp_path, [CNN, "--candidate", FIXTURES / "transformer.onnx"],
            f"candidate {FIXTURES / 'transformer.onnx'} has no input 'input' of the model; it must be derived "
            "from the FP32 model (its inputs are: ['x'])")


def test_bad_max_memory(cli, tmp_path):
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--max-memory", "lots"],
            "Invalid value for --max-memory: cannot parse size 'lots': expected a number with a unit, "
            "e.g. 2GiB or 512MB")


def test_polygraphy_json_that_is_not_inputs(cli, tmp_path):
    f = tmp_path / "in.json"
    f.write_text(json.dumps({"not": "feeds"}))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            f"--inputs file {f}: input 'not' is not an array")


@pytest.mark.parametrize("spec,provider", [("ort-cuda", "CUDAExecutionProvider"),
                                           ("ort-trt-fp16", "TensorrtExecutionProvider"),
                                           ("ort-trt-int8", "TensorrtExecutionProvider")])
def test_onnxruntime_gpu_provider_that_does_not_load(cli, tmp_path, spec, provider):
    """onnxruntime-gpu lists these providers even here; layerdiff tries them and says they do not load."""
    from layerdiff.backends.ort import provider_loads

    if provider_loads(provider):
        pytest.skip(f"{provider} really loads on this machine")
    _expect(cli, tmp_path, [CNN, "--candidate", spec],
            f"--candidate {spec} needs onnxruntime-gpu's {provider}, which does not load here (no NVIDIA GPU, or "
            "no CUDA/TensorRT libraries); run it on a GPU machine, or use ort-int8 / ort-fp16")


def test_outputs_that_would_overwrite_an_input_are_refused(cli, tmp_path):
    """The report's finding: -o or --save-candidate equal to the model path silently overwrote the model."""
    model = tmp_path / "m.onnx"
    model.write_bytes(CNN.read_bytes())
    for flag in ("-o", "--save-candidate"):
        code, _, err = cli("compare", model, "--candidate", "ort-int8", flag, model, "-q")
        assert (code, err) == (2, f"layerdiff: error: refusing to write {model}: it is an input of this run, or "
                                  "inside one; give another file name\n")
    assert model.read_bytes() == CNN.read_bytes()
    samples = tmp_path / "samples"  # the trial's finding: -o inside an --inputs directory replaced a sample
    samples.mkdir()
    for f in sorted((FIXTURES / "cnn_inputs").iterdir()):
        (samples / f.name).write_bytes(f.read_bytes())
    kept = {f.name: f.read_bytes() for f in samples.iterdir()}
    first = sorted(samples.iterdir())[0]
    for flags in (["--inputs", samples], ["--calib", samples]):
        code, _, err = cli("compare", CNN, "--candidate", "ort-int8", *flags, "-o", first, "-q")
        assert (code, err) == (2, f"layerdiff: error: refusing to write {first}: it is an input of this run, or "
                                  "inside one; give another file name\n")
    link = tmp_path / "link.npz"
    link.symlink_to(first)
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", samples, "-o", link, "-q")
    assert code == 2 and "refusing to write" in err
    assert {f.name: f.read_bytes() for f in samples.iterdir()} == kept
    code, _, err = cli("compare", model, "--candidate", "ort-int8", "-o", tmp_path / "x.onnx", "--save-candidate",
                       tmp_path / "x.onnx", "-q")
    assert (code, err) == (2, "layerdiff: error: two outputs name the same file; give each its own path\n")


def test_unwritable_places_are_refused_before_the_run(cli, tmp_path):
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "-o", "/proc/r.json", "-q")
    assert code == 2 and err.startswith("layerdiff: error: cannot write /proc/r.json: ") and err.count("\n") == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):  # root can write anywhere
            code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--save-candidate", locked / "c.onnx", "-q")
            assert (code, err) == (2, f"layerdiff: error: cannot write {locked / 'c.onnx'}: permission denied; give "
                                      "a path you can write\n")
    finally:
        locked.chmod(0o700)
    cache = tmp_path / "cache"
    cache.write_text("a file")
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--cache-dir", cache],
            f"--cache-dir {cache} is a file, not a directory; give a directory")


def test_npy_renamed_npz(cli, tmp_path):
    f = tmp_path / "s.npz"
    with open(f, "wb") as fh:
        np.save(fh, np.zeros((1, 3, 32, 32), np.float32))
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", f],
            f"--inputs file {f} is a single .npy array, not an .npz of named arrays; save it with "
            "np.savez(path, NAME=array)")


@pytest.mark.parametrize("args, message", [
    (["--min-cosine", "1.5"], "Invalid value for '--min-cosine': 1.5 is not a cosine: give a number between -1 and 1, "
                              "e.g. 0.999"),
    (["--min-cosine", "nan"], "Invalid value for '--min-cosine': nan is not a cosine: give a number between -1 and 1, "
                              "e.g. 0.999"),
    (["--divergence-cosine", "x"], "Invalid value for '--divergence-cosine': 'x' is not a number; a cosine is between "
                                   "-1 and 1, e.g. 0.999"),
    (["--max-memory", "0"], "Invalid value for --max-memory: 0 is too small a budget: give at least 1KiB (e.g. 256MiB)"),
    (["--max-memory", "1"], "Invalid value for --max-memory: 1 is too small a budget: give at least 1KiB (e.g. 256MiB)"),
])
def test_loose_numbers_are_refused(cli, tmp_path, args, message):
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", *args], message)


def test_zero_dimension_in_shape(cli, tmp_path):
    _expect(cli, tmp_path, [FIXTURES / "dynamic_batch.onnx", "--candidate", "ort-int8", "--shape", "images:0x3x16x16"],
            "cannot parse --shape 'images:0x3x16x16': expected NAME:DIMxDIM... with every DIM at least 1, e.g. "
            "input:1x3x224x224")


def test_save_emulation_is_for_ort_fp16(cli, tmp_path):
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--save-emulation", tmp_path / "e.onnx"],
            "--save-emulation saves the FP16 emulation model of an ort-fp16 candidate")


def test_an_internal_error_is_not_the_tolerance_exit_code(cli, tmp_path, monkeypatch):
    from layerdiff import session

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(session.Session, "compare", broken)
    code, out, err = cli("compare", CNN, "--candidate", "ort-int8", "-q")
    assert code == 3
    assert err == ("layerdiff: internal error (ZeroDivisionError: division by zero); this is a bug in layerdiff: rerun "
                   "with --debug and report the traceback\n")


def test_shape_that_disagrees_with_a_fixed_dimension(cli, tmp_path):
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--shape", "input:1x3x64x64"],
            "--shape 'input:1x3x64x64' disagrees with the model, whose input 'input' is 1x3x32x32 (? marks the "
            "dynamic dimensions --shape sets)")


def test_an_input_of_unknown_rank_needs_a_shape(cli, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "norank.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    _expect(cli, tmp_path, [path, "--candidate", "ort-fp16"],
            "input 'x' has no shape in the model (its rank is unknown): give --shape x:DIMxDIM... or --inputs")


def test_a_model_failing_on_dimensions_set_to_1_says_so(cli, tmp_path):
    """Random inputs set dynamic dimensions to 1 (as Polygraphy's data loader does); a model that cannot
    run on them fails with ONNX Runtime's reason and what to do, in one line, with nothing else on stderr."""
    from onnx import TensorProto, helper

    pads = onnx.numpy_helper.from_array(np.array([0, 2, 0, 2], np.int64), "pads")
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "samples"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])], [pads])
    path = tmp_path / "pad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    report = tmp_path / "report.json"
    code, _, err = cli("compare", path, "--candidate", "ort-fp16", "-o", report, "-q")
    assert code == 2 and err.count("\n") == 1 and not report.exists()
    assert err.startswith("layerdiff: error: ONNX Runtime failed to run the model: ")
    assert err.endswith("; the random inputs set dynamic dimensions to 1 (x: samples): give --shape "
                        "NAME:DIMxDIM... for the shapes you deploy, or --inputs\n")
    code, _, err = cli("compare", path, "--candidate", "ort-fp16", "--shape", "x:1x8", "-o", report, "-q")
    assert code == 0 and report.exists()


def test_calibration_samples_with_nan_are_refused(cli, tmp_path):
    bad = tmp_path / "nan.npz"
    x = np.load(sorted((FIXTURES / "cnn_inputs").glob("*.npz"))[0])["input"].copy()
    x[0, 1, 2, 3] = np.nan
    np.savez(bad, input=x)
    _expect(cli, tmp_path, [CNN, "--candidate", "ort-int8", "--inputs", bad],
            "calibration sample 0 of " + str(bad) + " holds NaN or Inf in input 'input': INT8 ranges need finite "
            "values; give other --calib (or --inputs) samples")


def test_int8_of_a_model_that_already_computes_in_fp16(cli, tmp_path):
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])], [w])
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    _expect(cli, tmp_path, [path, "--candidate", "ort-int8"],
            "INT8 quantization starts from an FP32 model, and this one computes in float16 (tensor 'x'): give its "
            "FP32 original as MODEL")
