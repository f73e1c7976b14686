"""The `layerdiff` command, a thin layer over the Python API. Exit 0: done; 1: ran, but a tolerance
failed; 2: bad input (one line on stderr, no traceback unless --debug); 3: an internal error (a bug: one
line, and --debug shows the traceback); 130: interrupted before anything finished; 141: the reader of
the output went away (a closed pipe)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import traceback
from pathlib import Path

import click

from layerdiff._version import __version__
from layerdiff.errors import BadInput, LayerdiffError, OutputPathError
from layerdiff.specs import IMPORTED
from layerdiff.specs import describe as describe_specs

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
MIN_BUDGET = 2**10
EXIT_TOLERANCE, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 3, 130, 141


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise click.BadParameter(f"cannot parse size '{text}': expected a number with a unit, e.g. 2GiB or 512MB",
                                 param_hint="--max-memory")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < MIN_BUDGET:
        raise click.BadParameter(f"{text} is too small a budget: give at least 1KiB (e.g. 256MiB)",
                                 param_hint="--max-memory")
    return size


class Cosine(click.ParamType):
    """A cosine threshold: a finite number in [-1, 1]."""

    name = "COSINE"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number; a cosine is between -1 and 1, e.g. 0.999", param, ctx)
        if not math.isfinite(x) or not -1.0 <= x <= 1.0:
            self.fail(f"{value} is not a cosine: give a number between -1 and 1, e.g. 0.999", param, ctx)
        return x


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
@click.option("-q", "--quiet", is_flag=True, help="no progress bar and no summary")
@click.option("--debug", is_flag=True, help="show tracebacks and the libraries' own log messages")
def compare(model, candidate, inputs, calib, calibration, shapes, seed, top, output, save_candidate, save_emulation,
            engine_info, save_engine_info, max_memory, min_cosine, outputs, divergence_cosine, reference_provider,
            capture_mode, ort_optimization, cache_dir, quiet, debug) -> int:
    """Diff a reduced-precision candidate against MODEL in FP32, layer by layer."""
    from layerdiff.console import make_console, print_summary, progress_bar
    from layerdiff.files import check_writable, write_atomic
    from layerdiff.report import write_report
    from layerdiff.session import prepare

    budget = parse_size(max_memory) if max_memory else None
    if outputs and min_cosine is None:
        raise BadInput("--outputs names the outputs --min-cosine checks: give --min-cosine too")
    imported = candidate[len(IMPORTED):] if candidate.startswith(IMPORTED) else candidate
    inputs_of_run = tuple(p for p in (model, inputs, calib, engine_info, imported) if p)
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
                          reference_provider=reference_provider, max_memory=budget, cache_dir=cache_dir,
                          optimization=ort_optimization, capture_mode=capture_mode,
                          reference_cache=0)  # one comparison per process: keeping every reference tensor saves nothing

        if progress:
            progress("building the candidate", 0, 1)
        cand = session.candidate(candidate, engine_info=engine_info, progress=progress)
        _save(cand, save_candidate, save_emulation, save_engine_info, write_atomic)
        report = session.compare(cand, divergence_cosine=divergence_cosine, min_cosine=min_cosine, outputs=outputs,
                                 progress=progress)
    if output:
        write_report(report, output)
    if report.capture.interrupted:
        print(f"layerdiff: interrupted after {report.capture.samples_done} of {report.inputs.samples} sample(s) "
              "in every chunk" + (f"; the partial report is in {output}" if output else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    if not quiet:
        print_summary(report, out, top)
        if output:
            out.print(f"report written to {output}", markup=False, highlight=False)
    else:
        for w in report.warnings:
            err.print(f"warning: {w}", markup=False, highlight=False)
    if report.tolerance is not None and not report.tolerance.passed:
        if quiet:
            err.print(f"tolerance failed: final output outside cosine {report.tolerance.min_cosine} for "
                      f"{', '.join(report.tolerance.failed)}", markup=False, highlight=False)
        return EXIT_TOLERANCE
    return 0


def _save(cand, save_candidate, save_emulation, save_engine_info, write_atomic) -> None:
    from layerdiff.graph import serialize

    if save_candidate:
        if cand.model is None:
            raise BadInput(f"--save-candidate: a {cand.kind} candidate has no ONNX model to save (for TensorRT "
                           "engines use --save-engine-info)")
        write_atomic(save_candidate, serialize(cand.model))
    if save_emulation:
        if cand.kind != "ort-fp16":
            raise BadInput("--save-emulation saves the FP16 emulation model of an ort-fp16 candidate")
        write_atomic(save_emulation, serialize(cand.executed))
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


def _tolerance(metric, min_cosine, at_least, at_most, metric_fn, outputs, model_outputs):
    """The tolerance of bisect's options (--metric with --min/--max, --min-cosine, or --metric-fn)."""
    from layerdiff.target import Target

    given = [f for f, v in (("--min-cosine", min_cosine), ("--min", at_least), ("--max", at_most)) if v is not None]
    if len(given) != 1:
        raise BadInput("give one threshold: --min-cosine X, or --metric M with --min X (cosine, sqnr) or --max X "
                       "(max-abs)" + (", or --metric-fn F with --min or --max" if not metric_fn else ""))
    if metric_fn:
        if min_cosine is not None:
            raise BadInput("--metric-fn takes --min X (higher is better) or --max X (lower is better)")
        if outputs:
            raise BadInput("--metric-fn is called with every output: --outputs applies to the built-in metrics")
        return Target.parse("", at_least if at_least is not None else at_most, (), model_outputs, fn=metric_fn,
                            higher_is_better=at_least is not None)
    if min_cosine is not None:
        if metric not in (None, "cosine"):
            raise BadInput(f"--min-cosine is a cosine threshold; with --metric {metric} use "
                           f"{'--max' if metric == 'max-abs' else '--min'}")
        return Target.parse("cosine", min_cosine, outputs, model_outputs)
    metric = metric or "cosine"
    if metric == "max-abs" and at_least is not None:
        raise BadInput("max-abs is an error: it passes at or under a threshold, given with --max")
    if metric in ("cosine", "sqnr") and at_most is not None:
        raise BadInput(f"{metric} passes at or above a threshold, given with --min")
    return Target.parse(metric, at_least if at_least is not None else at_most, outputs, model_outputs)


@cli.command()
@click.argument("model")
@click.option("--candidate", required=True, metavar="SPEC", help="what to make: ort-int8, ort-fp16 (here), trt-fp16, "
              "trt-int8, trt-bf16 (TensorRT), fake (injected errors)")
@click.option("--min-cosine", type=Cosine(), help="the tolerance: worst sample's cosine of the outputs at least this")
@click.option("--metric", type=click.Choice(["cosine", "max-abs", "sqnr"]), help="the tolerance's metric (with --min "
              "or --max); default cosine")
@click.option("--min", "at_least", type=float, help="the metric must be at least this (cosine, sqnr, --metric-fn)")
@click.option("--max", "at_most", type=float, help="the metric must be at most this (max-abs, --metric-fn)")
@click.option("--metric-fn", metavar="FILE.py:FUNCTION", help="your own metric: called with (reference, candidate) "
              "dicts of one sample's outputs, returns a number; with --min or --max")
@click.option("--outputs", multiple=True, metavar="SPEC", help="outputs the tolerance is on, comma-separated, each "
              "optionally sliced: 'output0[:, 4:]' (numpy basic indexing); default every float output")
@click.option("--inputs", metavar="PATH", help="samples (.npz, a directory of them, or Polygraphy JSON); without "
              "--holdout the last third are held out to check the answer")
@click.option("--calib", metavar="PATH", help="calibration samples for INT8 (default: the search samples)")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--holdout", metavar="PATH", help="samples to check the answer on (default: a split of --inputs)")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224", help="a dynamic input's shape")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random inputs")
@click.option("--strategy", type=click.Choice(["auto", "prefix", "suffix", "rank"]), default="auto",
              show_default=True, help="auto: contiguous searches, then a set search for the fewest pins")
@click.option("--max-pins", type=click.IntRange(min=0), help="fail (exit 1) when the answer needs more pins")
@click.option("--max-evals", type=click.IntRange(min=2), help="most plans to evaluate (auto: 2*log2(N)+60)")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="evaluate independent plans "
              "in this many threads")
@click.option("--resume", metavar="STATE.json", help="keep every evaluation in this file, and resume from it")
@click.option("-o", "--output", metavar="RECIPE.json", help="write the recipe here (atomically)")
@click.option("--ort-optimization", type=click.Choice(["all", "extended", "basic", "disabled"]), default="all",
              show_default=True, help="ONNX Runtime graph optimization level of the candidate")
@click.option("-q", "--quiet", is_flag=True, help="no progress and no summary: the result line only")
@click.option("--debug", is_flag=True, help="show tracebacks and the libraries' own log messages")
def bisect(model, candidate, min_cosine, metric, at_least, at_most, metric_fn, outputs, inputs, calib, calibration,
           holdout, shapes, seed, strategy, max_pins, max_evals, jobs, resume, output, ort_optimization, quiet,
           debug) -> int:
    """Find the fewest ONNX nodes to keep in FP32 for the candidate to meet a tolerance."""
    from layerdiff.bisect import bisect as run_bisect
    from layerdiff.bisect import prepare_split
    from layerdiff.console import make_console, progress_bar
    from layerdiff.files import check_writable
    from layerdiff.recipe import recipe_dict, write_recipe

    inputs_of_run = tuple(p for p in (model, inputs, calib, holdout, metric_fn and metric_fn.rpartition(":")[0]) if p)
    for path in (output, resume):
        if path:
            check_writable(path, protect=inputs_of_run)
    if output and resume and Path(output).resolve() == Path(resume).resolve():
        raise OutputPathError("-o and --resume name the same file; give each its own path")
    out, err = make_console(), make_console(stderr=True)
    say = (lambda text: None) if quiet else (lambda text: err.print(text, markup=False, highlight=False))
    with progress_bar(err, quiet) as progress:
        session, held = prepare_split(model, inputs=inputs, calib=calib, holdout=holdout, shapes=shapes, seed=seed,
                                      calibration=calibration, optimization=ort_optimization)
        target = _tolerance(metric, min_cosine, at_least, at_most, metric_fn, outputs, session.model.outputs)
        if session.samples.random:
            say("no --inputs given: searching on seeded random inputs; pins found on random data may not be the "
                "ones real data needs")

        def started(pinnable: int, forced: int, bound: int) -> None:
            extra = f" ({forced} more pinned in every plan: values beyond FP16's range)" if forced else ""
            say(f"bisect: {target.describe()}, worst of {len(session.samples)} sample(s); {pinnable} pinnable "
                f"node(s){extra}; at most {bound} evaluations")

        def each(outcome, n: int, bound: int, cached: bool) -> None:
            if not cached:
                say(f"  [{n:>3}/{bound}] {len(outcome.pins):>4} pins  {target.metric[:12]} {outcome.value:<12.7g} "
                    f"{'pass' if outcome.passed else 'fail'}  {outcome.seconds:5.2f} s")

        try:
            result = run_bisect(session, candidate, target, strategy=strategy, holdout=held, max_pins=max_pins,
                                max_evals=max_evals, jobs=jobs, state=resume, on_start=started, on_outcome=each,
                                progress=progress)
        except KeyboardInterrupt:
            print("layerdiff: interrupted before any evaluation finished", file=sys.stderr)
            return EXIT_INTERRUPTED
    if result.status == "unreachable":
        print(f"layerdiff: even with all {result.pinnable} pinnable nodes in FP32 the candidate fails: "
              f"{target.metric} {result.outcome.value:.7g} against {target.threshold:g}; the error is not in the "
              "nodes a pin changes (check the inputs, or the tolerance)", file=sys.stderr)
        return EXIT_TOLERANCE
    if output:
        write_recipe(recipe_dict(result, session, model), output)
    _print_bisect(result, target, out, err, quiet, output)
    if result.status == "interrupted":
        if resume:
            print(f"layerdiff: interrupted; resume with --resume {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == "max-pins" or not result.outcome.passed or (result.holdout and not result.holdout.holds):
        return EXIT_TOLERANCE
    return 0


def _print_bisect(result, target, out, err, quiet, output) -> None:
    from layerdiff.console import clean

    o = result.outcome
    pins = ", ".join(clean(p.node) for p in result.pins) or "none"
    line = {"met": f"already met with nothing pinned: {target.metric} {o.value:.7g}",
            "found": f"{len(result.pins)} pin(s) meet it: {target.metric} {o.value:.7g}",
            "budget": f"out of evaluations; the best plan found: {len(result.pins)} pin(s), {target.metric} "
                      f"{o.value:.7g}",
            "max-pins": f"no plan within --max-pins passed; the best: {len(result.pins)} pin(s), {target.metric} "
                        f"{o.value:.7g}",
            "interrupted": f"interrupted; the best plan so far: {len(result.pins)} pin(s), {target.metric} "
                           f"{o.value:.7g} ({'passes' if o.passed else 'fails'})"}[result.status]
    held = ""
    if result.holdout is not None:
        h = result.holdout
        held = (f"held out ({h.samples} sample(s)): {target.metric} {h.value:.7g}, "
                f"{'holds' if h.holds else 'FAILS'}")
    if quiet:
        print(f"{result.status}: {pins}; {target.metric} {o.value:.7g}" + (f"; {held}" if held else ""))
        for w in result.warnings:
            err.print(f"warning: {w}", markup=False, highlight=False)
        return
    p = lambda text="": out.print(text, markup=False, highlight=False)  # noqa: E731
    p(line)
    all_pinned = f", all pinned {result.all_pinned.value:.7g}" if result.all_pinned is not None else ""
    p(f"  baseline (nothing pinned) {result.baseline.value:.7g}{all_pinned}; {result.evaluations} evaluations "
      f"({result.strategy})")
    for pin in result.pins:
        ev = pin.evidence
        local = ev.get("local_cosine")
        facts = f"local cos {local:.6f}" if isinstance(local, float) else ""
        covers = f"{len(pin.covers)} conversion(s)" if pin.covers else ""
        p(f"  {clean(pin.node)}  {pin.op}  " + "  ".join(x for x in (facts, covers) if x))
    if result.forced:
        p(f"  and {len(result.forced)} node(s) pinned in every plan (values beyond FP16's range)")
    if held:
        p(f"  {held}")
    for w in result.warnings:
        p(f"warning: {w}")
    if output:
        p(f"recipe written to {output}")
        p("  layerdiff export RECIPE --format trtexec|polygraphy|modelopt|ort|onnx")


@cli.command()
@click.argument("recipe")
@click.option("--format", "fmt", type=click.Choice(["trtexec", "polygraphy", "modelopt", "ort", "onnx"]),
              required=True, help="onnx: the model with the recipe in its graph (TensorRT 11 takes only this)")
@click.option("--model", metavar="MODEL.onnx", help="--format onnx: the FP32 model (default: the recipe's)")
@click.option("--calib", metavar="PATH", help="--format onnx, INT8: calibrate again on these samples (default: the "
              "recipe's own ranges)")
@click.option("-o", "--output", metavar="FILE", help="write here (atomically); text formats default to stdout")
@click.option("--debug", is_flag=True, help="show tracebacks")
def export(recipe, fmt, model, calib, output, debug) -> int:
    """Write a recipe in the form a build tool takes."""
    from layerdiff.export import TEXT
    from layerdiff.files import check_writable, write_atomic
    from layerdiff.graph import serialize
    from layerdiff.recipe import load_recipe

    r = load_recipe(recipe)
    if output:
        check_writable(output, protect=(recipe, model or r.model_path, calib))
    if fmt != "onnx":
        text = TEXT[fmt](r)
        if output:
            write_atomic(output, text.encode())
        else:
            click.echo(text, nl=False)
        return 0
    if not output:
        raise BadInput("--format onnx writes a model: give -o FILE.onnx")
    cand, _ = _realise_recipe(r, recipe, model, calib, None, None)
    write_atomic(output, serialize(cand.model))
    return 0


def _realise_recipe(r, recipe_path, model, calib, inputs, shapes):
    """The candidate a recipe describes, on MODEL (default: the recipe's): INT8 with the recipe's own
    calibration ranges unless --calib asks to calibrate again."""
    from layerdiff.backends.calibrate import ranges_from_json
    from layerdiff.recipe import load_recipe
    from layerdiff.session import prepare

    model = model or r.model_path
    if not Path(model).is_file():
        raise BadInput(f"the recipe's model {model} is not here: give its path (--model for export)")
    calibration = r.candidate.get("calibration") or {}
    session = prepare(model, inputs=inputs, calib=calib, shapes=shapes or (),
                      calibration=calibration.get("method", "minmax"),
                      optimization=r.candidate.get("ort_optimization", "all"))
    load_recipe(recipe_path, session.model.sha256)  # refuses a recipe made for another model
    if r.precision == "int8" and not calib and r.candidate["spec"] == "ort-int8":
        try:
            session.use_ranges(ranges_from_json(calibration["ranges"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"{recipe_path} holds no usable calibration ranges ({type(err).__name__}); give --calib "
                           "to calibrate again") from None
    return session.candidate(r.candidate["spec"], r.plan), session


@cli.command()
@click.argument("recipe")
@click.argument("model")
@click.option("--inputs", metavar="PATH", help="samples to measure on (default: seeded random inputs)")
@click.option("--calib", metavar="PATH", help="INT8: calibrate again on these samples (default: the recipe's own "
              "ranges)")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224", help="a dynamic input's shape")
@click.option("-o", "--output", metavar="CAND.onnx", help="save the candidate built with the recipe (atomically)")
@click.option("-q", "--quiet", is_flag=True, help="the result line only")
@click.option("--debug", is_flag=True, help="show tracebacks")
def apply(recipe, model, inputs, calib, shapes, output, quiet, debug) -> int:
    """Build MODEL's candidate with RECIPE and check its tolerance again (exit 1 if it fails)."""
    from layerdiff.console import clean, make_console
    from layerdiff.files import check_writable, write_atomic
    from layerdiff.graph import serialize
    from layerdiff.recipe import load_recipe
    from layerdiff.target import Target

    if output:
        check_writable(output, protect=(recipe, model, inputs, calib))
    r = load_recipe(recipe)
    cand, session = _realise_recipe(r, recipe, model, calib, inputs, shapes)
    target = Target.from_dict(r.tolerance, session.model.outputs)
    target.check(session.reference_outputs()[0])
    ref, got = session.outputs_on(None), session.outputs_on(cand)
    per = [target.score(a, b) for a, b in zip(ref, got, strict=True)]
    value = target.worst(per)
    passed = target.passes(value)
    if output:
        write_atomic(output, serialize(cand.model))
    out = make_console()
    if not quiet:
        if session.samples.random:
            out.print("no --inputs given: measured on seeded random inputs", markup=False, highlight=False)
        report = session.compare(cand)  # the realised precision of the pinned nodes, as compare reads it
        realised = {n: row.precision for row in report.layers if row.kind == "layer" for n in row.onnx_nodes}
        for node in r.nodes:
            out.print(f"  {clean(node)}: requested fp32, ran {realised.get(node, 'unknown')}", markup=False,
                      highlight=False)
    print(f"{'holds' if passed else 'FAILS'}: {target.describe()}: {value:.7g} (worst of {len(per)} sample(s)); "
          f"the recipe claimed {r.data.get('achieved', {}).get('value')}")
    return 0 if passed else EXIT_TOLERANCE


def _quiet_libraries(debug: bool) -> None:
    """Once, before any work: the libraries' own log lines (ONNX Runtime's provider probes, the quantizer's
    advice) are shown only with --debug. The library never changes these; the command may, at start."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(name)s: %(message)s")
    import onnxruntime
    from polygraphy.logger import G_LOGGER

    onnxruntime.set_default_logger_severity(0 if debug else 3)
    G_LOGGER.module_severity = G_LOGGER.VERBOSE if debug else G_LOGGER.ERROR  # its loaders print to stdout


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
        print(f"layerdiff: error: {e.format_message()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LayerdiffError as e:
        if debug:
            traceback.print_exc()
        print(f"layerdiff: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("layerdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as e:  # a bug: one line and its own exit code, never the tolerance code
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"layerdiff: internal error ({type(e).__name__}{': ' + first if first else ''}); this is a bug in "
              "layerdiff: rerun with --debug and report the traceback", file=sys.stderr)
        return EXIT_INTERNAL
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
