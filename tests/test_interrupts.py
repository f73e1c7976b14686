"""Ctrl-C keeps what finished: a report whose rows were all captured, a recipe for a finished search
(marked where a later step did not finish); a second Ctrl-C stops at once; and the timing worker and its
scratch directory do not outlive a layerdiff killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

CNN = FIXTURES / "cnn.onnx"
SEARCH = ("bisect", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs", "--min-cosine", "0.99999",
          "--max-evals", "6", "-q")


def _ctrl_c(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_in_the_final_kernel_check_keeps_every_row(cli, tmp_path, monkeypatch):
    import layerdiff.session

    monkeypatch.setattr(layerdiff.session, "kernel_check", _ctrl_c)
    out = tmp_path / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs", "-o", out)
    assert code == 130
    assert "interrupted" in err and str(out) in err
    report = json.loads(out.read_text())
    assert report["capture"]["interrupted"] is True
    layers = [row for row in report["layers"] if row["kind"] == "layer"]
    assert layers and all(o["cosine"] is not None for row in layers for o in row["outputs"])
    assert any("that check alone did not run" in w for w in report["warnings"])


def test_ctrl_c_in_the_gate_keeps_the_report(cli, tmp_path, monkeypatch):
    import layerdiff.gate

    monkeypatch.setattr(layerdiff.gate, "gate_checks", _ctrl_c)
    out = tmp_path / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", FIXTURES / "cnn_inputs",
                       "--max-abs", "1", "-o", out)
    assert code == 130 and "no cost and no gate" in err
    assert json.loads(out.read_text())["layers"]


def test_ctrl_c_in_the_held_out_check_writes_the_recipe_marked_unchecked(cli, tmp_path, monkeypatch):
    import layerdiff.bisect

    monkeypatch.setattr(layerdiff.bisect, "_held_out", _ctrl_c)
    out = tmp_path / "recipe.json"
    code, _, err = cli(*SEARCH, "-o", out)
    assert code == 130
    assert "held-out check" in err and "no recipe written" not in err
    recipe = json.loads(out.read_text())
    assert recipe["finished"] is False and recipe["interrupted_at"] == "held-out check"
    assert recipe["holdout"] is None and recipe["pins"]
    assert any("NOT checked" in w for w in recipe["warnings"])


def test_ctrl_c_while_evidence_is_gathered_is_not_swallowed(cli, tmp_path, monkeypatch):
    """compare (which gathers the evidence) keeps what finished when interrupted: bisect must see that."""
    import layerdiff.session

    real = layerdiff.session.capture

    def interrupted_capture(*args, **kwargs):
        res = real(*args, **kwargs)
        res.interrupted = True  # as a Ctrl-C at its end leaves it
        return res

    monkeypatch.setattr(layerdiff.session, "capture", interrupted_capture)
    out = tmp_path / "recipe.json"
    code, _, err = cli(*SEARCH, "-o", out)
    assert code == 130 and "evidence" in err
    recipe = json.loads(out.read_text())
    assert recipe["finished"] is False and recipe["interrupted_at"] == "evidence"
    assert recipe["pins"] and all(not p.get("evidence") for p in recipe["pins"])


def test_a_second_ctrl_c_stops_at_once(cli, tmp_path, monkeypatch):
    import layerdiff.bisect

    monkeypatch.setattr(layerdiff.bisect, "_held_out", _ctrl_c)
    monkeypatch.setattr(layerdiff.bisect, "pin_infos", _ctrl_c)  # the step run after the first Ctrl-C
    out = tmp_path / "recipe.json"
    code, _, err = cli(*SEARCH, "-o", out)
    assert code == 130 and "no recipe written" in err
    assert not out.exists()


def _children_of_tmp(tmp: Path, part: str = "") -> list[int]:
    """The processes whose command line names a path under `tmp` (and holds `part`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                line = (proc / "cmdline").read_bytes()
                if str(tmp).encode() in line and part.encode() in line:
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_kill_9_of_compare_bench_leaves_no_worker_and_no_scratch_directory(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "layerdiff", "compare", str(CNN), "--candidate", "ort-int8",
                             "--inputs", str(FIXTURES / "cnn_inputs"), "--bench", "100000000", "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _children_of_tmp(scratch, "job-"):  # a worker is timing
            time.sleep(0.2)
        assert _children_of_tmp(scratch, "job-"), "the timing worker never started"
        assert any(p.name.startswith("layerdiff-bench-") for p in scratch.iterdir())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    ours = lambda: [p.name for p in scratch.iterdir() if p.name.startswith("layerdiff")]  # noqa: E731
    while time.monotonic() < deadline and (_children_of_tmp(scratch) or ours()):
        time.sleep(0.2)
    assert _children_of_tmp(scratch) == []
    assert ours() == []


def test_a_failure_while_evidence_is_gathered_keeps_the_recipe(cli, tmp_path, monkeypatch):
    """The evidence describes the answer; a failure there (an ONNX Runtime error on a model nobody tried)
    must not throw the finished search away."""
    import layerdiff.session

    def broken(self, *args, **kwargs):
        raise RuntimeError("ONNX Runtime could not run the exploded graph")

    monkeypatch.setattr(layerdiff.session.Session, "compare", broken)
    out = tmp_path / "recipe.json"
    code, _, err = cli(*SEARCH, "-o", out)
    assert code in (0, 1) and "internal error" not in err
    recipe = json.loads(out.read_text())
    assert recipe["pins"] and recipe["finished"] is True
    assert any("evidence could not be gathered (RuntimeError" in w for w in recipe["warnings"])
