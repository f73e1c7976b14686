import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import layerdiff
from tests.conftest import FIXTURES, SHARED


def test_compare_prints_summary_and_writes_report(cli, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-int8", "--inputs",
                          FIXTURES / "cnn_inputs", "-o", out, "--top", "3")
    assert code == 0
    assert "output probs: cosine 0.99" in stdout and "worst 3 layers by local error" in stdout
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
    assert code == 1 and "tolerance failed: final output cosine below 0.99 for out" in err
    code, _, _ = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "-q", "--min-cosine", "0.99")
    assert code == 0


def test_first_divergence_in_summary(cli):
    code, stdout, _ = cli("compare", FIXTURES / "fp16_overflow.onnx", "--candidate", "ort-fp16")
    assert code == 0 and "first divergent layer: big_matmul (#0 MatMul, fp16)" in stdout


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
        "BackendError", "BadInput", "LayerDiff", "LayerdiffError", "PrecisionPlan", "Report", "TensorDiff",
        "__version__", "compare", "rank_layers", "write_report",
    ])
    for name in layerdiff.__all__:
        assert hasattr(layerdiff, name)


def test_import_layerdiff_imports_neither_textual_nor_tensorrt():
    code = "import sys, layerdiff, layerdiff.cli; print(sorted(m for m in ('textual', 'tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "layerdiff.cli", "compare", str(FIXTURES / "nope.onnx"),
                          "--candidate", "ort-int8"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("layerdiff: error: model not found")


def test_shared_dir_constant_points_beside_project():
    assert SHARED.name == "shared"


def test_interrupt_keeps_what_finished(cli, tmp_path, monkeypatch):
    """Ctrl-C during the third model run: the report keeps the first sample, says so, exit 130."""
    from layerdiff.backends import ort as ort_backend

    real_run, calls = ort_backend.Session.run, []

    def run(self, names, feed):
        calls.append(1)
        if len(calls) == 4:  # sample 0: reference, candidate, exploded graph; then Ctrl-C in sample 1
            raise KeyboardInterrupt
        return real_run(self, names, feed)

    monkeypatch.setattr(ort_backend.Session, "run", run)
    out = tmp_path / "r.json"
    code, _, err = cli("compare", FIXTURES / "cnn.onnx", "--candidate", "ort-fp16", "--inputs",
                       FIXTURES / "cnn_inputs", "-o", out, "-q")
    assert code == 130
    assert err == f"layerdiff: interrupted after 1 of 4 sample(s) in every chunk; the partial report is in {out}\n"
    d = json.loads(out.read_text())
    assert d["capture"]["interrupted"] and d["capture"]["samples_done"] == 1
    assert all(o["samples"] == 1 for lay in d["layers"] for o in lay["outputs"])
    assert d["outputs"][0]["paired"] is False  # the final plain run never happened


def test_debug_shows_the_traceback(cli, tmp_path):
    code, _, err = cli("compare", tmp_path / "nope.onnx", "--candidate", "ort-int8", "--debug")
    assert code == 2 and "Traceback" in err and err.rstrip().endswith(
        f"layerdiff: error: model not found: {tmp_path / 'nope.onnx'} (give the path of an .onnx file)")
