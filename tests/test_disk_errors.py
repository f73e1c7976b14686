"""A full or read-only disk is the user's to fix, not a bug: one line naming the path, exit 2, and what
finished kept whole (a resume state as of its last evaluation). /dev/full stands for a full disk
everywhere; where this process may mount (root, as in CI), a real full tmpfs and a read-only one too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

CNN = FIXTURES / "cnn.onnx"
INPUTS = FIXTURES / "cnn_inputs"
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full here")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


@needs_dev_full
@pytest.mark.parametrize("flag", ["-o", "--save-candidate"])
def test_compare_output_on_a_full_device(cli, flag):
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "-q", flag, DEV_FULL)
    assert code == 2
    line = _one_line(err)
    assert "/dev/full" in line and "no space left" in line


@needs_dev_full
def test_a_full_standard_output_is_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "layerdiff", "compare", str(CNN), "--candidate", "ort-int8", "--inputs",
                           str(INPUTS)], stdout=DEV_FULL.open("w"), stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2
    assert "standard output" in _one_line(proc.stderr)


def test_every_disk_error_of_a_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    from layerdiff.errors import OutputPathError
    from layerdiff.files import write_atomic

    target = tmp_path / "report.json"
    target.write_text("old")
    real = os.replace
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")):
        def fail(src, dst, code=code):
            raise OSError(code, os.strerror(code), str(dst))

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OutputPathError, match=words):
            write_atomic(target, b"new")
        monkeypatch.setattr(os, "replace", real)
        assert target.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


@pytest.fixture
def small_mount(tmp_path):
    """A 64 KiB tmpfs (needs root and a kernel that lets this process mount)."""
    where = tmp_path / "mnt"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_file_system_under_resume_keeps_the_state_whole(cli, small_mount):
    state = small_mount / "state.json"
    # one page left: the first state file fits, the next (written beside it, then renamed) does not
    (small_mount / "ballast").write_bytes(b"\0" * (64 * 1024 - 4096))
    code, _, err = cli("bisect", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "--min-cosine", "0.99999",
                       "--max-evals", "40", "-q", "--resume", state)
    if code == 0:
        pytest.skip("the state fitted in the room left")
    assert code == 2
    line = _one_line(err)
    assert str(state) in line and "no space left" in line
    rows = json.loads(state.read_text())["evaluations"]  # whole, as of the last evaluation written
    assert rows


def test_a_read_only_cache_dir_is_bad_input(cli, small_mount):
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    code, _, err = cli("compare", CNN, "--candidate", "ort-int8", "--inputs", INPUTS, "-q", "--cache-dir",
                       small_mount / "cache")
    assert code == 2
    assert str(small_mount / "cache") in _one_line(err)
