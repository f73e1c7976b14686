import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import layerdiff
from tests.conftest import FIXTURES


def test_compare_prints_summary_and_writes_report(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs",
                          FIXTURES / "cnn_inputs", "-o", out, "--top", "3")
    assert code == 0
    assert "output probs: cosine 0.99" in stdout and "worst 3 rows by local error" in stdout
    assert "first divergent layer: none" in stdout
    d = json.loads(out.read_text())
    assert d["inputs"]["samples"] == 4 and not d["inputs"]["random"]


def test_quiet_prints_nothing(cli, tmp_path):
    code, stdout, stderr = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs",
                               FIXTURES / "cnn_inputs", "-q", "-o", tmp_path / "r.json")
    assert (code, stdout, stderr) == (0, "", "")


def test_random_inputs_are_announced_even_when_quiet(cli):
    code, stdout, stderr = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "-q")
    assert code == 0 and "seeded random inputs" in stderr and stdout == ""
    code, stdout, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16")
    assert "warning: no --inputs given: using seeded random inputs" in stdout


def test_min_cosine_fails_with_exit_1(cli):
    code, _, err = cli("compare", FIXTURES / "fp16_overflow.onnx", "--candidate", "ort-fp16", "-q",
                       "--min-cosine", "0.99")
    assert code == 1 and "tolerance failed: final output outside cosine 0.99 for out" in err
    code, _, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "-q", "--min-cosine", "0.99")
    assert code == 0


def test_first_divergence_in_summary(cli):
    code, stdout, _ = cli("compare", FIXTURES / "fp16_overflow.onnx", "--candidate", "ort-fp16")
    assert code == 0 and "first divergent layer: big_matmul (#0 MatMul, fp16*)" in stdout


def test_save_candidate_then_compare_it(cli, tmp_path):
    cand = tmp_path / "cand.onnx"
    r1, r2 = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
               "--save-candidate", cand, "-o", r1, "-q")[0] == 0
    assert onnx.load(cand).ir_version <= 13
    assert cli("compare", FIXTURES / "cnn.onnx", "--candidate", cand, "--inputs", FIXTURES / "cnn_inputs",
               "-o", r2, "-q")[0] == 0
    a, b = json.loads(r1.read_text()), json.loads(r2.read_text())
    assert a["outputs"][0]["cosine"] == pytest.approx(b["outputs"][0]["cosine"], abs=1e-12)
    assert [lay["precision"] for lay in a["layers"]] == [lay["precision"] for lay in b["layers"]]
    assert b["candidate"]["kind"] == "onnx" and len(b["candidate"]["sha256"]) == 64


def test_polygraphy_saved_inputs(cli, tmp_path):
    from polygraphy.json import save_json

    feeds = []
    for f in sorted((FIXTURES / "cnn_inputs").glob("*.npz"))[:2]:
        with np.load(f) as d:
            feeds.append({"input": d["input"]})
    path = tmp_path / "inputs.json"
    save_json(feeds, str(path))
    out = tmp_path / "r.json"
    assert cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs", path, "-o", out, "-q")[0] == 0
    assert json.loads(out.read_text())["inputs"]["samples"] == 2


def test_real_polygraphy_save_inputs_file(shared_dir):
    """The real `polygraphy run --save-inputs` file from the TensorRT cookbook (tensorX, 4x1x28x28)."""
    from layerdiff.graph import InputSpec
    from layerdiff.inputs import load_samples

    path = shared_dir / "fixtures" / "polygraphy_results" / "cookbook_runexample_trt861_input.json"
    spec = InputSpec("tensorX", onnx.TensorProto.FLOAT, ("B", 1, 28, 28))
    samples = load_samples(path, (spec,), {})
    assert len(samples) == 1 and samples.feeds[0]["tensorX"].shape == (4, 1, 28, 28)
    assert samples.feeds[0]["tensorX"].dtype == np.float32 and not samples.random


def test_help_and_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and layerdiff.__version__ in out
    code, out, _ = cli("compare", "--help")
    assert code == 0 and "--candidate" in out and "--max-memory" in out


def test_public_api():
    assert sorted(layerdiff.__all__) == sorted([
        "BackendError", "BadInput", "Cancelled", "Candidate", "CandidateInfo", "CandidateSource", "CaptureInfo",
        "Counts", "Divergence", "EngineInfoError", "Evaluation", "FakeBackend", "InputDataError", "InputsInfo", "Kernel",
        "LayerDiff", "LayerdiffError", "ModelError", "ModelInfo", "OutputDiff", "OutputPathError", "PlanError",
        "PrecisionPlan", "ReferenceInfo", "Report", "ReportError", "Session", "TensorDiff", "Thresholds", "Tolerance",
        "__version__", "compare", "load_report", "prepare", "rank_layers", "write_report",
    ])
    for name in layerdiff.__all__:
        assert hasattr(layerdiff, name)
    assert all(issubclass(getattr(layerdiff, e), layerdiff.LayerdiffError) for e in layerdiff.__all__
               if e.endswith(("Error", "Input")) or e == "Cancelled")


def test_import_layerdiff_imports_neither_textual_nor_tensorrt():
    code = "import sys, layerdiff, layerdiff.cli; print(sorted(m for m in ('textual', 'tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "layerdiff.cli", "compare", str(FIXTURES / "nope.onnx"),
                          "--candidate", "ort-int8"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("layerdiff: error: model not found")
    from layerdiff._entry import main

    assert main.__module__ == "layerdiff._entry"  # pyproject's [project.scripts] names this function
    assert 'layerdiff = "layerdiff._entry:main"' in (FIXTURES.parent / "pyproject.toml").read_text()


def test_import_layerdiff_loads_no_runtime():
    """`import layerdiff` is light (the public names load on first use): the command starts fast and a
    Ctrl-C while it starts is an interruption, not a traceback from inside ONNX Runtime's import."""
    code = "import sys, layerdiff; print(sorted(m for m in ('onnxruntime', 'onnx', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_closed_pipe_is_exit_141_not_the_tolerance_code():
    """`layerdiff compare ... | head -1`: the reader goes away; exit 141 (as SIGPIPE), nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from layerdiff._entry import main; sys.exit(main())",
                             "compare", str(FIXTURES / "cnn.onnx"), "--candidate", "ort-int8", "--inputs",
                             str(FIXTURES / "cnn_inputs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(120) == 141 and err == b""


def test_no_arguments_shows_the_help(cli):
    code, out, err = cli()
    assert code == 0 and out.startswith("Usage: layerdiff") and "compare" in out and err == ""


def test_options_that_cannot_apply_are_refused_before_any_work(cli, tmp_path, monkeypatch):
    import layerdiff.session as session

    monkeypatch.setattr(session, "prepare", lambda *a, **k: pytest.fail("work began"))
    cases = [
        (["--candidate", "ort-int8", "--save-emulation", tmp_path / "e.onnx"],
         "--save-emulation saves the FP16 emulation model of an ort-fp16 candidate"),
        (["--candidate", "ort-fp16", "--save-engine-info", tmp_path / "l.json"],
         "--save-engine-info writes the layer information of an engine layerdiff built: use it with --candidate trt-*"),
        (["--candidate", f"polygraphy:{tmp_path / 'nope.json'}"], f"Polygraphy results not found: {tmp_path / 'nope.json'}"),
        (["--candidate", f"polygraphy:{FIXTURES / 'cnn.onnx'}", "--save-candidate", tmp_path / "c.onnx"],
         "--save-candidate: imported results have no ONNX model to save"),
    ]
    for args, message in cases:
        code, _, err = cli("compare", FIXTURES / "cnn.onnx", *args, "-q")
        assert (code, err) == (2, f"layerdiff: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_piped_output_keeps_prose_lines_whole_and_honours_columns(tmp_path):
    env = {**__import__("os").environ, "COLUMNS": "100"}
    args = [sys.executable, "-m", "layerdiff.cli", "compare", str(FIXTURES / "cnn.onnx"), "--candidate", "ort-int8"]
    out = subprocess.run(args, capture_output=True, text=True, env=env).stdout
    lines = out.splitlines()
    warning = next(line for line in lines if line.startswith("warning: no --inputs given"))
    assert warning.endswith("pass real samples with --inputs")  # one line, however long
    table = lines[lines.index(next(line for line in lines if line.startswith("worst "))) + 1:]
    assert max(len(line) for line in table if line.strip()) <= 100
    quiet = subprocess.run(args + ["-q"], capture_output=True, text=True, env=env).stderr
    assert quiet.count("\n") == 1 and quiet.startswith("warning: no --inputs given")


def test_ci_checks_that_shared_is_there():
    """Tests that read ../shared skip where it is missing (a user's clone); CI must not let them skip."""
    run = (FIXTURES.parent / ".ci" / "run").read_text()
    assert "../shared" in run and "exit 1" in run


def test_interrupt_keeps_what_finished(cli, tmp_path, monkeypatch):
    """Ctrl-C while the second sample is compared: the report keeps the first sample, says so, exit 130."""
    from layerdiff import capture

    real, calls = capture._Capture._compare, []

    def compare(self, compared, r, c):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, compared, r, c)

    monkeypatch.setattr(capture._Capture, "_compare", compare)
    out = tmp_path / "r.json"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs",
                       FIXTURES / "cnn_inputs", "-o", out, "-q")
    assert code == 130
    assert err == f"layerdiff: interrupted after 1 of 4 sample(s) in every chunk; the partial report is in {out}\n"
    d = json.loads(out.read_text())
    assert d["capture"]["interrupted"] and d["capture"]["samples_done"] == 1
    assert all(o["samples"] == 1 for lay in d["layers"] for o in lay["outputs"] if o["paired"])
    assert any(o["paired"] for lay in d["layers"] for o in lay["outputs"])


def test_debug_shows_the_traceback(cli, tmp_path):
    code, _, err = cli("compare", tmp_path / "nope.onnx", "--candidate", "ort-int8", "--debug")
    assert code == 2 and "Traceback" in err and err.rstrip().endswith(
        f"layerdiff: error: model not found: {tmp_path / 'nope.onnx'} (give the path of an .onnx file)")


def _bracketed_model(tmp_path):
    """A model whose node names look like rich markup: `[/bold]relu` and `attn[i]`."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="attn[i]"),
             helper.make_node("Relu", ["h"], ["y"], name="[/bold]relu")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "brackets.onnx")
    return tmp_path / "brackets.onnx"


def test_names_are_never_read_as_markup(cli, tmp_path):
    model = _bracketed_model(tmp_path)
    code, out, err = cli("compare", model, "--candidate", "fake", "--top", "5", "-o", tmp_path / "r.json")
    assert code == 0, err
    assert "attn[i]" in out and "[/bold]relu" in out


def test_a_name_holding_a_newline_stays_on_its_row(tmp_path):
    from rich.console import Console

    from layerdiff.console import print_summary

    onnx_model = onnx.load(_bracketed_model(tmp_path))
    onnx_model.graph.node[0].name = "two\nlines"
    onnx.save(onnx_model, tmp_path / "nl.onnx")
    report = layerdiff.compare(tmp_path / "nl.onnx", "fake", reference_provider="cpu")
    console = Console(width=80, record=True, color_system=None)
    print_summary(report, console, 15)
    text = console.export_text()
    assert "two\\nlines" in text and not any(line.startswith("lines") for line in text.splitlines())


def test_inspect_shows_torch_tensorrt_names_with_brackets(cli, shared_dir, monkeypatch):
    """The report's crash: layerdiff inspect exited 1 on the real Torch-TensorRT file (aten layer names)."""
    monkeypatch.setenv("COLUMNS", "200")  # wide enough for the name on one line of its column
    path = shared_dir / "fixtures" / "trt_engine_info" / "fuzzylabs_resnet18_torchtrt_fp16_trt10x.engine_layer_information.json"
    code, out, err = cli("inspect", path)
    assert code == 0, err
    raw = json.loads(path.read_text())["Layers"][0]["Name"]
    assert "[" in raw and raw[:40] in out.replace("\n", "")


def test_the_table_fits_80_columns(tmp_path):
    """In a terminal 80 columns wide nothing is wider, and numbers are never cut."""
    from rich.console import Console

    from layerdiff.console import print_summary

    report = layerdiff.compare(FIXTURES / "cnn.onnx", "ort-int8", inputs=FIXTURES / "cnn_inputs",
                               reference_provider="cpu")
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    print_summary(report, console, 15)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    table = text[text.index("worst 15 rows"):]
    for lay in layerdiff.rank_layers(report)[:15]:
        assert f"{lay.local_cosine:.6f}" in table  # the number whole


def test_save_candidate_writes_the_deployable_fp16_model(cli, tmp_path):
    """The report's finding: --save-candidate with ort-fp16 wrote the emulation model (casts around FP32 ops)."""
    cand, emu = tmp_path / "fp16.onnx", tmp_path / "emu.onnx"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs", FIXTURES / "cnn_inputs",
                       "--save-candidate", cand, "--save-emulation", emu, "-q")
    assert code == 0, err
    saved, emulation = onnx.load(cand), onnx.load(emu)
    conv = next(n for n in saved.graph.node if n.name == "conv1")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(saved).graph.value_info}
    assert types[conv.output[0]] == onnx.TensorProto.FLOAT16  # the real FP16 model
    assert not any("::cast_" in n.name for n in saved.graph.node)
    assert any("::cast_out" in n.name for n in emulation.graph.node)


def test_first_divergence_not_computed_says_why(cli, tmp_path):
    """All-NaN inputs: every local error compares nothing, and the summary says so instead of "none"."""
    np.savez(tmp_path / "nan.npz", input=np.full((1, 3, 32, 32), np.nan, np.float32))
    code, stdout, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs", tmp_path / "nan.npz")
    assert code == 0
    assert ("first divergent layer: not computed: every local error compares NaN or Inf only (no element is finite "
            "in both the candidate and the FP32 recomputation)") in stdout.replace("\n", " ")
    assert "first divergent layer: none" not in stdout
