"""The `layerdiff` command, a thin layer over the Python API. Exit 0: done; 1: ran, but a tolerance
failed; 2: bad input (one line on stderr, no traceback unless --debug); 3: an internal error (a bug: one
line, and --debug shows the traceback); 130: interrupted before anything finished; 141: the reader of
the output went away (a closed pipe)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click

from layerdiff._version import __version__
from layerdiff.clitypes import (  # noqa: F401  (parse_size and the codes are part of the command's module)
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TOLERANCE,
    MIN_BUDGET,
    Bound,
    Cosine,
    parse_size,
)
from layerdiff.errors import BadInput, LayerdiffError, ModelError, OutputPathError, first_line
from layerdiff.specs import IMPORTED
from layerdiff.specs import describe as describe_specs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="layerdiff")
def cli() -> None:
    """Find where, and why, a reduced-precision deployment of an ONNX model stops agreeing with FP32."""


@cli.command()
@click.argument("model")
@click.option("--candidate", required=True, metavar="SPEC",
              help=f"what to compare with the FP32 model: {describe_specs()}")
@click.option("--inputs", metavar="PATH", help="an .npz (one sample), a directory of .npz files, or a "
              "Polygraphy --save-inputs JSON file; without it, seeded random inputs are used")
@click.option("--calib", metavar="PATH", help="calibration samples for INT8 (same formats; default: the inputs)")
@click.option("--int8-placement", type=click.Choice(["trt", "ort-all"]), default="trt", show_default=True,
              help="where ort-int8 puts Q/DQ: trt, as TensorRT's INT8 toolchain (ModelOpt) does; ort-all, in front "
              "of every Conv, Gemm, MatMul, pooling and Add")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="calibration method for INT8")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224",
              help="set a dynamic input shape (repeatable)")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random inputs")
@click.option("--top", type=click.IntRange(min=0), default=15, show_default=True, help="rows in the worst-layers table")
@click.option("-o", "--output", metavar="REPORT.json", help="write the JSON report here (atomically)")
@click.option("--save-candidate", metavar="CAND.onnx", help="save the candidate model as deployed (the QDQ or FP16 "
              "model; for TensorRT 11, the ONNX it was built from)")
@click.option("--save-emulation", metavar="EMU.onnx", help="ort-fp16: save the model layerdiff ran on the CPU "
              "(FP16 emulated by rounding casts where the CPU has no FP16 kernel)")
@click.option("--engine-info", metavar="LAYERS.json", help="TensorRT layer information of the engine whose "
              "results are imported (trtexec --exportLayerInfo): compare fused layers as one row")
@click.option("--save-engine-info", metavar="LAYERS.json", help="trt-* candidates: write the engine inspector "
              "JSON that was read")
@click.option("--max-memory", metavar="SIZE", help="capture tensors, and calibrate, in chunks that stay under SIZE "
              "(e.g. 2GiB); ONNX Runtime's own working memory and the weights come on top")
@click.option("--min-cosine", type=Cosine(), help="exit 1 when a float final output's cosine (worst sample) is "
              "below this (a one-element output: when its relative error exceeds sqrt(2(1-COSINE)))")
@click.option("--max-abs", type=Bound(0.0, "0.05"), help="exit 1 when a final output's max abs error (worst sample) "
              "exceeds this")
@click.option("--min-speedup", type=Bound(0.0, "1.2"), help="exit 1 when the candidate's median latency is not this "
              "many times faster than the FP32 model's (needs --bench)")
@click.option("--max-size-ratio", type=Bound(0.0, "0.5"), help="exit 1 when the candidate's size on disk is more "
              "than this fraction of the FP32 model's")
@click.option("--bench", type=int, is_flag=False, flag_value=50, default=None, metavar="[N]",
              help="time the FP32 model and the candidate, each in its own plain session and process: N runs "
              "(default 50) after --warmup; the report gains the cost and per-row kernel times")
@click.option("--warmup", type=int, default=10, show_default=True, help="untimed runs before --bench's")
@click.option("--trt-profile", metavar="PROFILE.json", help="per-layer times of the engine (trtexec "
              "--exportProfile), with --engine-info of the same engine: each row gains its time")
@click.option("--outputs", multiple=True, metavar="SPEC", help="the outputs --min-cosine checks, comma-separated, "
              "each optionally sliced: 'output0[:, 4:]' (numpy basic indexing); default every float output")
@click.option("--divergence-cosine", type=Cosine(), default=0.99, show_default=True,
              help="a row diverges when its local cosine falls below this")
@click.option("--reference-provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA (TF32 off) where it really loads, else CPU")
@click.option("--capture", "capture_mode", type=click.Choice(["kernels", "mark-outputs"]), default="kernels",
              show_default=True, help="kernels: read the tensors the deployed ONNX Runtime session computes, "
              "fusions kept; mark-outputs: every tensor an output (fusions blocked)")
@click.option("--ort-optimization", type=click.Choice(["all", "extended", "basic", "disabled"]), default="all",
              show_default=True, help="ONNX Runtime graph optimization level of the deployed candidate")
@click.option("--cache-dir", metavar="DIR", help="keep calibration ranges here, to reuse them in later runs")
@click.option("--tui", "open_ui", is_flag=True, help="then browse the report in the terminal UI")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar and no summary")
@click.option("--debug", is_flag=True, help="show tracebacks and the libraries' own log messages")
def compare(model, candidate, inputs, calib, int8_placement, calibration, shapes, seed, top, output, save_candidate, save_emulation,
            engine_info, save_engine_info, max_memory, min_cosine, max_abs, min_speedup, max_size_ratio, bench, warmup,
            trt_profile, outputs, divergence_cosine, reference_provider, capture_mode, ort_optimization, cache_dir,
            open_ui, quiet, debug) -> int:
    """Diff a reduced-precision candidate against MODEL in FP32, layer by layer."""
    from layerdiff.console import clean, make_console, print_summary, progress_bar
    from layerdiff.files import check_writable, write_atomic
    from layerdiff.report import write_report
    from layerdiff.session import prepare

    budget = parse_size(max_memory) if max_memory else None
    if open_ui and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadInput("--tui needs a terminal (stdin and stdout are not one); use -o REPORT.json and run layerdiff "
                       "tui REPORT.json in a terminal")
    if outputs and min_cosine is None and max_abs is None:
        raise BadInput("--outputs names the outputs --min-cosine and --max-abs check: give one of them too")
    from layerdiff.bench import check_runs

    check_runs(bench, warmup)
    if max_size_ratio is not None and candidate.startswith(IMPORTED):
        raise BadInput("--max-size-ratio: imported results have no candidate model whose size could be measured")
    if min_speedup is not None and candidate.startswith(IMPORTED):
        raise BadInput("--min-speedup: imported results have no candidate to time here; time the engine where it "
                       "runs (trtexec), or compare with a trt-* candidate on that machine")
    if min_speedup is not None and bench is None:
        raise BadInput("--min-speedup compares measured latencies: add --bench (e.g. --bench 50)")
    if trt_profile:
        if not Path(trt_profile).is_file():
            raise BadInput(f"TensorRT profile not found: {trt_profile} (write one with trtexec --exportProfile=FILE)")
        if not (engine_info or candidate.startswith("trt-")):
            raise BadInput("--trt-profile names engine layers: give the same engine's --engine-info (or a trt-* "
                           "candidate, whose layer information layerdiff reads itself)")
    imported = candidate[len(IMPORTED):] if candidate.startswith(IMPORTED) else candidate
    inputs_of_run = tuple(p for p in (model, inputs, calib, engine_info, imported, trt_profile) if p)
    # options that cannot apply to this candidate: said before any work is done
    if save_emulation and candidate != "ort-fp16":
        raise BadInput("--save-emulation saves the FP16 emulation model of an ort-fp16 candidate")
    if save_engine_info and not candidate.startswith("trt-"):
        raise BadInput("--save-engine-info writes the layer information of an engine layerdiff built: use it "
                       "with --candidate trt-*")
    if candidate.startswith(IMPORTED):
        if save_candidate:
            raise BadInput("--save-candidate: imported results have no ONNX model to save")
        if not Path(imported).is_file():
            raise BadInput(f"Polygraphy results not found: {imported}")
    for flag, path in (("-o", output), ("--save-candidate", save_candidate), ("--save-emulation", save_emulation),
                       ("--save-engine-info", save_engine_info)):
        if path:
            check_writable(path, protect=inputs_of_run)
    if len({Path(p).resolve() for p in (output, save_candidate, save_emulation, save_engine_info) if p}) < \
            sum(1 for p in (output, save_candidate, save_emulation, save_engine_info) if p):
        raise OutputPathError("two outputs name the same file; give each its own path")
    out, err = make_console(), make_console(stderr=True)
    with progress_bar(err, quiet) as progress:
        session = prepare(model, inputs=inputs, calib=calib, shapes=shapes, seed=seed, calibration=calibration,
                          int8_placement=int8_placement,
                          reference_provider=reference_provider, max_memory=budget, cache_dir=cache_dir,
                          optimization=ort_optimization, capture_mode=capture_mode,
                          reference_cache=0)  # one comparison per process: keeping every reference tensor saves nothing

        if progress:
            progress("building the candidate", 0, 1)
        cand = session.candidate(candidate, engine_info=engine_info, progress=progress)
        _save(cand, save_candidate, save_emulation, save_engine_info, write_atomic)
        report = session.compare(cand, divergence_cosine=divergence_cosine, min_cosine=min_cosine,
                                 outputs=outputs if min_cosine is not None else (), progress=progress)
        report, interrupted = _cost_and_gate(session, cand, report, bench, warmup, trt_profile, engine_info,
                                             max_abs, min_speedup, max_size_ratio, outputs, progress)
    if output:
        write_report(report, output)
    if interrupted:
        print("layerdiff: interrupted while timing or checking the gate: the report has every row, no cost and no "
              "gate" +
              (f"; it is in {output}" if output else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    if report.capture.interrupted:
        print(f"layerdiff: interrupted after {report.capture.samples_done} of {report.inputs.samples} sample(s) "
              "in every chunk" + (f"; the partial report is in {output}" if output else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    if open_ui:
        open_tui(report, output, inputs)
    elif not quiet:
        print_summary(report, out, top)
        if output:
            out.print(f"report written to {output}", markup=False, highlight=False)
    else:
        for w in report.warnings:
            err.print(f"warning: {clean(w)}", markup=False, highlight=False)
    failed = report.tolerance is not None and not report.tolerance.passed
    if failed and quiet:
        err.print(f"tolerance failed: final output outside cosine {report.tolerance.min_cosine} for "
                  f"{', '.join(report.tolerance.failed)}", markup=False, highlight=False)
    if not report.gate_passed:
        if quiet:
            for g in report.gate:
                if not g.passed:
                    err.print(f"gate failed: {g.line()}", markup=False, highlight=False)
        failed = True
    return EXIT_TOLERANCE if failed else 0


def _cost_and_gate(session, cand, report, bench, warmup, trt_profile, engine_info, max_abs, min_speedup,
                   max_size_ratio, outputs, progress):
    """The report with its cost (--bench, --trt-profile) and its deployment gate; (report, whether
    timing or the gate was interrupted: then the report is returned with every row, without cost or gate)."""
    from dataclasses import replace

    from layerdiff.bench import measure
    from layerdiff.gate import gate_checks
    from layerdiff.layertimes import profile_times

    try:
        if bench is not None:
            report = measure(session, cand, report, runs=bench, warmup=warmup, progress=progress)
        if trt_profile:
            report = profile_times(report, trt_profile, engine_info or cand.artifacts.get("engine_info.json"))
        checks = gate_checks(session, cand, report, max_abs=max_abs, min_speedup=min_speedup,
                             max_size_ratio=max_size_ratio, outputs=outputs)
    except KeyboardInterrupt:
        return report, True
    return replace(report, gate=checks), False


def _save(cand, save_candidate, save_emulation, save_engine_info, write_atomic) -> None:
    from layerdiff.modelfile import write_model

    if save_candidate:
        if cand.model is None:
            raise BadInput(f"--save-candidate: a {cand.kind} candidate has no ONNX model to save (for TensorRT "
                           "engines use --save-engine-info)")
        try:
            write_model(save_candidate, cand.model)
        except RuntimeError as err:  # a user's own candidate file that no sorting makes valid ONNX
            if cand.kind != "onnx":
                raise
            raise ModelError(f"--save-candidate: {cand.spec} is not valid ONNX that layerdiff can write back "
                             f"({str(err).split(': ', 1)[-1]}); ONNX Runtime runs it, but layerdiff writes only models that "
                             "pass onnx.checker: fix the file, or leave out --save-candidate") from None
    if save_emulation:
        if cand.kind != "ort-fp16":
            raise BadInput("--save-emulation saves the FP16 emulation model of an ort-fp16 candidate")
        write_model(save_emulation, cand.executed)
    if save_engine_info:
        text = cand.artifacts.get("engine_info.json")
        if text is None:
            raise BadInput("--save-engine-info writes the layer information of an engine layerdiff built: use it "
                           "with --candidate trt-*")
        write_atomic(save_engine_info, text.encode())


@cli.command()
@click.argument("engine_info")
@click.option("--model", metavar="MODEL.onnx", help="resolve layer names against this model's nodes")
@click.option("--json", "as_json", is_flag=True, help='print {"layers": [...]} as JSON')
def inspect(engine_info, model, as_json) -> int:
    """Show each TensorRT engine layer: realised precision and the ONNX nodes it came from."""
    from layerdiff.console import make_console, print_engine_info
    from layerdiff.engine_info import parse_engine_info
    from layerdiff.graph import load_model

    info = parse_engine_info(engine_info, load_model(model) if model else None)
    if as_json:
        click.echo(json.dumps({"kind": info.kind, "bindings": list(info.bindings),
                               "layers": [layer.to_dict() for layer in info.layers]}, indent=1))
    else:
        print_engine_info(info, make_console())
    return 0


from layerdiff.cli_bisect import apply, bisect, export  # noqa: E402  (the recipe commands)
from layerdiff.cli_tui import open_tui, plot, tui  # noqa: E402  (the report viewers)

for _command in (bisect, export, apply, tui, plot):
    cli.add_command(_command)


def _quiet_libraries(debug: bool) -> None:
    """Once, before any work: the libraries' own log lines (ONNX Runtime's provider probes, the quantizer's
    advice) are shown only with --debug. The library never changes these; the command may, at start."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(name)s: %(message)s")
    logging.captureWarnings(True)  # the libraries' Python warnings (matplotlib's...) go to that log too
    if debug or "onnxruntime" in sys.modules:
        import onnxruntime
    else:  # ONNX Runtime's import logs in C++ before its severity can be set (telemetry, with HOME read-only)
        with _stderr_muted():
            import onnxruntime
    from polygraphy.logger import G_LOGGER

    onnxruntime.set_default_logger_severity(0 if debug else 3)
    G_LOGGER.module_severity = G_LOGGER.VERBOSE if debug else G_LOGGER.ERROR  # its loaders print to stdout


@contextlib.contextmanager
def _stderr_muted():
    """File descriptor 2 (where C++ libraries write) to /dev/null while the block runs."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:  # Ctrl-C at any moment, while the libraries load too
        print("layerdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): no traceback, and not the tolerance code
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(args: list[str]) -> int:
    debug = "--debug" in args
    if not args:
        click.echo(cli.get_help(click.Context(cli, info_name="layerdiff")))
        return 0
    _quiet_libraries(debug)
    try:
        # click's own main would print an empty line on Ctrl-C; the context is entered here instead
        with cli.make_context("layerdiff", args) as ctx:
            code = cli.invoke(ctx)
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.ClickException as e:
        print(f"layerdiff: error: {_one_line(e.format_message())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LayerdiffError as e:
        if debug:
            traceback.print_exc()
        print(f"layerdiff: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("layerdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except OSError as e:
        from layerdiff.files import disk_error

        bad = disk_error(e)
        if bad is None:
            return _internal(e, debug)
        if debug:
            traceback.print_exc()
        print(f"layerdiff: error: {_one_line(str(bad))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # a bug: one line and its own exit code, never the tolerance code
        return _internal(e, debug)
    return code if isinstance(code, int) else 0


def _one_line(message: str) -> str:
    """A message as one line: what a model or a user named in it (a node name holding a newline) is shown
    with visible escapes, so that no line of it passes for one of layerdiff's own."""
    from layerdiff.console import clean

    return clean(message)


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    first = _one_line(first_line(e, ""))
    print(f"layerdiff: internal error ({type(e).__name__}{': ' + first if first else ''}); this is a bug in "
          "layerdiff: rerun with --debug and report the traceback", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
