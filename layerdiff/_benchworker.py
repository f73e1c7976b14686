"""The process that times one model: `python -m layerdiff._benchworker JOBDIR PARENT_PID`. It runs alone so that
its peak memory is the memory of that one model's session (plus Python and ONNX Runtime themselves,
measured before the model loads and reported beside it), and imports only numpy, ONNX Runtime and
layerdiff.backends.ortnames (the session settings every layerdiff session shares).

JOBDIR holds job.json ({"model": path, "providers": [...], "level": "all", "warmup": W, "runs": N,
"profile_runs": P}) and feeds.npz (sample k's input NAME stored as "k/NAME"). The worker writes
result.json: the latencies of N plain runs after W warm-up runs (the samples in turn), its peak RSS
after them, then (P > 0) the per-node kernel times of P more runs of a second, profiled session (ONNX
Runtime's own profiler), and the graph ONNX Runtime ran (optimized.onnx) to attribute them.

The worker dies with the layerdiff process that started it, however that one ends (kill -9 too: Linux's
parent-death signal). `python -m layerdiff._benchworker --janitor DIR` is the other half: it waits until
its standard input closes (its parent ended, however) and then removes DIR, the timing's scratch
directory, so that no exit path leaves it behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    """Peak RSS of this process's own memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so it would hold the parent's size (the layerdiff process that started us)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux; bytes on macOS


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _rss_mb()


def _feeds(path: Path, sess, np) -> list[dict]:
    from layerdiff.backends.ortnames import INPUT_TYPES, cast_feed

    types = {i.name: INPUT_TYPES[i.type] for i in sess.get_inputs() if i.type in INPUT_TYPES}
    samples: dict[int, dict] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            k, name = key.split("/", 1)
            samples.setdefault(int(k), {})[name] = data[key]
    return [cast_feed(samples[k], types) for k in sorted(samples)]  # an FP16 model is fed FP16, as a user would


def _options(ort, level: str):
    from layerdiff.backends.ortnames import LEVELS

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = LEVELS[level]
    return so


def _node_times(trace: list[dict]) -> dict[str, list[float]]:
    """{node name: its kernel time in ms in each run}, from ONNX Runtime's trace (a node run several
    times in one run, inside a Loop or If, counts once per run with its times added)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    per: dict[str, list[float]] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        at = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
        if at is None:
            continue
        times = per.setdefault(node, [0.0] * len(runs))
        times[at] += e["dur"] / 1000.0  # microseconds
    return per


def _die_with_parent(parent: int) -> None:
    """Be killed when the process that started this one dies (Linux's PR_SET_PDEATHSIG); end now if it is
    gone already. Elsewhere a worker outlives a killed parent by its runs at most."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)


def janitor(directory: str) -> int:
    """Wait for standard input to close (the parent ended, or is done with `directory`), then remove it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C ends the parent; this one still has to clean up
    while sys.stdin.buffer.read(4096):
        pass
    shutil.rmtree(directory, ignore_errors=True)
    return 0


def main(job_dir: str, parent: int | None = None) -> int:
    if parent is not None:
        _die_with_parent(parent)
    import numpy as np
    import onnxruntime as ort

    job_path = Path(job_dir)
    job = json.loads((job_path / "job.json").read_text())
    base = _current_rss_mb()
    sess = ort.InferenceSession(job["model"], _options(ort, job["level"]), providers=job["providers"])
    feeds = _feeds(job_path / "feeds.npz", sess, np)
    for i in range(job["warmup"]):
        sess.run(None, feeds[i % len(feeds)])
    latencies = []
    for i in range(job["runs"]):
        feed = feeds[i % len(feeds)]
        start = time.perf_counter_ns()
        sess.run(None, feed)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
    result = {"latencies_ms": latencies, "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
              "provider": sess.get_providers()[0]}
    del sess
    if job["profile_runs"]:
        so = _options(ort, job["level"])
        so.enable_profiling = True
        so.profile_file_prefix = str(job_path / "profile")
        so.optimized_model_filepath = str(job_path / "optimized.onnx")
        sess = ort.InferenceSession(job["model"], so, providers=job["providers"])
        sess.run(None, feeds[0])  # a warm-up run (it allocates): the trace's first model_run, dropped below
        for i in range(job["profile_runs"]):
            sess.run(None, feeds[i % len(feeds)])
        trace = json.loads(Path(sess.end_profiling()).read_text())
        result["node_ms"] = {name: t[1:] for name, t in _node_times(trace).items()}
        result["profile_runs"] = job["profile_runs"]
    (job_path / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--janitor":
        sys.exit(janitor(sys.argv[2]))
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))
