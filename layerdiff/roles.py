"""The roles samples play in a bisect: searched on, validating each answer (a sample an answer fails
joins the search), held out to check the final answer; and the pool that keeps every plan's metric per
sample, so that a plan tried already runs on a new sample alone."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

from layerdiff.inputs import Samples
from layerdiff.search import Outcome, Search
from layerdiff.session import Session, prepare
from layerdiff.target import Target

STEADIEST = 4  # passing plans of the answer's size compared on the validation samples


@dataclass(frozen=True)
class Validation:
    """The answer on the validation samples left after the search took its counterexamples."""

    samples: int  # validation samples the answer was last checked on
    source: str
    value: float  # the worst of them (nan: none left)
    failing: int
    holds: bool
    counterexamples: tuple[str, ...]  # validation samples an earlier answer failed, moved to the search
    searched: int  # search samples the answer rests on


def split_samples(samples: Samples) -> tuple[Samples, Samples | None]:
    """(search, held out): the last third of the samples (at least one) are held out when there are two
    or more; a single sample is searched on and nothing is held out."""
    n = len(samples)
    if n < 2:
        return samples, None
    k = max(1, n // 3)
    return (replace(samples, feeds=samples.feeds[:n - k], source=f"{samples.source} (samples 1-{n - k} of {n})",
                    names=samples.names[:n - k]),
            replace(samples, feeds=samples.feeds[n - k:], names=samples.names[n - k:],
                    source=f"{samples.source} (samples {n - k + 1}-{n} of {n}, held out)"))


def split_roles(samples: Samples, holdout_given: bool = False) -> tuple[Samples, Samples | None, Samples | None]:
    """(search, validation, held out) from one set of samples, in order: a quarter (at least one) held out
    when there are two or more (none when --holdout names them), a quarter (at least one) for validation
    when four or more remain (three searched on at least), the rest searched on."""
    n = len(samples)
    held = 0 if holdout_given or n < 2 else max(1, round(n / 4))
    val = max(1, round(n / 4)) if n - held >= 4 else 0
    cut = n - held - val

    def part(a: int, b: int, role: str) -> Samples | None:
        if b <= a:
            return None
        return replace(samples, feeds=samples.feeds[a:b], names=samples.names[a:b],
                       source=f"{samples.source} (samples {a + 1}-{b} of {n}{role})")

    return part(0, cut, ""), part(cut, cut + val, ", validation"), part(cut + val, n, ", held out")


def prepare_roles(model, *, inputs=None, calib=None, holdout=None, **kwargs
                  ) -> tuple[Session, Samples | None, Samples | None]:
    """A session on the search samples, the validation samples and the held-out samples (`holdout`, a
    path, when given). Without `calib`, calibration uses the search samples only."""
    session = prepare(model, inputs=inputs, calib=calib, **kwargs)
    held = None
    if holdout is not None:
        from layerdiff.inputs import load_samples, parse_shapes

        shapes = parse_shapes(tuple(kwargs.get("shapes", ()) or ()), session.model.inputs)
        held = load_samples(holdout, session.model.inputs, shapes, kwargs.get("seed", 1), what="--holdout")
    search, validation, split_held = split_roles(session.samples, holdout_given=held is not None)
    held = held if held is not None else split_held
    if search is not None and len(search) < len(session.samples):
        session = session.with_samples(search, None if calib is not None else search)
    return session, validation, held


def prepare_split(model, *, inputs=None, calib=None, holdout=None, **kwargs) -> tuple[Session, Samples | None]:
    """A session on the search samples and the held-out samples: `holdout` (a path) when given, else
    a split of `inputs`. Without `calib`, calibration uses the search samples only (never the held-out
    ones, which would flatter the check)."""
    session = prepare(model, inputs=inputs, calib=calib, **kwargs)
    if holdout is not None:
        from layerdiff.inputs import load_samples, parse_shapes

        shapes = parse_shapes(tuple(kwargs.get("shapes", ()) or ()), session.model.inputs)
        held = load_samples(holdout, session.model.inputs, shapes, kwargs.get("seed", 1), what="--holdout")
        return session, held
    search, held = split_samples(session.samples)
    if held is None:
        return session, None
    return session.with_samples(search, None if calib is not None else search), held


class Pool:
    """The samples a search may use: its own (active) and the validation samples waiting, with every
    plan's metric per sample, so a plan tried already runs on a new sample alone."""

    def __init__(self, session: Session, validation: Samples | None, target: Target, realise, cancel):
        self.session, self.target, self.realise, self.cancel = session, target, realise, cancel
        own = session.samples
        self.base = own
        self.feeds = list(own.feeds) + (list(validation.feeds) if validation is not None else [])
        self.names = [own.name(i) for i in range(len(own))] + \
            ([validation.name(i) for i in range(len(validation))] if validation is not None else [])
        self.validation_source = validation.source if validation is not None else ""
        self.active = list(range(len(own)))
        self.waiting = list(range(len(own), len(self.feeds)))
        self.refs = list(session.outputs_on(None, cancel=cancel))
        if validation is not None:
            self.refs += list(session.outputs_on(None, validation, cancel))
        self.per: dict[frozenset[str], dict[int, float]] = {}
        self._lock = threading.Lock()

    def name(self, i: int) -> str:
        return self.names[i]

    def _subset(self, idx: list[int]) -> Samples:
        return replace(self.base, feeds=tuple(self.feeds[i] for i in idx), names=tuple(self.names[i] for i in idx))

    def scores(self, pins: frozenset[str], indices: list[int]) -> tuple[float, ...]:
        with self._lock:
            have = self.per.setdefault(pins, {})
            missing = [i for i in indices if i not in have]
        if missing:
            got = self.session.outputs_on(self.realise(pins), self._subset(missing), self.cancel)
            values = {i: self.target.score(self.refs[i], g) for i, g in zip(missing, got, strict=True)}
            with self._lock:
                have.update(values)
        return tuple(have[i] for i in indices)

    def remember(self, pins: frozenset[str], per_sample) -> None:
        if len(per_sample) == len(self.active):
            self.per.setdefault(pins, {}).update(zip(self.active, per_sample))

    def known(self) -> list[Outcome]:
        """The plans run on every active sample already, as outcomes on them."""
        out = []
        for pins, have in self.per.items():
            if all(i in have for i in self.active):
                per = tuple(have[i] for i in self.active)
                value = self.target.worst(per)
                out.append(Outcome(pins, value, per, self.target.passes(value)))
        return out

    def counterexample(self, pins: frozenset[str]) -> int | None:
        """The waiting sample the plan fails worst (None: it passes them all)."""
        values = self.scores(pins, self.waiting)
        failing = [(v, i) for v, i in zip(values, self.waiting) if not self.target.passes(v)]
        if not failing:
            return None
        worst = self.target.worst([v for v, _ in failing])
        return next(i for v, i in failing if v == worst or (math.isnan(v) and math.isnan(worst)))

    def activate(self, i: int) -> None:
        self.waiting.remove(i)
        self.active.append(i)

    def steadiest(self, search: Search, outcome: Outcome) -> Outcome:
        """Among the passing plans of `outcome`'s size (the best STEADIEST by the search's metric), the one
        whose worst validation metric is best: a margin on the search samples alone is not one that
        generalises. The search's answer wins ties."""
        if not self.waiting:
            return outcome
        same = [o for o in search.cache.values() if o.passed and len(o.pins) == len(outcome.pins) and o is not outcome]
        same.sort(key=lambda o: o.value, reverse=self.target.higher_is_better)
        best, best_val = outcome, self.target.worst(self.scores(outcome.pins, self.waiting))
        for o in same[:STEADIEST - 1]:
            val = self.target.worst(self.scores(o.pins, self.waiting))
            if self.target.better(val, best_val):
                best, best_val = o, val
        return best

    def validate(self, pins: frozenset[str], rounds: list[str]) -> Validation:
        if not self.waiting:
            return Validation(0, self.validation_source, math.nan, 0, True, tuple(rounds), len(self.active))
        values = self.scores(pins, self.waiting)
        worst = self.target.worst(values)
        failing = sum(1 for v in values if not self.target.passes(v))
        return Validation(len(self.waiting), self.validation_source, worst, failing, failing == 0, tuple(rounds),
                          len(self.active))


def too_few_samples(target: Target, baseline: Outcome, status: str) -> tuple[str, ...]:
    """Too few inputs to tell: the metric moves more between samples than the gap being closed."""
    per = [v for v in baseline.per_sample if math.isfinite(v)]
    if len(per) < 2 or status == "met":
        return ()
    spread, gap = max(per) - min(per), abs(target.threshold - baseline.value)
    if math.isfinite(gap) and spread > gap:
        # the worst of n samples moves by about the spread / sqrt(n): to bring that under the gap
        need = math.ceil(len(per) * (spread / gap) ** 2) if gap > 0 else None
        more = f" (about {need} searched on would bring that under the gap)" if need and need > len(per) else ""
        return (f"the metric varies more between the {len(per)} samples the verdict rests on ({spread:.3g}) than "
                f"the gap being closed ({gap:.3g}): too few inputs to tell which pins matter; give more "
                f"samples{more}",)
    return ()
