"""The report as a value: written and read back equal, and a broken file refused in one line."""

import json
import os

import pytest

import layerdiff
from layerdiff import ReportError, load_report, write_report
from tests.conftest import FIXTURES

CASES = [
    ("cnn.onnx", "ort-int8", {"inputs": FIXTURES / "cnn_inputs"}),
    ("cnn.onnx", "ort-fp16", {"inputs": FIXTURES / "cnn_inputs"}),
    ("transformer.onnx", "ort-int8", {}),
    ("transformer.onnx", "ort-fp16", {}),
    ("fp16_overflow.onnx", "ort-fp16", {"min_cosine": 0.99}),  # NaN and inf metrics
    ("dynamic_batch.onnx", "ort-int8", {"shapes": ["images:2x3x16x16"], "max_memory": 40_000}),
    ("if_model.onnx", "ort-fp16", {"seed": 4}),
    ("cnn.onnx", "fake", {"inputs": FIXTURES / "cnn_inputs"}),
]


@pytest.mark.parametrize("name,candidate,kwargs", CASES, ids=[f"{n}-{c}" for n, c, _ in CASES])
def test_round_trip_on_every_fixture(name, candidate, kwargs, tmp_path):
    report = layerdiff.compare(FIXTURES / name, candidate, reference_provider="cpu", **kwargs)
    write_report(report, tmp_path / "r.json")
    again = load_report(tmp_path / "r.json")
    assert again == report
    assert again.to_dict() == report.to_dict()


def test_nonfinite_metrics_are_null_with_their_kind_beside(tmp_path):
    report = layerdiff.compare(FIXTURES / "fp16_overflow.onnx", "ort-fp16", reference_provider="cpu")
    d = report.to_dict()
    out = d["outputs"][0]
    assert out["cosine"] is None and out["nonfinite_values"]["cosine"] == "nan"
    same = layerdiff.compare(FIXTURES / "transformer.onnx", str(FIXTURES / "transformer.onnx"), reference_provider="cpu")
    identical = next(o for lay in same.to_dict()["layers"] for o in lay["outputs"] if o["paired"] and o["max_abs"] == 0)
    assert identical["sqnr_db"] is None and identical["nonfinite_values"] == {"sqnr_db": "inf"}
    json.dumps(d, allow_nan=False)  # valid JSON: no NaN or Infinity tokens


def test_written_files_follow_the_umask(tmp_path):
    report = layerdiff.compare(FIXTURES / "transformer.onnx", "fake", reference_provider="cpu")
    old = os.umask(0o022)
    try:
        write_report(report, tmp_path / "a.json")
        os.umask(0o077)
        write_report(report, tmp_path / "b.json")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def _write(tmp_path, text):
    path = tmp_path / "r.json"
    path.write_text(text)
    return path


def test_a_missing_report(tmp_path):
    with pytest.raises(ReportError) as err:
        load_report(tmp_path / "nope.json")
    assert str(err.value) == f"report not found: {tmp_path / 'nope.json'} (write one with layerdiff compare ... -o nope.json)"


def test_a_corrupt_report(tmp_path):
    path = _write(tmp_path, '{"schema": "layerdiff.report/1", "model": ')
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value).startswith(f"{path} is not a layerdiff report (not readable JSON: Expecting value")


def test_a_report_of_another_schema_version(tmp_path):
    path = _write(tmp_path, json.dumps({"schema": "layerdiff.report/2"}))
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value) == (f"{path} has schema 'layerdiff.report/2'; this layerdiff reads 'layerdiff.report/1' "
                              "(made by another version: re-run layerdiff compare to make a new report)")


def test_not_a_report(tmp_path):
    path = _write(tmp_path, json.dumps([1, 2, 3]))
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value) == f'{path} is not a layerdiff report (no "schema" field)'


def test_a_damaged_report(tmp_path):
    report = layerdiff.compare(FIXTURES / "transformer.onnx", "fake", reference_provider="cpu")
    d = report.to_dict()
    del d["counts"]["rows"]
    path = _write(tmp_path, json.dumps(d))
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value) == f"{path} is a damaged layerdiff report (counts lacks rows); re-run layerdiff compare"


def test_a_replaced_file_keeps_its_mode_and_a_link_stays_a_link(tmp_path):
    from layerdiff.files import write_atomic

    old = tmp_path / "report.json"
    old.write_text("old")
    old.chmod(0o600)
    write_atomic(old, b"new")
    assert old.read_bytes() == b"new" and (old.stat().st_mode & 0o777) == 0o600
    link = tmp_path / "latest.json"
    link.symlink_to(old)
    write_atomic(link, b"newer")
    assert link.is_symlink() and old.read_bytes() == b"newer"


def test_a_pipe_is_written_through_not_replaced(tmp_path):
    """The trial's finding: -o /dev/null replaced the device with a file (a rename over it). A named pipe
    stands in for /dev/null and /dev/stdout here: it must stay a pipe and carry the bytes."""
    import os
    import stat
    import threading

    from layerdiff.files import write_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_dev_stdout_into_a_pipe_is_written_through(tmp_path):
    """A new user's `layerdiff export R --format trtexec -o /dev/stdout | cat` was refused: /dev/stdout
    of a process whose standard output is a pipe resolves to /proc/PID/fd/pipe:[N], which is no path."""
    import subprocess
    import sys

    code = ("import sys; from layerdiff.files import write_atomic, check_writable; "
            "check_writable('/dev/stdout'); write_atomic('/dev/stdout', b'through the pipe')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"through the pipe"


def test_a_row_with_new_nan_or_inf_shows_no_local_cosine():
    """The cosine of a row's finite values alone read as agreement (1.000000) beside its NaN/Inf in a new
    user's Magika FP16 report: the console leaves that cell empty and says NaN/Inf in the next one."""
    from dataclasses import replace

    from layerdiff.console import worst_table
    from layerdiff.metrics import Aggregate
    from rich.console import Console
    from tests.conftest import load_script

    row = load_script("bench_tui").synthetic_report(3).layers[1]
    out = row.outputs[0]
    worst = replace(out.local.worst, cosine=1.0, cand_nonfinite=5, ref_nonfinite=0)
    bad = replace(row, outputs=(replace(out, local=Aggregate(worst, out.local.mean, out.local.samples)),))
    assert bad.local_nonfinite and bad.local_cosine == 1.0
    console = Console(width=80, record=True)
    console.print(worst_table([bad], 80))
    line = next(ln for ln in console.export_text().splitlines() if bad.name[:6] in ln)
    assert "NaN/Inf" in line and "1.000000" not in line.split("NaN/Inf")[0]


def test_the_worst_table_gives_names_the_room_the_other_columns_leave():
    """Names were cut to 12 characters although the table used 73 of 80 columns (a new user's YOLOv8
    report: eight rows read `hards..tmp_0`)."""
    from dataclasses import replace

    from layerdiff.console import worst_table
    from rich.console import Console
    from tests.conftest import load_script

    rows = load_script("bench_tui").synthetic_report(4).layers[:3]
    rows = [replace(r, name=f"/model.{i}/backbone/stage{i}/conv/Conv_output_0") for i, r in enumerate(rows)]
    console = Console(width=80, record=True)
    console.print(worst_table(rows, 80))
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    shown = [line for line in lines if "/model." in line]
    assert len(shown) == 3 and all(len(line.split()[1]) >= 20 for line in shown)


def test_a_named_pipe_that_is_an_input_is_not_written(tmp_path, monkeypatch):
    """Devices and pipes are written through, but one that is an input of the run is still refused,
    also named by a relative path (review of this session's change)."""
    import os

    from layerdiff.errors import OutputPathError
    from layerdiff.files import check_writable

    fifo = tmp_path / "samples.fifo"
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputPathError, match="it is an input of this run"):
        check_writable("samples.fifo", protect=(str(fifo),))
    assert str(check_writable("samples.fifo")) == "samples.fifo"  # written through the name given
