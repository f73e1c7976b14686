"""The commands around recipes: `bisect` (the fewest nodes to keep in FP32), `export` (a recipe in a
build tool's form) and `apply` (build with a recipe and check it again). Registered on the group in
layerdiff.cli."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from layerdiff.clitypes import EXIT_INTERRUPTED, EXIT_TOLERANCE, Cosine
from layerdiff.errors import BadInput, OutputPathError


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


@click.command()
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
@click.option("--inputs", metavar="PATH", help="samples (.npz, a directory of them, or Polygraphy JSON): searched on, "
              "a quarter to validate each answer (a sample it fails joins the search), and without --holdout the "
              "last quarter held out to check the final answer")
@click.option("--calib", metavar="PATH", help="calibration samples for INT8 (default: the search samples)")
@click.option("--int8-placement", type=click.Choice(["trt", "ort-all"]), default="trt", show_default=True,
              help="where ort-int8 puts Q/DQ: trt, as TensorRT's INT8 toolchain (ModelOpt) does; ort-all, in front "
              "of every Conv, Gemm, MatMul, pooling and Add")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--holdout", metavar="PATH", help="samples to check the answer on (default: a split of --inputs)")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224", help="a dynamic input's shape")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random inputs")
@click.option("--strategy", type=click.Choice(["auto", "prefix", "suffix", "rank"]), default="auto",
              show_default=True, help="auto: contiguous searches, then a set search for the fewest pins")
@click.option("--objective", type=click.Choice(["pins", "time"]), default="pins", show_default=True,
              help="time: among equally small pin sets, the one ONNX Runtime's profiler estimates cheapest on this "
              "machine (ort-* candidates; up to 24 more evaluations)")
@click.option("--bench", type=int, is_flag=False, flag_value=50, default=None, metavar="[N]",
              help="time the answer against the FP32 and the all-reduced plan (N runs, default 50, after --warmup)")
@click.option("--warmup", type=int, default=10, show_default=True, help="untimed runs before --bench's")
@click.option("--max-pins", type=click.IntRange(min=0), help="fail (exit 1) when the answer needs more pins")
@click.option("--max-evals", type=click.IntRange(min=2), help="most plans to evaluate (auto: 2*log2(N)+60)")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="evaluate independent plans "
              "side by side, each on a share of the cores")
@click.option("--resume", metavar="STATE.json", help="keep every evaluation in this file, and resume from it")
@click.option("-o", "--output", metavar="RECIPE.json", help="write the recipe here (atomically)")
@click.option("--ort-optimization", type=click.Choice(["all", "extended", "basic", "disabled"]), default="all",
              show_default=True, help="ONNX Runtime graph optimization level of the candidate")
@click.option("-q", "--quiet", is_flag=True, help="no progress and no summary: the result line only")
@click.option("--debug", is_flag=True, help="show tracebacks and the libraries' own log messages")
def bisect(model, candidate, min_cosine, metric, at_least, at_most, metric_fn, outputs, inputs, calib, int8_placement,
           calibration,
           holdout, shapes, seed, strategy, objective, bench, warmup, max_pins, max_evals, jobs, resume, output,
           ort_optimization, quiet, debug) -> int:
    """Find the fewest ONNX nodes to keep in FP32 for the candidate to meet a tolerance."""
    from layerdiff.bench import check_runs
    from layerdiff.bisect import bisect as run_bisect
    from layerdiff.bisect import prepare_roles
    from layerdiff.console import make_console, progress_bar
    from layerdiff.files import check_writable
    from layerdiff.recipe import recipe_dict, write_recipe

    check_runs(bench, warmup)
    inputs_of_run = tuple(p for p in (model, inputs, calib, holdout, metric_fn and metric_fn.rpartition(":")[0]) if p)
    for path in (output, resume):
        if path:
            check_writable(path, protect=inputs_of_run)
    if output and resume and Path(output).resolve() == Path(resume).resolve():
        raise OutputPathError("-o and --resume name the same file; give each its own path")
    out, err = make_console(), make_console(stderr=True)
    say = (lambda text: None) if quiet else (lambda text: err.print(text, markup=False, highlight=False))
    with progress_bar(err, quiet) as progress:
        session, validation, held = prepare_roles(model, inputs=inputs, calib=calib, holdout=holdout, shapes=shapes,
                                                  seed=seed, calibration=calibration, optimization=ort_optimization,
                                                  int8_placement=int8_placement)
        target = _tolerance(metric, min_cosine, at_least, at_most, metric_fn, outputs, session.model.outputs)
        if session.samples.random:
            say("no --inputs given: searching on seeded random inputs; pins found on random data may not be the "
                "ones real data needs")

        def started(pinnable: int, forced: int, bound: int) -> None:
            say(f"samples: {len(session.samples)} searched on"
                + (f", {len(validation)} to validate each answer (a sample it fails joins the search)"
                   if validation else "")
                + (f", {len(held)} held out to check the final answer (never searched on)" if held else ""))
            extra = f" ({forced} more pinned in every plan: values beyond FP16's range)" if forced else ""
            say(f"bisect: {target.describe()}, worst of {len(session.samples)} sample(s); {pinnable} pinnable "
                f"node(s){extra}; at most {bound} evaluations")

        def each(outcome, n: int, bound: int, cached: bool) -> None:
            if not cached:
                say(f"  [{n:>3}/{bound}] {len(outcome.pins):>4} pins  {target.metric[:12]} {outcome.value:<12.7g} "
                    f"{'pass' if outcome.passed else 'fail'}  {outcome.seconds:5.2f} s")

        try:
            result = run_bisect(session, candidate, target, strategy=strategy, holdout=held, validation=validation,
                                max_pins=max_pins,
                                max_evals=max_evals, jobs=jobs, state=resume, on_start=started, on_outcome=each,
                                progress=progress, objective=objective, bench=bench, warmup=warmup)
        except KeyboardInterrupt:  # before any evaluation finished, or a second Ctrl-C after the search
            print("layerdiff: interrupted; no recipe written" + (f"; the evaluations that finished are in {resume}"
                                                                  if resume else ""), file=sys.stderr)
            return EXIT_INTERRUPTED
    if result.status == "unreachable":
        print(f"layerdiff: even with all {result.pinnable} pinnable nodes in FP32 the candidate fails: "
              f"{target.metric} {result.outcome.value:.7g} against {target.threshold:g}; the error is not in the "
              "nodes a pin changes (check the inputs, or the tolerance)", file=sys.stderr)
        return EXIT_TOLERANCE
    if output:
        write_recipe(recipe_dict(result, session, model), output)
    from layerdiff.bisect_output import print_bisect

    print_bisect(result, target, out, err, quiet, output)
    if result.status == "interrupted":
        if resume:
            print(f"layerdiff: interrupted; resume with --resume {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.interrupted_at:
        print(f"layerdiff: interrupted during the {result.interrupted_at}: the search's answer is "
              + (f"in {output}, marked unfinished" if output else "above") , file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == "max-pins" or not result.outcome.passed or (result.holdout and not result.holdout.holds):
        return EXIT_TOLERANCE
    return 0


@click.command()
@click.argument("recipe", metavar="RECIPE|REPORT")
@click.option("--format", "fmt", type=click.Choice(["trtexec", "polygraphy", "modelopt", "ort", "ort-overrides", "onnx",
                                                    "model-explorer"]),
              required=True, help="onnx: the model with the recipe in its graph (TensorRT 11 takes only this)")
@click.option("--model", metavar="MODEL.onnx", help="--format onnx: the FP32 model (default: the recipe's)")
@click.option("--calib", metavar="PATH", help="--format onnx, INT8: calibrate again on these samples (default: the "
              "recipe's own ranges)")
@click.option("-o", "--output", metavar="FILE", help="write here (atomically); text formats default to stdout")
@click.option("--metric", type=click.Choice(["local", "accumulated"]), default="local", show_default=True,
              help="--format model-explorer: the error each node is coloured by")
@click.option("--debug", is_flag=True, help="show tracebacks")
def export(recipe, fmt, model, calib, output, metric, debug) -> int:
    """Write a recipe in the form a build tool takes, or (--format model-explorer) a report's error per
    node as Model Explorer node data."""
    from layerdiff.console import clean
    from layerdiff.export import TEXT
    from layerdiff.files import check_writable, write_atomic
    from layerdiff.modelfile import write_model
    from layerdiff.recipe import load_recipe

    if fmt == "model-explorer":
        return _export_node_data(recipe, model, output, metric)
    r = load_recipe(recipe)
    if output:
        check_writable(output, protect=(recipe, model or r.model_path, calib))

    def warn() -> None:  # every doubt, a held-out failure first; once the export is sure to be written
        for doubt in r.doubts():
            print(f"layerdiff: warning: {clean(doubt)}", file=sys.stderr)

    if fmt != "onnx":
        text = TEXT[fmt](r)
        warn()
        if output:
            write_atomic(output, text.encode())
        else:
            # the bytes -o would write: click.echo drops escape sequences when the output is not a terminal,
            # and a node name may hold them
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode())
            sys.stdout.buffer.flush()
        return 0
    if not output:
        raise BadInput("--format onnx writes a model: give -o FILE.onnx")
    cand, _ = _realise_recipe(r, recipe, model, calib, None, None)
    warn()
    write_model(output, cand.model)
    return 0


def _export_node_data(report_path, model, output, metric) -> int:
    import onnx

    from layerdiff.files import check_writable, write_atomic
    from layerdiff.graph import _sha256 as file_sha256
    from layerdiff.nodedata import node_data_json
    from layerdiff.report import load_report

    if not output:
        raise BadInput("--format model-explorer writes node data: give -o NODEDATA.json")
    report = load_report(report_path)
    model = model or report.model.path
    check_writable(output, protect=(report_path, model))
    if not Path(model).is_file():
        raise BadInput(f"the report's model {model} is not here: give its path with --model")
    if file_sha256(Path(model)) != report.model.sha256:
        raise BadInput(f"{model} is not the model the report was made on (sha256 differs): give that model with "
                       "--model")
    proto = onnx.load(str(model), load_external_data=False)
    write_atomic(output, node_data_json(report, proto, metric).encode())
    print(f"node data written to {output}: open {model} in Model Explorer (with model-explorer-onnx) and load it")
    return 0


def _realise_recipe(r, recipe_path, model, calib, inputs, shapes):
    """The candidate a recipe describes, on MODEL (default: the recipe's): INT8 with the recipe's own
    calibration ranges unless --calib asks to calibrate again."""
    from layerdiff.backends.calibrate import activations, ranges_from_json
    from layerdiff.recipe import load_recipe
    from layerdiff.session import prepare

    model = model or r.model_path
    if not Path(model).is_file():
        raise BadInput(f"the recipe's model {model} is not here: give its path (--model for export)")
    calibration = r.candidate.get("calibration") or {}
    if r.precision == "int8" and not calib and "ranges" not in calibration:
        # no ranges (a recipe pinned by hand in the TUI): calibrate on the recipe's own calibration source
        # where it can be found, and say on what
        from layerdiff.recipe import beside

        source = calibration.get("source") if isinstance(calibration.get("source"), str) else ""
        found = beside(source, Path(recipe_path)) if source and not calibration.get("random") else ""
        calib = found if found and Path(found).exists() else None
        print(f"layerdiff: the recipe holds no calibration ranges: calibrating on "
              f"{calib or inputs or 'seeded random inputs (give --calib for real samples)'}", file=sys.stderr)
    session = prepare(model, inputs=inputs, calib=calib, shapes=shapes or (),
                      calibration=calibration.get("method", "minmax"),
                      optimization=r.candidate.get("ort_optimization", "all"),
                      # (a recipe from before placements were named used ort-all's)
                      int8_placement=r.candidate.get("int8_placement", "ort-all"))
    load_recipe(recipe_path, session.model.sha256)  # refuses a recipe made for another model
    if r.precision == "int8" and not calib and r.candidate["spec"] == "ort-int8" and "ranges" in calibration:
        try:
            session.use_ranges(ranges_from_json(calibration["ranges"], activations(session.model)))
        except ValueError as err:  # load_recipe checked the rest: ranges that leave out a tensor of this model
            raise BadInput(f"{recipe_path} holds no usable calibration ranges ({err}); give --calib to calibrate "
                           "again") from None
    return session.candidate(r.candidate["spec"], r.plan), session


@click.command()
@click.argument("recipe")
@click.argument("model")
@click.option("--inputs", metavar="PATH", help="samples to measure on (default: seeded random inputs)")
@click.option("--calib", metavar="PATH", help="INT8: calibrate again on these samples (default: the recipe's own "
              "ranges)")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224", help="a dynamic input's shape")
@click.option("-o", "--output", metavar="CAND.onnx", help="save the candidate built with the recipe (atomically)")
@click.option("--bench", type=int, is_flag=False, flag_value=50, default=None, metavar="[N]",
              help="time the recipe against the FP32 and the all-reduced plan (N runs, default 50, after 10 warm-up)")
@click.option("-q", "--quiet", is_flag=True, help="the result line only")
@click.option("--debug", is_flag=True, help="show tracebacks")
def apply(recipe, model, inputs, calib, shapes, output, bench, quiet, debug) -> int:
    """Build MODEL's candidate with RECIPE and check its tolerance again (exit 1 if it fails)."""
    from layerdiff.console import clean, make_console
    from layerdiff.files import check_writable
    from layerdiff.modelfile import write_model
    from layerdiff.recipe import load_recipe
    from layerdiff.target import Target

    if output:
        check_writable(output, protect=(recipe, model, inputs, calib))
    from layerdiff.bench import check_runs

    check_runs(bench)
    r = load_recipe(recipe)
    cand, session = _realise_recipe(r, recipe, model, calib, inputs, shapes)
    cost_line = None
    if bench is not None:
        from layerdiff.bench import DEFAULT_WARMUP, time_recipe
        from layerdiff.plan import PrecisionPlan

        reduced = session.candidate(r.candidate["spec"], PrecisionPlan.uniform(r.precision))
        cost_line = "\n".join(time_recipe(session, cand, reduced, bench, DEFAULT_WARMUP).lines())
    # a recipe pinned by hand in the TUI may carry no tolerance: then the cosine is measured, not checked
    target = Target.from_dict(r.tolerance, session.model.outputs) if r.tolerance else \
        Target.parse("cosine", -1.0, (), session.model.outputs)
    target.check(session.reference_outputs()[0])
    ref, got = session.outputs_on(None), session.outputs_on(cand)
    per = [target.score(a, b) for a, b in zip(ref, got, strict=True)]
    value = target.worst(per)
    passed = target.passes(value)
    worst = f", worst {session.samples.name(per.index(value))}" if len(per) > 1 and value in per else ""
    if output:
        write_model(output, cand.model)
    out = make_console()
    if not quiet:
        if session.samples.random:
            out.print("no --inputs given: measured on seeded random inputs", markup=False, highlight=False)
        report = session.compare(cand)  # the realised precision of the pinned nodes, as compare reads it
        realised = {n: row.precision for row in report.layers if row.kind == "layer" for n in row.onnx_nodes}
        for node in r.nodes:
            out.print(f"  {clean(node)}: requested fp32, ran {realised.get(node, 'unknown')}", markup=False,
                      highlight=False)
    if cost_line:
        print(cost_line)
    claimed = (r.data.get("achieved") or {}).get("value") if isinstance(r.data.get("achieved"), dict) else None
    if not r.tolerance:
        print(f"measured: cosine {value:.7g} (worst of {len(per)} sample(s){worst}); the recipe names no tolerance "
              "(pinned by hand)")
        return 0
    achieved = r.data.get("achieved") if isinstance(r.data.get("achieved"), dict) else {}
    held = r.data.get("holdout") if isinstance(r.data.get("holdout"), dict) else None
    claim = (f"{claimed:.7g} on its {achieved.get('samples', '?')} search sample(s)" if isinstance(claimed, float)
             else "nothing")
    if held and isinstance(held.get("achieved"), float):
        verdict = "held" if held.get("holds") else "FAILED"
        claim += f", {held['achieved']:.7g} on {held.get('samples', '?')} held out ({verdict})"
    print(f"{'holds' if passed else 'FAILS'}: {target.describe()}: {value:.7g} (worst of {len(per)} sample(s){worst}); "
          f"the recipe claimed {claim}")
    return 0 if passed else EXIT_TOLERANCE
