"""The `layerdiff` command's entry point: a Ctrl-C while the libraries load is an interruption (exit 130,
one line), not a traceback."""

import sys


def main() -> int:
    try:
        from layerdiff.cli import main as run
    except KeyboardInterrupt:
        print("layerdiff: interrupted", file=sys.stderr)
        return 130
    return run()
