"""The search strategies on oracles with known answers (no model runs)."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest

from layerdiff.errors import BadInput, Cancelled
from layerdiff.search import Outcome, Search, eval_bound
from layerdiff.target import OutputSpec, Target

NODES = [f"n{i}" for i in range(40)]


def oracle(needed: set[str], *, hurt: set[str] = frozenset(), helps: set[str] = frozenset(),
           calls: list | None = None):
    """Passes (metric >= 0.9999) when every node of `needed` is pinned; a pinned node of `hurt` costs
    0.0002 (a pin that makes things worse), one of `helps` gives back 0.0001."""

    def test(pins: frozenset[str]) -> Outcome:
        if calls is not None:
            calls.append(pins)
        value = 1 - 0.01 * len(needed - pins) - 0.0002 * len(hurt & pins) + 0.0001 * len(helps & pins)
        return Outcome(pins, value, (value,), value >= 0.9999)

    return test


def make(needed, **kw) -> tuple[Search, list]:
    calls: list = []
    hurt, helps = kw.pop("hurt", frozenset()), kw.pop("helps", frozenset())
    return Search(NODES, oracle(set(needed), hurt=set(hurt), helps=set(helps), calls=calls), lambda a, b: a > b,
                  max_evals=kw.pop("max_evals", 1000), **kw), calls


@pytest.mark.parametrize("needed", [{"n3"}, {"n3", "n31"}, {"n0", "n39"}, {"n10", "n11", "n12"}, {"n5", "n20", "n33"}])
def test_auto_finds_exactly_the_needed_pins_within_the_bound(needed):
    search, calls = make(needed)
    result = search.run("auto")
    assert result.status == "found"
    assert result.outcome.pins == frozenset(needed)
    assert result.outcome.passed
    assert len(calls) == len(set(calls)), "an evaluation was repeated"
    assert result.evaluations <= eval_bound("auto", len(NODES))


def test_prefix_and_suffix_are_contiguous_binary_searches():
    search, calls = make({"n3", "n31"})
    assert search.run("prefix").outcome.pins == frozenset(NODES[:32])
    search, calls = make({"n3", "n31"})
    assert search.run("suffix").outcome.pins == frozenset(NODES[3:])
    assert len(calls) <= eval_bound("suffix", len(NODES))


def test_auto_beats_contiguous_where_pins_are_far_apart():
    needed = {"n2", "n37"}
    prefix = make(needed)[0].run("prefix").outcome.pins
    suffix = make(needed)[0].run("suffix").outcome.pins
    auto = make(needed)[0].run("auto").outcome.pins
    assert len(auto) == 2 and len(auto) <= max(1, min(len(prefix), len(suffix)) // 2)


def test_a_pin_that_hurts_is_left_out():
    # n5 is needed, n6 makes things worse and n39 makes up for it: every prefix past n6 fails, so the
    # contiguous searches answer 40 and 35 pins, where n5 alone passes
    search, _ = make({"n5"}, hurt={"n6"}, helps={"n39"})
    assert len(search.run("prefix").outcome.pins) == 40
    search, _ = make({"n5"}, hurt={"n6"}, helps={"n39"})
    assert len(search.run("suffix").outcome.pins) == 35
    search, _ = make({"n5"}, hurt={"n6"}, helps={"n39"})
    assert search.run("auto").outcome.pins == frozenset({"n5"})


def test_ddmin_alone_is_one_minimal():
    search, _ = make({"n3", "n17", "n30"}, hurt={"n20"}, helps={"n38"})
    search.ends()
    found = search.ddmin(NODES)
    assert search.test(found).passed
    assert all(not search.test(found - {n}).passed for n in found)


def test_rank_pins_by_single_node_sensitivity():
    search, calls = make({"n7", "n30"})
    result = search.run("rank")
    assert result.outcome.pins == frozenset({"n7", "n30"})
    assert sum(1 for c in calls if len(c) == 1) == len(NODES)  # every node pinned alone once


def test_met_and_unreachable_end_early():
    search, calls = make(set())
    assert search.run("auto").status == "met" and len(calls) == 2
    impossible = Search(NODES, lambda p: Outcome(p, 0.5, (0.5,), False), lambda a, b: a > b, max_evals=100)
    result = impossible.run("auto")
    assert result.status == "unreachable" and result.evaluations == 2


def test_budget_gives_the_best_plan_found():
    search, calls = make({"n1", "n20", "n38"}, max_evals=8)
    result = search.run("auto")
    assert result.status == "budget"
    assert len(calls) == 8
    assert result.outcome.passed  # at worst all-pinned, which passes
    assert {"n1", "n20", "n38"} <= result.outcome.pins


def test_resume_repeats_no_evaluation():
    first, calls1 = make({"n4", "n25"}, max_evals=7)
    assert first.run("auto").status == "budget"
    second, calls2 = make({"n4", "n25"}, known=first.cache.values())
    result = second.run("auto")
    assert result.outcome.pins == frozenset({"n4", "n25"})
    assert not set(calls1) & set(calls2)
    assert result.evaluations == len(calls1) + len(calls2)


def test_jobs_give_the_same_answer():
    one = make({"n9", "n23"})[0].run("auto").outcome.pins
    four, calls = make({"n9", "n23"}, jobs=4)
    assert four.run("auto").outcome.pins == one
    assert len(calls) == len(set(calls))


def test_cancel_stops_between_evaluations():
    cancel = threading.Event()
    search, calls = make({"n9"}, cancel=cancel)
    cancel.set()
    with pytest.raises(Cancelled):
        search.run("auto")
    assert calls == []


def test_ddmin_is_one_minimal_on_random_monotone_oracles():
    rng = np.random.default_rng(0)
    for _ in range(30):
        needed = set(rng.choice(NODES, size=int(rng.integers(1, 6)), replace=False))
        result = make(needed)[0].run("auto")
        assert result.outcome.pins == frozenset(needed)


# -- targets -------------------------------------------------------------------------------------------

OUTS = ["boxes", "scores", "attn[i]"]


def test_output_specs_parse_basic_indexing_and_never_evaluate():
    assert OutputSpec.parse("scores[:, 4:]", OUTS).index == (slice(None), slice(4, None))
    assert OutputSpec.parse("boxes[0, ..., -2::2]", OUTS).index == (0, Ellipsis, slice(-2, None, 2))
    assert OutputSpec.parse("attn[i]", OUTS).index == ()  # a name with brackets, taken whole
    for bad in ("scores[__import__('os')]", "scores[1+1]", "scores[a]", "scores[::0]", "scores[..., ...]",
                "scores[", "nothing[0]", "nothing"):
        with pytest.raises(BadInput):
            OutputSpec.parse(bad, OUTS)


def test_output_specs_must_fit_the_output():
    spec = OutputSpec.parse("scores[:, 4:]", OUTS)
    spec.check((1, 84, 100))
    with pytest.raises(BadInput, match="selects no element"):
        spec.check((1, 4, 100))
    with pytest.raises(BadInput, match="does not fit"):
        OutputSpec.parse("scores[0, 0, 0, 0]", OUTS).check((1, 84, 100))
    with pytest.raises(BadInput, match="does not fit"):
        OutputSpec.parse("scores[2]", OUTS).check((1, 84, 100))


def test_a_slice_sees_what_the_whole_output_hides():
    # boxes in the hundreds drown the class scores: the whole output's cosine stays high
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.uniform(0, 640, (1, 4, 200)), rng.uniform(0, 1, (1, 80, 200))], axis=1)
    cand = ref.copy()
    cand[:, 4:] = 0  # every class score lost
    whole = Target.parse("cosine", 0.999, ["boxes"], ["boxes"])
    scores = Target.parse("cosine", 0.999, ["boxes[:, 4:]"], ["boxes"])
    assert whole.passes(whole.score({"boxes": ref}, {"boxes": cand}))
    assert not scores.passes(scores.score({"boxes": ref}, {"boxes": cand}))
    assert math.isnan(scores.score({"boxes": ref}, {"boxes": cand})) is False


def test_targets_directions_and_nonfinite():
    ref = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    cand = {"y": np.array([1.0, 2.5, 3.0], np.float32)}
    assert Target.parse("max-abs", 0.4, [], ["y"]).score(ref, cand) == pytest.approx(0.5)
    assert not Target.parse("max-abs", 0.4, [], ["y"]).passes(0.5)
    assert Target.parse("max-abs", 0.6, [], ["y"]).passes(0.5)
    t = Target.parse("sqnr", 20, [], ["y"])
    expected = 10 * math.log10(14 / 0.25)
    assert t.score(ref, cand) == pytest.approx(expected)
    nan = {"y": np.array([1.0, np.nan, 3.0], np.float32)}
    assert t.score(ref, nan) == -math.inf and not t.passes(t.score(ref, nan))
    with pytest.raises(BadInput):
        Target.parse("cosine", 1.5, [], ["y"])
    with pytest.raises(BadInput):
        Target.parse("psnr", 30, [], ["y"])


def test_user_metric_function(tmp_path):
    f = tmp_path / "metric.py"
    f.write_text("import numpy as np\n"
                 "def agree(ref, cand):\n    return float(np.mean(ref['y'].argmax(-1) == cand['y'].argmax(-1)))\n"
                 "def broken(ref, cand):\n    raise KeyError('nope')\n")
    t = Target.parse("", 0.9, [], ["y"], fn=f"{f}:agree", higher_is_better=True)
    ref = {"y": np.eye(4, dtype=np.float32)}
    assert t.score(ref, ref) == 1.0
    assert t.score(ref, {"y": np.roll(ref["y"], 1, axis=1)}) == 0.0
    with pytest.raises(BadInput, match="KeyError"):
        Target.parse("", 0.9, [], ["y"], fn=f"{f}:broken", higher_is_better=True).score(ref, ref)
    for bad in (f"{f}:missing", f"{tmp_path}/none.py:agree", "no-colon"):
        with pytest.raises(BadInput):
            Target.parse("", 0.9, [], ["y"], fn=bad, higher_is_better=True)


def test_target_round_trips_through_json():
    t = Target.parse("cosine", 0.999, ["scores[:, 4:]", "boxes"], OUTS)
    assert Target.from_dict(t.to_dict(), OUTS) == t


def test_split_keeps_commas_inside_brackets():
    t = Target.parse("cosine", 0.9, ["scores[:, 4:],boxes"], OUTS)
    assert [s.text for s in t.outputs] == ["scores[:, 4:]", "boxes"]


@pytest.mark.parametrize("needed", list(itertools.combinations(["n0", "n13", "n26", "n39"], 2)))
def test_auto_never_needs_more_pins_than_the_better_contiguous_search(needed):
    prefix = make(set(needed))[0].run("prefix").outcome.pins
    suffix = make(set(needed))[0].run("suffix").outcome.pins
    auto = make(set(needed))[0].run("auto").outcome.pins
    assert len(auto) <= max(1, min(len(prefix), len(suffix)) // 2) or len(auto) <= len(needed)


# -- objective time ------------------------------------------------------------------------------------


def any_of(groups: list[set[str]], calls: list | None = None):
    """Passes when every group has at least one of its nodes pinned: several equally small answers."""

    def test(pins: frozenset[str]) -> Outcome:
        if calls is not None:
            calls.append(pins)
        value = 1 - 0.01 * sum(1 for g in groups if not g & pins)
        return Outcome(pins, value, (value,), value >= 0.9999)

    return test


def costed(costs: dict[str, float]):
    return lambda pins: sum(costs.get(n, 0.0) for n in pins)


def test_objective_time_takes_the_cheapest_of_equally_small_answers():
    groups = [{"n10", "n11", "n12"}, {"n30", "n31"}]
    costs = {"n10": 5.0, "n11": 0.5, "n12": 3.0, "n30": 0.2, "n31": 4.0}
    plain = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000).run("auto")
    calls: list = []
    timed = Search(NODES, any_of(groups, calls), lambda a, b: a > b, max_evals=1000, cost=costed(costs)).run("auto")
    assert timed.status == "found" and timed.outcome.passed
    assert len(timed.outcome.pins) == len(plain.outcome.pins) == 2
    assert timed.outcome.pins == {"n11", "n30"}  # the cheapest pair that passes
    assert plain.outcome.pins != {"n11", "n30"}  # which the fewest-pins search alone does not find
    assert len(calls) == len(set(calls))


def test_objective_time_is_never_dearer_nor_larger_than_objective_pins():
    rng = np.random.default_rng(3)
    for _ in range(40):
        groups = []
        for _ in range(int(rng.integers(1, 4))):
            start = int(rng.integers(0, len(NODES) - 3))
            groups.append({NODES[start + k] for k in range(int(rng.integers(1, 4)))})
        costs = {n: float(rng.normal()) for n in NODES}  # negative too: a node faster in FP32
        plain = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000).run("auto")
        timed = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000, cost=costed(costs)).run("auto")
        assert timed.outcome.passed and len(timed.outcome.pins) == len(plain.outcome.pins)
        assert costed(costs)(timed.outcome.pins) <= costed(costs)(plain.outcome.pins) + 1e-12
        # and no passing plan it evaluated is as small and cheaper
        same = [o for o in timed.search.cache.values() if o.passed and len(o.pins) == len(timed.outcome.pins)]
        assert costed(costs)(timed.outcome.pins) == min(costed(costs)(o.pins) for o in same)


def test_objective_time_swaps_stay_within_the_budget_and_keep_the_answer_found():
    groups = [{"n10", "n11", "n12"}]
    costs = {"n10": 1.0, "n11": 2.0, "n12": 3.0, "n13": 0.0}
    full = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000, cost=costed(costs)).run("auto")
    assert full.outcome.pins == {"n10"}
    needed = full.evaluations
    plain = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000).run("auto")
    assert plain.evaluations < needed - 1  # so the shorter budget below ends among the swaps
    # a budget that ends among the swaps: still "found", and as small
    short = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=needed - 1, cost=costed(costs)).run("auto")
    assert short.evaluations <= needed - 1
    assert short.status == "found" and len(short.outcome.pins) == 1 and short.outcome.passed


def test_objective_time_keeps_the_fewest_pins_where_pins_do_not_add_up():
    """Oracles where passing is not monotone in the pins (a pin can hurt): objective time's answer is
    never larger than objective pins', and objective pins' answer is the plan it swapped from."""
    rng = np.random.default_rng(7)
    order = NODES[:8]
    for _ in range(400):
        table = {frozenset(s): bool(rng.random() < 0.3) for k in range(len(order) + 1)
                 for s in itertools.combinations(order, k)}
        table[frozenset()], table[frozenset(order)] = False, True

        def test(pins, table=table):
            return Outcome(pins, 1.0 if table[pins] else 0.0, (1.0,), table[pins])

        costs = {n: float(rng.normal()) for n in order}
        plain = Search(order, test, lambda a, b: a > b, max_evals=10_000).run("auto")
        timed = Search(order, test, lambda a, b: a > b, max_evals=10_000, cost=costed(costs)).run("auto")
        assert timed.outcome.passed and len(timed.outcome.pins) == len(plain.outcome.pins)
        assert timed.search.unswapped == plain.outcome.pins
        assert costed(costs)(timed.outcome.pins) <= costed(costs)(plain.outcome.pins) + 1e-12


def test_objective_time_searches_within_objective_pins_budget_and_swaps_in_its_reserve():
    """A budget that ends inside the search: objective time's search stops where objective pins' does
    (the same plans, so as many pins), and its reserve of evaluations goes to the swaps alone."""
    groups = [{"n3", "n4"}, {"n20", "n21"}, {"n33", "n34"}]
    costs = {n: 1.0 for n in NODES} | {"n4": 0.1, "n21": 0.1, "n34": 0.1}
    full = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=1000).run("auto")
    budget = full.evaluations - 4  # objective pins runs out inside its search
    plain = Search(NODES, any_of(groups), lambda a, b: a > b, max_evals=budget).run("auto")
    assert plain.status == "budget" and plain.outcome.passed
    calls: list = []
    timed = Search(NODES, any_of(groups, calls), lambda a, b: a > b, max_evals=budget + 10, cost=costed(costs),
                   reserve=10).run("auto")
    assert timed.status == "budget" and len(timed.outcome.pins) == len(plain.outcome.pins)
    assert timed.search.unswapped == plain.outcome.pins  # objective pins' answer, raced first by bisect
    assert set(calls[:budget]) == set(plain.search.cache)  # the same plans searched
    assert budget < timed.evaluations <= budget + 10  # the reserve went to swaps
    assert costed(costs)(timed.outcome.pins) < costed(costs)(plain.outcome.pins)


def test_auto_answers_the_best_of_the_equally_small_plans_it_met():
    """Two single pins pass, one by a wider margin: auto's answer is that one, whichever its search
    pruned to first (the margin is what held-out inputs need)."""
    def test(pins):
        value = 0.99 + 0.006 * ("n5" in pins) + 0.009 * ("n30" in pins)
        return Outcome(pins, value, (value,), value >= 0.995)

    result = Search(NODES, test, lambda a, b: a > b, max_evals=1000).run("auto")
    assert result.status == "found" and result.outcome.pins == {"n30"}
    passing = [o for o in result.search.cache.values() if o.passed and len(o.pins) == 1]
    assert {o.pins for o in passing} >= {frozenset({"n30"})}
