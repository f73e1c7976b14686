"""Run every layerdiff command as a user who installed the wheel would: from a directory outside the
checkout, with the `layerdiff` on PATH (the installed console script), on copies of the bundled
fixtures. `layerdiff tui` runs in a real pseudo-terminal: it must draw the report, then quit on `q`.

    python scripts/check_installed.py [--engine-info LAYERS.json]

Standard library only: the environment under test holds layerdiff and its dependencies, nothing else.
Prints one line per command and exits 1 if any failed. CI runs it in a fresh virtual environment that has
the built wheel installed (see .ci/run).
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TIMEOUT = 300


def _run(name: str, args: list[str], cwd: Path, expect: tuple[int, ...] = (0,), makes: tuple[str, ...] = (),
         stdout_has: str = "") -> bool:
    t0 = time.monotonic()
    proc = subprocess.run(["layerdiff", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    problems = []
    if proc.returncode not in expect:
        problems.append(f"exit {proc.returncode}, expected {'/'.join(map(str, expect))}")
    problems += [f"did not write {f}" for f in makes if not (cwd / f).is_file() or (cwd / f).stat().st_size == 0]
    if stdout_has and stdout_has not in proc.stdout:
        problems.append(f"stdout lacks {stdout_has!r}")
    if "Traceback" in proc.stderr:
        problems.append("a traceback on stderr")
    _say(name, problems, time.monotonic() - t0, proc.stderr)
    return not problems


def _say(name: str, problems: list[str], seconds: float, stderr: str = "") -> None:
    status = "ok" if not problems else "FAILED: " + "; ".join(problems)
    print(f"{name:<34} {seconds:6.1f} s  {status}", flush=True)
    if problems and stderr:
        print("    stderr: " + stderr.strip().replace("\n", "\n    stderr: "), flush=True)


def _checked_models(work: Path, names: tuple[str, ...]) -> bool:
    """Every model the commands wrote passes onnx.checker's full check (external data and shapes too)."""
    import onnx

    t0, problems = time.monotonic(), []
    for name in names:
        try:
            onnx.checker.check_model(str(work / name), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OSError) as err:
            problems.append(f"{name}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
    _say("onnx.checker of the models written", problems, time.monotonic() - t0)
    return not problems


def _tui(report: Path, cwd: Path) -> bool:
    """`layerdiff tui REPORT` in a pseudo-terminal of 80x24: the table must be drawn (the first row's name
    appears on the screen), and `q` must end it with exit 0."""
    import fcntl
    import struct
    import termios

    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is 80x24, as a new user's
        os.chdir(cwd)
        os.environ["TERM"] = "xterm-256color"
        os.execvp("layerdiff", ["layerdiff", "tui", str(report)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    screen, problems, sent_q, code = b"", [], False, None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                break
            screen += chunk
        if not sent_q and b"conv1" in screen:  # the table is drawn: the CNN's first layer is on screen
            time.sleep(1.0)
            os.write(fd, b"q")
            sent_q = True
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
    end = time.monotonic() + 15  # the terminal closed: the process is ending
    while code is None and time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
        else:
            time.sleep(0.1)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        problems.append("did not end" + ("" if sent_q else " and drew no table"))
    os.close(fd)
    if code is not None:
        if not sent_q:
            problems.append("drew no table before it ended")
        if code != 0:
            problems.append(f"exit {code}")
    if b"Traceback" in screen:
        problems.append("a traceback on the screen")
    tail = screen.decode(errors="replace")[-600:] if problems else ""
    _say("tui REPORT (pty 80x24, then q)", problems, time.monotonic() - t0, tail)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-info", type=Path, help="a TensorRT layer-information JSON for `inspect`")
    args = parser.parse_args()
    exe = shutil.which("layerdiff")
    if exe is None:
        print("layerdiff is not on PATH: activate the environment the wheel is installed in", file=sys.stderr)
        return 2
    import layerdiff

    where = Path(layerdiff.__file__).resolve()
    if HERE in where.parents:
        print(f"layerdiff is imported from the checkout ({where}), not from an installed wheel", file=sys.stderr)
        return 2
    print(f"layerdiff {layerdiff.__version__} from {where.parent}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="layerdiff-installed-") as tmp:
        work = Path(tmp)
        shutil.copy(HERE / "fixtures" / "cnn.onnx", work / "cnn.onnx")
        shutil.copytree(HERE / "fixtures" / "cnn_inputs", work / "inputs")
        shutil.copy(HERE / "fixtures" / "transformer.onnx", work / "transformer.onnx")
        steps = [
            ("--version", ["--version"], (0,), (), "layerdiff"),
            ("compare ort-int8", ["compare", "cnn.onnx", "--candidate", "ort-int8", "--inputs", "inputs",
                                  "-o", "report.json", "--save-candidate", "int8.onnx"], (0,),
             ("report.json", "int8.onnx"), "first divergent"),
            ("compare ort-fp16", ["compare", "transformer.onnx", "--candidate", "ort-fp16", "-q",
                                  "-o", "fp16.json"], (0,), ("fp16.json",), ""),
            ("compare CANDIDATE.onnx --bench", ["compare", "cnn.onnx", "--candidate", "int8.onnx", "--inputs",
                                                "inputs", "--bench", "5", "--warmup", "1", "-q"], (0,), (), ""),
            ("bisect", ["bisect", "cnn.onnx", "--candidate", "ort-int8", "--inputs", "inputs", "--min-cosine",
                        "0.99999", "--max-evals", "12", "-o", "recipe.json"], (0, 1), ("recipe.json",), ""),
            ("apply", ["apply", "recipe.json", "cnn.onnx", "--inputs", "inputs", "-o", "applied.onnx"], (0, 1),
             ("applied.onnx",), ""),
        ]
        steps += [(f"export --format {fmt}", ["export", "recipe.json", "--format", fmt, "-o", f"recipe.{fmt}"],
                   (0,), (f"recipe.{fmt}",), "") for fmt in ("trtexec", "polygraphy", "modelopt", "ort",
                                                             "ort-overrides", "onnx")]
        steps += [("export --format model-explorer", ["export", "report.json", "--format", "model-explorer",
                                                      "-o", "nodes.json"], (0,), ("nodes.json",), ""),
                  ("plot", ["plot", "report.json", "-o", "plot.png"], (0,), ("plot.png",), "")]
        if args.engine_info:
            steps.append(("inspect", ["inspect", str(args.engine_info.resolve())], (0,), (), ""))
        for name, argv, expect, makes, has in steps:
            ok &= _run(name, argv, work, expect, makes, has)
        ok &= _checked_models(work, ("int8.onnx", "applied.onnx", "recipe.onnx"))
        ok &= _tui(work / "report.json", work)
    print("installed wheel: every command ran" if ok else "installed wheel: some commands FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
