"""`bisect`: the fewest ONNX nodes to keep in FP32 so that a reduced-precision candidate's final outputs
meet a tolerance, checked on held-out samples.

    session, holdout = layerdiff.bisect.prepare_split("model.onnx", inputs="samples/")
    target = Target.parse("cosine", 0.999, [], session.model.outputs)
    result = layerdiff.bisect.bisect(session, "ort-int8", target, holdout=holdout)
    print(result.pins, result.outcome.value)

Every plan is realised on the prepared session (calibration once; INT8 plans by graph edits of one
quantized model) and evaluated by plain runs of its final outputs; outcomes are cached by the plan's
pins and, with `state`, kept in a file so that an interrupted search resumes without repeating one.
The search itself is layerdiff.search.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdiff.backends.base import Candidate
from layerdiff.backends.ort import INTRA_OP_THREADS
from layerdiff.bench import DEFAULT_RUNS
from layerdiff.bisect_state import SearchState, evaluation_identity
from layerdiff.cost import PinCosts, RecipeCost
from layerdiff.errors import BackendError, BadInput, Cancelled, first_line
from layerdiff.inputs import Samples
from layerdiff.pins import PinInfo, beyond_fp16, pin_infos, pinnable_nodes
from layerdiff.plan import PrecisionPlan
from layerdiff.search import (
    OBJECTIVES,
    STRATEGIES,
    TIME_EVALS,
    Outcome,
    Search,
    eval_bound,
)
from layerdiff.roles import Pool, Validation, too_few_samples, prepare_roles, prepare_split, split_roles, split_samples
from layerdiff.session import Session
from layerdiff.specs import IMPORTED, SPECS
from layerdiff.target import Target

# the samples' roles (layerdiff.roles), where callers have found them
__all__ = ["BisectResult", "Holdout", "Validation", "bisect", "prepare_roles", "prepare_split", "split_roles",
           "split_samples"]

MAX_ROUNDS = 4  # counterexamples taken from the validation samples, one a round
FINALISTS = 4  # --objective time: the equally small passing plans timed in turns to choose the answer
CLEARLY_FASTER = 0.05  # ... and one replaces objective pins' answer only when this much faster, and its p90
# below that answer's median: on this shared 2-core machine, medians of one plan move by 20% between turns


@dataclass(frozen=True)
class Holdout:
    samples: int
    source: str
    value: float
    per_sample: tuple[float, ...]
    holds: bool


@dataclass(frozen=True)
class Finalist:
    """--objective time: a passing plan with the fewest pins, its estimated kernel time (ONNX Runtime's
    profiler, pins' costs added to the all-reduced plan's) and its latency timed beside the others."""

    pins: tuple[str, ...]
    estimated_kernel_ms: float
    latency_ms_median: float | None
    latency_ms_p90: float | None
    chosen: bool


@dataclass(frozen=True)
class BisectResult:
    """How a bisect ended. `status`: met (no pin needed), found, budget (out of evaluations: the best
    plan found), max-pins (no plan within --max-pins passed: the best within it), unreachable (even
    all pinned fails), interrupted (the best found so far)."""

    status: str
    strategy: str
    target: Target
    spec: str
    precision: str
    outcome: Outcome  # the answer's evaluation on the search samples
    baseline: Outcome  # nothing pinned
    all_pinned: Outcome | None
    pins: tuple[PinInfo, ...]
    forced: tuple[str, ...]  # pinned in every plan (FP16: reference values beyond FP16's range)
    pinnable: int
    evaluations: int
    bound: int
    samples: int
    holdout: Holdout | None
    warnings: tuple[str, ...]
    calibration: Mapping[str, Any] = field(default_factory=dict)
    objective: str = "pins"
    pin_costs: PinCosts | None = None  # --objective time: each node's estimated cost in FP32
    cost: RecipeCost | None = None  # --bench: the answer timed beside FP32 and the all-reduced plan
    finalists: tuple[Finalist, ...] = ()  # --objective time: the plans timed to choose the answer
    race_runs: int = 0
    # the step after the search that Ctrl-C stopped ("held-out check", "evidence", "timing"); the steps after
    # it did not run either. The search's answer stands; the recipe says what was not done.
    interrupted_at: str = ""
    validation: Validation | None = None

    @property
    def passed(self) -> bool:
        return self.outcome.passed and self.status in ("met", "found", "budget")

    @property
    def plan(self) -> PrecisionPlan:
        """The answer as a plan: the pins and the forced nodes in FP32."""
        return PrecisionPlan.uniform(self.precision, [p.node for p in self.pins] + list(self.forced))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bisect(session: Session, candidate: str, target: Target, *, strategy: str = "auto",
           holdout: Samples | None = None, validation: Samples | None = None, max_pins: int | None = None, max_evals: int | None = None,
           jobs: int = 1, state: str | Path | None = None, backend: Any = None, evidence: bool = True,
           objective: str = "pins", bench: int | None = None, warmup: int = 10,
           on_start: Callable[[int, int, int], None] | None = None,
           on_outcome: Callable[[Outcome, int, int, bool], None] | None = None,
           progress=None, cancel: threading.Event | None = None) -> BisectResult:
    """Search the plans of `candidate` (ort-int8, ort-fp16, trt-*, fake; or `backend`, a backend object
    such as FakeBackend, whose plans are `precision` with pins) for the fewest FP32 pins that meet
    `target` on the session's samples, check each answer on `validation` (a sample it fails joins the
    search, which goes on from its cache: a plan tried already runs on the new sample only; at most
    MAX_ROUNDS times), then check the last answer on `holdout`. `on_start(pinnable, forced,
    most evaluations)` is called once before the search, `on_outcome(outcome, n, bound, cached)` after
    each evaluation. Ctrl-C (KeyboardInterrupt) or `cancel` end it with status "interrupted" and the
    best plan found so far.

    `objective="time"` (ONNX Runtime candidates): profile the FP32 model and the all-reduced plan
    first, and among equally small passing pin sets prefer the one estimated cheapest (layerdiff.search).
    `bench=N`: time the answer beside FP32 and the all-reduced plan (N runs after `warmup`)."""
    if strategy not in STRATEGIES:
        raise BadInput(f"unknown strategy '{strategy}'; use {', '.join(STRATEGIES)}")
    if objective not in OBJECTIVES:
        raise BadInput(f"unknown objective '{objective}'; use {', '.join(OBJECTIVES)}")
    if objective == "time" and (backend is not None or not candidate.startswith("ort-")):
        raise BadInput(f"--objective time estimates what each pin costs with ONNX Runtime's profiler: it takes "
                       f"--candidate ort-int8 or ort-fp16 (not '{candidate if backend is None else 'fake'}'); "
                       "use --objective pins")
    from layerdiff.bench import check_runs

    check_runs(bench, warmup)
    if candidate.startswith(IMPORTED) or candidate not in SPECS:
        raise BadInput(f"bisect realises precision plans: use --candidate {', '.join(s for s in SPECS if s != 'ort-cuda')}"
                       f" (not '{candidate}', which it cannot rebuild with pins)")
    precision = SPECS[candidate].precision
    if precision == "fp32":
        raise BadInput(f"--candidate {candidate} runs in FP32: there is nothing to pin")
    if max_pins is not None and max_pins < 0:
        raise BadInput("--max-pins is at least 0")
    reference = session.reference_outputs(cancel)
    target.check(reference[0])

    def make(pins: frozenset[str]) -> Candidate:
        plan = PrecisionPlan.uniform(precision, pins)
        if backend is not None:
            return session.realise(plan, backend, progress=progress, cancel=cancel)
        return session.candidate(candidate, plan, progress=progress, cancel=cancel)

    base_candidate = make(frozenset())  # calibrates once (INT8)
    pinnable = pinnable_nodes(session, base_candidate, candidate if backend is None else "fake")
    forced: tuple[str, ...] = ()
    if precision in ("fp16", "bf16") and precision == "fp16":
        forced = beyond_fp16(session, pinnable, cancel)
        pinnable = [n for n in pinnable if n not in forced]
    if not pinnable:
        raise BadInput(f"the model has no node that {candidate} computes in {precision}: nothing to pin")
    bound = max_evals if max_evals is not None else \
        eval_bound(strategy, len(pinnable)) + (TIME_EVALS if objective == "time" and strategy == "auto" else 0)
    if bound < 2:
        raise BadInput("--max-evals is at least 2 (nothing pinned and everything pinned)")
    # every sample the search may use: its own, then the validation samples (a counterexample joins it)
    pool = Pool(session, validation, target, lambda pins: make(pins | frozenset(forced)), cancel)

    def test(pins: frozenset[str]) -> Outcome:
        start = time.perf_counter()
        per = pool.scores(pins, pool.active)  # runs the plan on the samples it was not run on yet
        value = target.worst(per)
        return Outcome(pins, value, per, target.passes(value), time.perf_counter() - start)

    identity = {"model": session.model.sha256, "candidate": candidate, "precision": precision,
                "calibration": session.calibration if precision == "int8" else None,
                "samples": session.samples.digest(), "calib": session.calib.digest() if precision == "int8" else None,
                "target": {k: v for k, v in target.to_dict().items() if k != "threshold"},
                "forced": list(forced), **evaluation_identity(session, candidate, precision, target, backend)}
    store = SearchState(Path(state) if state else None, identity)
    known = store.load(target, len(session.samples))
    costs = None
    if objective == "time":  # after the state file is read: a file of another run is refused first
        from layerdiff.bench import pin_costs

        costs = pin_costs(session, base_candidate, progress=progress)
    if on_start:
        on_start(len(pinnable), len(forced), bound)
    count = [len(known)]

    def seen(outcome: Outcome, cached: bool) -> None:
        if not cached:
            count[0] += 1
            if len(outcome.per_sample) == len(session.samples):  # the resume file holds the first round's
                store.add(outcome)
        if on_outcome:
            on_outcome(outcome, count[0], bound, cached)

    reserve = TIME_EVALS if costs is not None and strategy == "auto" and max_evals is None else 0
    for o in known:  # (a resumed search's outcomes, on the search samples)
        pool.remember(o.pins, o.per_sample)
    # plans evaluated side by side share the cores: on 2 cores, two sessions of one thread each evaluate
    # the PP-OCRv4 detector 25% faster than one after another with two threads each (scripts/bench_bisect.py)
    share = INTRA_OP_THREADS.set(max(1, _cores() // jobs)) if jobs > 1 else None
    rounds: list[str] = []  # the validation samples the answers failed, each then searched on
    fresh = 0
    try:
        while True:
            known_now = pool.known()
            search = Search(pinnable, test, target.better, max_evals=len(known_now) + bound - fresh,
                            known=known_now, on_outcome=seen, jobs=jobs, cancel=cancel,
                            cost=costs.of if costs is not None else None, reserve=reserve)
            try:
                result = search.run(strategy)
                status, outcome = result.status, result.outcome
            finally:
                fresh += search.evaluations - len(known_now)
            if not (outcome.passed and pool.waiting) or len(rounds) >= MAX_ROUNDS or status == "budget" \
                    or bound - fresh < 2:
                break
            worst = pool.counterexample(outcome.pins)
            if worst is None:
                break
            rounds.append(pool.name(worst))
            pool.activate(worst)
    except (KeyboardInterrupt, Cancelled):
        status, outcome = "interrupted", search.best()
        if outcome is None:
            raise
    finally:
        if share is not None:
            INTRA_OP_THREADS.reset(share)
    if validation is not None and objective == "pins" and status in ("found", "budget") and outcome.passed:
        try:  # among passing plans of the answer's size, the one that holds best on the validation samples
            outcome = pool.steadiest(search, outcome)
        except (KeyboardInterrupt, Cancelled):
            status = "interrupted"
    checked = None
    if validation is not None and status != "interrupted":
        try:
            checked = pool.validate(outcome.pins, rounds)
        except (KeyboardInterrupt, Cancelled):
            status = "interrupted"
    baseline = search.cache.get(frozenset()) or outcome
    every = search.cache.get(frozenset(pinnable))
    if max_pins is not None and len(outcome.pins) > max_pins and status != "interrupted":
        within = [o for o in search.cache.values() if len(o.pins) <= max_pins]
        best = within[0] if within else baseline
        for o in within:
            if (o.passed and not best.passed) or (o.passed == best.passed and target.better(o.value, best.value)):
                best = o
        if not best.passed:
            status, outcome = "max-pins", best
        else:
            outcome = best
    warnings = list(too_few_samples(target, baseline, status)) + list(target.mixed_scales(pool.refs[0]))
    finalists: tuple[Finalist, ...] = ()
    race_runs = bench or DEFAULT_RUNS
    if costs is not None and status == "budget" and reserve == 0:
        warnings.append(f"--objective time: the budget of {bound} evaluations ended in the search, so few or no "
                        "cheaper plans were tried; give --max-evals more")
    if costs is not None and status in ("found", "budget", "max-pins") and outcome.passed and outcome.pins:
        try:
            finalists, outcome = _fastest(search, outcome, costs, make, forced, session, race_runs, warmup, progress)
        except KeyboardInterrupt:  # the search's answer stands; nothing more runs (no held-out check, no --bench)
            status = "interrupted"
            warnings.append("timing the finalists was interrupted: the answer is the search's, not timed")
        except BackendError as err:
            warnings.append(f"the finalists could not be timed ({err}): the answer is the search's")
    held, stopped = None, ""
    # (at the budget the best plan so far is checked too, passing or not: the user learns what it achieves)
    if holdout is not None and status in ("met", "found", "budget", "max-pins") and (outcome.passed or status == "budget"):
        try:
            held = _held_out(session, make(outcome.pins | frozenset(forced)), holdout, target, cancel)
        except (KeyboardInterrupt, Cancelled):
            stopped = "held-out check"
            warnings.append(f"interrupted during the held-out check: the answer was NOT checked on the "
                            f"{len(holdout)} held-out sample(s)")
        if held is not None and not held.holds and outcome.passed:
            warnings.append(f"the answer fails on the {len(holdout)} held-out sample(s): {target.metric} "
                            f"{held.value:.6g} against {target.threshold:g}; search on more samples (--inputs) "
                            "before trusting it")
    elif holdout is None and status in ("met", "found", "budget"):
        warnings.append("no held-out samples (one sample given): the answer was not checked on inputs it was not "
                        "found on; give --inputs with several samples or --holdout DIR")
    gather = evidence and status != "interrupted" and not stopped
    pins = None
    try:
        pins = pin_infos(session, base_candidate, make, outcome.pins, search.ordered(outcome.pins), gather,
                         progress, cancel)
    except (KeyboardInterrupt, Cancelled):
        if stopped:  # a second Ctrl-C: stop at once
            raise
        stopped = "evidence"
        warnings.append("interrupted while the pins' evidence was gathered: the recipe has its pins, without "
                        "their local errors")
    except Exception as err:  # the evidence is a report of the answer; a failure there must not cost the answer
        warnings.append(f"the pins' evidence could not be gathered ({type(err).__name__}: {first_line(err, '')}): "
                        "the recipe has its pins, without their local errors; run layerdiff compare to see them")
    if pins is None:  # the pins alone
        pins = pin_infos(session, base_candidate, make, outcome.pins, search.ordered(outcome.pins), False, None, None)
    calibration = {}
    if precision == "int8" and backend is None and candidate.startswith("ort"):
        from layerdiff.backends.calibrate import ranges_to_json

        calibration = {"method": session.calibration, "source": session.calib.source, "samples": len(session.calib),
                       "random": session.calib.random, "ranges": ranges_to_json(session.quantizer.ranges)}
    timed = None
    if bench is not None and status in ("met", "found", "budget", "max-pins") and outcome.passed and not stopped:
        from layerdiff.bench import time_recipe

        try:
            timed = time_recipe(session, make(outcome.pins | frozenset(forced)), base_candidate, bench, warmup)
        except KeyboardInterrupt:
            stopped = "timing"
            warnings.append("timing was interrupted: the recipe has no measured cost")
        except BackendError as err:
            warnings.append(f"the recipe could not be timed ({err})")
    if checked is not None and not checked.holds and checked.samples:
        warnings.insert(0, f"the answer fails {checked.failing} of {checked.samples} validation sample(s) after "
                           f"{len(rounds)} counterexample round(s): {target.metric} {checked.value:.6g}; give more "
                           "samples or --max-evals")
    return BisectResult(status, strategy, target, candidate, precision, outcome, baseline, every, pins, forced,
                        len(pinnable), fresh + len(known), bound, len(pool.active), held, tuple(warnings),
                        calibration, objective, costs, timed, finalists, race_runs if len(finalists) > 1 else 0,
                        stopped, checked)


def _held_out(session: Session, cand: Candidate, holdout: Samples, target: Target, cancel) -> Holdout:
    """The answer's metric on the held-out samples (never searched on)."""
    got = session.outputs_on(cand, holdout, cancel)
    ref = session.outputs_on(None, holdout, cancel)
    per = tuple(target.score(r, g) for r, g in zip(ref, got, strict=True))
    value = target.worst(per)
    return Holdout(len(holdout), holdout.source, value, per, target.passes(value))


def _fastest(search: Search, outcome: Outcome, costs: PinCosts, make, forced, session, runs: int, warmup: int,
             progress) -> tuple[tuple[Finalist, ...], Outcome]:
    """--objective time's last step: objective pins' answer, the search's answer (the cheapest by the
    estimate) and the next cheapest passing plans as small, FINALISTS in all, timed in turns, each in
    plain sessions of its own (bench.race). Objective pins' answer stays unless another is clearly
    faster (CLEARLY_FASTER, and its p90 below that answer's median); then the fastest such is the
    answer. The profiler's estimate adds kernel times of the two extreme plans; a mixed plan's layout
    changes and launch overheads are only in its own timing."""
    from layerdiff.bench import race_candidates

    fixed = frozenset(forced)
    same = sorted((o for o in search.cache.values() if o.passed and len(o.pins) == len(outcome.pins)),
                  key=lambda o: (costs.of(o.pins), search.ordered(o.pins)))
    plain = search.cache.get(search.unswapped) if search.unswapped is not None else None
    if plain is None or not plain.passed or len(plain.pins) != len(outcome.pins):
        plain = outcome  # (a budget or --max-pins answer: the search's own)
    pool = list(dict.fromkeys([plain, outcome] + same))[:FINALISTS]

    def finalist(o: Outcome, t=None, chosen: bool = False) -> Finalist:
        return Finalist(tuple(search.ordered(o.pins)), costs.estimate_ms(o.pins | fixed),
                        t.latency_ms_median if t else None, t.latency_ms_p90 if t else None, chosen)

    if len(pool) == 1:
        return (finalist(outcome, chosen=True),), outcome
    if progress:
        progress(f"timing the {len(pool)} cheapest plans in turns ({runs} runs each)", 0, 1)
    timed = race_candidates(session, [make(o.pins | fixed) for o in pool], runs=runs, warmup=warmup)
    if progress:
        progress("timed", 1, 1)
    base = timed[0]  # objective pins' answer
    faster = [i for i in range(1, len(pool))
              if timed[i].latency_ms_median < (1 - CLEARLY_FASTER) * base.latency_ms_median
              and timed[i].latency_ms_p90 < base.latency_ms_median]
    best = min(faster, key=lambda i: timed[i].latency_ms_median) if faster else 0
    return tuple(finalist(o, t, i == best) for i, (o, t) in enumerate(zip(pool, timed, strict=True))), pool[best]
