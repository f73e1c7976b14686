"""A search that generalises: search, validation and held-out samples in three disjoint roles; an answer
that fails a validation sample takes it as a counterexample and the search goes on from its cache (a
plan tried already runs on the new sample alone)."""

from __future__ import annotations

import numpy as np

from layerdiff.backends.fake import FakeBackend
from layerdiff.bisect import bisect, prepare_roles, split_roles
from layerdiff.target import Target
from tests.conftest import FIXTURES, cosine64, run_plain

CNN = FIXTURES / "cnn.onnx"
INPUTS = FIXTURES / "cnn_inputs"


def _roles():
    """Samples 1-2 searched on, 3 validation, 4 held out (four samples alone give no validation)."""
    from dataclasses import replace

    session, validation, held = prepare_roles(CNN, inputs=INPUTS, reference_provider="cpu")
    assert validation is None and len(session.samples) == 3 and len(held) == 1
    own = session.samples
    search = replace(own, feeds=own.feeds[:2], names=own.names[:2])
    validation = replace(own, feeds=own.feeds[2:], names=own.names[2:])
    return session.with_samples(search, search), validation, held


def test_roles_are_disjoint_and_in_order():
    session, validation, held = _roles()
    names = list(session.samples.names) + list(validation.names) + list(held.names)
    assert names == sorted(p.name for p in INPUTS.glob("*.npz"))
    assert len(prepare_roles(CNN, inputs=INPUTS, reference_provider="cpu")[0].calib) == 3  # never the held out
    twelve = session.samples.__class__(tuple({"input": np.zeros(1)} for _ in range(12)), "x",
                                       names=tuple(str(i) for i in range(12)))
    search, val, out = split_roles(twelve)
    assert (len(search), len(val), len(out)) == (6, 3, 3)
    assert split_roles(twelve, holdout_given=True)[2] is None


def test_a_validation_sample_the_answer_fails_joins_the_search():
    """Sample 3 (validation) tolerates no error at all; samples 1-2 (search) tolerate one of the two
    injected errors. The first answer (one pin) fails sample 3, which joins the search; the second
    answer pins both, and its evaluations of plans tried before ran on sample 3 alone."""
    session, validation, held = _roles()
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    feeds = [dict(np.load(p)) for p in sorted(INPUTS.glob("*.npz"))]
    refs = [run_plain(CNN, f)["probs"] for f in feeds]
    hard = refs[2]

    def one_pin_cosines(node):  # each search sample's cosine with only `node`'s error left
        from layerdiff.plan import PrecisionPlan

        cand = session.realise(PrecisionPlan.uniform("fp16", [n for n in ("conv2", "fc") if n != node]), backend)
        return [cosine64(r["probs"], g["probs"]) for r, g in zip(session.outputs_on(None), session.outputs_on(cand))]

    threshold = min(max(a, b) for a, b in zip(one_pin_cosines("conv2"), one_pin_cosines("fc"))) - 1e-9
    runs = []

    def metric(ref, cand):
        runs.append(1)
        c = cosine64(ref["probs"], cand["probs"])
        return c if not np.allclose(ref["probs"], hard, rtol=1e-4, atol=1e-7) else 1.0 - (1.0 - c) * 1e6

    target = Target("strict-on-3", threshold, (), True, metric)
    result = bisect(session, "fake", target, holdout=held, validation=validation, backend=backend)
    assert result.validation is not None and result.validation.counterexamples == (validation.names[0],)
    assert {p.node for p in result.pins} == {"conv2", "fc"}
    assert result.validation.searched == 3 and result.validation.samples == 0
    assert result.outcome.passed and len(result.outcome.per_sample) == 3
    assert result.holdout is not None and result.holdout.holds
    # plans were scored once per sample: never a sample twice for one plan
    assert len(runs) <= result.evaluations * 3 + 2 * 3


def test_without_validation_samples_the_search_is_the_one_it_was():
    session, validation, held = _roles()
    backend = FakeBackend(session.model, errors={"conv2": 0.05, "fc": 0.05}, default_error=0.0)
    target = Target.parse("cosine", 0.99999, [], session.model.outputs)
    with_val = bisect(session, "fake", target, holdout=held, validation=validation, backend=backend)
    without = bisect(session, "fake", target, holdout=held, backend=backend)
    assert {p.node for p in with_val.pins} == {p.node for p in without.pins}
    assert with_val.validation is not None and with_val.validation.holds and without.validation is None


def test_a_whole_output_mixing_boxes_and_scores_is_warned_about():
    from layerdiff.target import Target

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (1, 4, 500))
    scores = rng.uniform(0, 1, (1, 80, 500)) ** 4
    yolo = {"out": np.concatenate([boxes, scores], axis=1).astype(np.float32)}
    whole = Target.parse("cosine", 0.99, [], ["out"])
    (warning,) = whole.mixed_scales(yolo)
    assert "axis 1" in warning and "--outputs 'out[...]'" in warning
    assert Target.parse("cosine", 0.99, ["out[:, 4:]"], ["out"]).mixed_scales(yolo) == ()
    probs = {"probs": (rng.dirichlet(np.ones(10) * 0.1, size=1)).astype(np.float32)}
    assert whole.mixed_scales(probs) == ()  # a classifier's probabilities
    features = {"f": rng.normal(0, 1, (1, 64, 32)).astype(np.float32)}
    assert whole.mixed_scales(features) == ()
