"""What the commands share: exit codes, and the option types that check their values (a size, a cosine)."""

from __future__ import annotations

import math
import re

import click

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


class Bound(click.ParamType):
    """A deployment bound: a finite number, at least `low` (e.g. --min-speedup 1.2)."""

    name = "NUMBER"

    def __init__(self, low: float = 0.0, example: str = "1.2"):
        self.low, self.example = low, example

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number; give one like {self.example}", param, ctx)
        if not math.isfinite(x) or x < self.low:
            self.fail(f"{value} is not a finite number of at least {self.low:g}; give one like {self.example}",
                      param, ctx)
        return x
