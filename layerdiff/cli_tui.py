"""The commands that show a saved report: `tui` (browse it in the terminal) and `plot` (the error
along the network as a picture). Registered on the group in layerdiff.cli."""

from __future__ import annotations

import io
import sys

import click

from layerdiff.errors import BadInput


def open_tui(report, report_path: str | None = None, inputs: str | None = None) -> int:
    """Run the TUI on a report (a value; `report_path` where it lives, if saved)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadInput("the TUI needs a terminal (stdin and stdout are not one); save the report with -o and run "
                       "layerdiff tui REPORT.json in a terminal")
    from rich.console import Console

    from layerdiff.tui.app import LayerdiffApp

    app = LayerdiffApp(report, report_path, bisect_inputs=inputs)
    # Textual prints what the app died of as a long traceback with locals: it is raised here instead, for
    # the command's one line and exit 3 (--debug shows the traceback)
    app.error_console = Console(file=io.StringIO(), stderr=True)
    app.run()
    if app.failure is not None:
        raise app.failure
    if app.return_code:
        raise RuntimeError(f"the TUI stopped with exit code {app.return_code}")
    return 0


@click.command()
@click.argument("report")
@click.option("--inputs", metavar="PATH", help="samples for a bisect started in the TUI (default: the report's)")
@click.option("--debug", is_flag=True, help="show tracebacks")
def tui(report, inputs, debug) -> int:
    """Browse a saved report in the terminal (? lists the keys)."""
    from layerdiff.report import load_report

    return open_tui(load_report(report), report, inputs)


@click.command()
@click.argument("report")
@click.option("-o", "--output", required=True, metavar="FILE.png|svg|pdf", help="the picture (atomically)")
@click.option("--title", help="the figure's title (default: model, candidate and samples)")
@click.option("--debug", is_flag=True, help="show tracebacks")
def plot(report, output, title, debug) -> int:
    """Draw the local and accumulated error along the network (needs the plot extra: matplotlib)."""
    from layerdiff.files import check_writable
    from layerdiff.plot import plot_report
    from layerdiff.report import load_report

    check_writable(output, protect=(report,))
    loaded = load_report(report)
    plot_report(loaded, output, title=title)
    click.echo(f"plot written to {output}")
    return 0
