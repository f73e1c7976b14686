"""The one-line contract where strings come from a model or a user: messages show them escaped on one
line; files and pipes get them byte-exact; a user's --metric-fn cannot end layerdiff with no result; the
libraries' own warnings stay off stderr unless --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES

CNN = FIXTURES / "cnn.onnx"
INPUTS = FIXTURES / "cnn_inputs"
ENV = {k: v for k, v in os.environ.items() if k != "COLUMNS"}


def test_a_name_holding_a_newline_is_one_escaped_line(cli):
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.9",
                       "--outputs", "probs2\nlayerdiff: all fine")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("layerdiff: error: ")
    assert "probs2\\nlayerdiff: all fine" in err


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from layerdiff.cli import main

    where = tmp_path_factory.mktemp("recipe")
    assert main(["bisect", str(CNN), "--candidate", "ort-int8", "--inputs", str(INPUTS), "--min-cosine", "0.99999",
                 "--max-evals", "6", "-q", "-o", str(where / "recipe.json")]) in (0, 1)
    return where / "recipe.json"


@pytest.mark.parametrize("fmt", ["trtexec", "polygraphy", "modelopt"])
def test_export_to_a_pipe_is_byte_exact(recipe, tmp_path, fmt):
    data = json.loads(recipe.read_text())
    data["pins"][0]["node"] = "conv4\x1b[31m red"  # a node name holding an escape sequence
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(data))
    written = tmp_path / "out.txt"
    run = lambda *extra: subprocess.run([sys.executable, "-m", "layerdiff", "export", str(odd), "--format", fmt,  # noqa: E731
                                         *extra], capture_output=True, env=ENV)
    piped = run()
    assert run("-o", str(written)).returncode == piped.returncode == 0
    assert b"\x1b" in written.read_bytes()
    assert piped.stdout == written.read_bytes()


def test_a_metric_fn_calling_sys_exit_is_bad_input(cli, tmp_path):
    fn = tmp_path / "metric.py"
    fn.write_text("import sys\n\ndef score(ref, cand):\n    sys.exit(0)\n")
    code, out, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--metric-fn",
                         f"{fn}:score", "--min", "0.5", "--max-evals", "4", "-q")
    assert code == 2
    assert "sys.exit(0)" in err and err.count("\n") == 1


def test_python_warnings_of_the_libraries_stay_off_stderr(tmp_path):
    """A library's warnings.warn is shown with --debug only (logging.captureWarnings)."""
    code = ("import warnings, sys\n"
            "from layerdiff import cli\n"
            "cli._quiet_libraries(debug=False)\n"
            "warnings.warn('a library warning')\n")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loud = subprocess.run([sys.executable, "-c", code.replace("False", "True")], capture_output=True, text=True)
    assert quiet.returncode == loud.returncode == 0
    assert "a library warning" not in quiet.stderr
    assert "a library warning" in loud.stderr


def test_onnxruntime_telemetry_noise_stays_off_stderr_with_a_read_only_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=4k", "tmpfs", str(home)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (not root, or not allowed)")
    try:
        env = {**ENV, "HOME": str(home)}
        plain = subprocess.run([sys.executable, "-c", "import onnxruntime"], capture_output=True, text=True, env=env)
        if "telemetry" not in plain.stderr:
            pytest.skip("this onnxruntime says nothing of its telemetry with HOME read-only")
        proc = subprocess.run([sys.executable, "-m", "layerdiff", "compare", str(CNN), "--candidate", "ort-int8",
                               "--inputs", str(INPUTS), "-q"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0
        assert "telemetry" not in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)


def test_saving_back_a_users_invalid_candidate_is_bad_input(cli, tmp_path):
    """ONNX Runtime runs a candidate whose value_info contradicts its shapes; onnx.checker refuses it, and
    layerdiff writes only models that pass it: that is the user's file, not a bug."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(CNN))
    model.graph.value_info.append(helper.make_tensor_value_info(model.graph.node[0].output[0], TensorProto.FLOAT,
                                                                [1, 2, 3]))
    bad = tmp_path / "cand.onnx"
    onnx.save(model, str(bad))
    out = tmp_path / "out.onnx"
    code, _, err = cli("compare", CNN, "--candidate", bad, "--inputs", INPUTS, "-q", "--save-candidate", out)
    assert code == 2 and err.count("\n") == 1
    assert "--save-candidate" in err and "onnx.checker" in err
    assert not out.exists()
