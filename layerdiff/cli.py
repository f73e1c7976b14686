"""The `layerdiff` command. Exit 0: done; 1: ran, but a tolerance failed; 2: bad input (one line on
stderr, no traceback unless --debug); 130: interrupted before anything finished."""

from __future__ import annotations

import json
import re
import sys
import traceback

import click
from rich.console import Console

from layerdiff._version import __version__
from layerdiff.compare import compare as run_compare
from layerdiff.console import print_engine_info, print_summary, progress_bar
from layerdiff.errors import LayerdiffError
from layerdiff.report import check_writable, write_report

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise click.BadParameter(f"cannot parse size '{text}': expected a number with a unit, e.g. 2GiB or 512MB",
                                 param_hint="--max-memory")
    return int(float(m.group(1)) * _UNITS[unit])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="layerdiff")
def cli() -> None:
    """Find where, and why, a reduced-precision deployment of an ONNX model stops agreeing with FP32."""


@cli.command()
@click.argument("model")
@click.option("--candidate", required=True, metavar="SPEC",
              help="what to compare with the FP32 model: ort-int8 or ort-fp16 (built here, run on the CPU); "
                   "CANDIDATE.onnx (a QDQ or FP16 model derived from MODEL); polygraphy:RESULTS.json (outputs "
                   "saved by polygraphy run --trt --save-outputs); trt-fp16, trt-int8, trt-bf16 (TensorRT, GPU); "
                   "ort-cuda, ort-trt-fp16, ort-trt-int8 (onnxruntime-gpu providers, GPU)")
@click.option("--inputs", metavar="PATH", help="an .npz (one sample), a directory of .npz files, or a "
              "Polygraphy --save-inputs JSON file; without it, seeded random inputs are used")
@click.option("--calib", metavar="PATH", help="calibration samples for ort-int8 (same formats; default: the inputs)")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="calibration method for ort-int8")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:1x3x224x224",
              help="set a dynamic input shape (repeatable)")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random inputs")
@click.option("--top", type=click.IntRange(min=0), default=15, show_default=True, help="rows in the worst-layers table")
@click.option("-o", "--output", metavar="REPORT.json", help="write the JSON report here (atomically)")
@click.option("--save-candidate", metavar="CAND.onnx", help="save the candidate model that was built")
@click.option("--engine-info", metavar="LAYERS.json", help="TensorRT layer information of the engine whose "
              "results are imported (trtexec --exportLayerInfo): compare fused layers as one row")
@click.option("--save-engine-info", metavar="LAYERS.json", help="trt-* candidates: write the engine inspector "
              "JSON that was read")
@click.option("--max-memory", metavar="SIZE", help="capture tensors in chunks so they stay under SIZE (e.g. 2GiB)")
@click.option("--min-cosine", type=float, help="exit 1 when a final output's cosine (worst sample) is below this")
@click.option("--divergence-cosine", type=float, default=0.99, show_default=True,
              help="a layer diverges when its local cosine falls below this")
@click.option("--reference-provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA (TF32 off) where it really loads, else CPU")
@click.option("--cache-dir", metavar="DIR", help="keep calibration ranges here, to reuse them in later runs")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar and no summary")
@click.option("--debug", is_flag=True, help="show tracebacks")
def compare(model, candidate, inputs, calib, calibration, shapes, seed, top, output, save_candidate, engine_info,
            save_engine_info, max_memory, min_cosine, divergence_cosine, reference_provider, cache_dir, quiet, debug) -> int:
    """Diff a reduced-precision candidate against MODEL in FP32, layer by layer."""
    budget = parse_size(max_memory) if max_memory else None
    if output:
        check_writable(output)
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:
        out = Console(width=160)
    with progress_bar(err, quiet) as progress:
        report = run_compare(model, candidate, inputs=inputs, calib=calib, shapes=shapes, seed=seed,
                             calibration=calibration, max_memory=budget, divergence_cosine=divergence_cosine,
                             reference_provider=reference_provider, cache_dir=cache_dir,
                             save_candidate=save_candidate, engine_info=engine_info,
                             save_engine_info=save_engine_info, progress=progress)
    if output:
        write_report(report, output)
    if report.capture.get("interrupted"):
        done = report.capture.get("samples_done", 0)
        print(f"layerdiff: interrupted after {done} of {report.inputs['samples']} sample(s) in every chunk"
              + (f"; the partial report is in {output}" if output else ""), file=sys.stderr)
        return 130
    if not quiet:
        print_summary(report, out, top)
        if output:
            out.print(f"report written to {output}")
    elif report.inputs.get("random"):
        err.print(f"warning: {report.warnings[0]}")
    if min_cosine is not None:
        failed = [name for name, agg in report.outputs if agg is None or not agg.worst.cosine >= min_cosine]
        if failed:
            err.print(f"tolerance failed: final output cosine below {min_cosine} for {', '.join(failed)}")
            return 1
    return 0


@cli.command()
@click.argument("engine_info")
@click.option("--model", metavar="MODEL.onnx", help="resolve layer names against this model's nodes")
@click.option("--json", "as_json", is_flag=True, help='print {"layers": [...]} as JSON')
def inspect(engine_info, model, as_json) -> int:
    """Show each TensorRT engine layer: realised precision and the ONNX nodes it came from."""
    from layerdiff.engine_info import parse_engine_info
    from layerdiff.graph import load_model

    info = parse_engine_info(engine_info, load_model(model) if model else None)
    if as_json:
        click.echo(json.dumps({"kind": info.kind, "bindings": list(info.bindings),
                               "layers": [layer.to_dict() for layer in info.layers]}, indent=1))
    else:
        out = Console()
        print_engine_info(info, out if out.is_terminal else Console(width=160))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="layerdiff", standalone_mode=False)
    except click.exceptions.Abort:
        print("layerdiff: interrupted", file=sys.stderr)
        return 130
    except click.ClickException as e:
        print(f"layerdiff: error: {e.format_message()}", file=sys.stderr)
        return 2
    except LayerdiffError as e:
        if debug:
            traceback.print_exc()
        print(f"layerdiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerdiff: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
