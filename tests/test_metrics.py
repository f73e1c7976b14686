import math

import numpy as np
import pytest

from layerdiff import metrics
from layerdiff.metrics import aggregate, diff_metrics


def oracle(ref, cand):
    """The definitions in metrics.py, written again in plain float64 numpy."""
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(c)
    r, c = r[ok], c[ok]
    d = c - r
    return {
        "cosine": r @ c / (np.linalg.norm(r) * np.linalg.norm(c)),
        "max_abs": np.abs(d).max(),
        "mean_abs": np.abs(d).mean(),
        "rel_rms": np.linalg.norm(d) / np.linalg.norm(r),
        "sqnr_db": 10 * np.log10((r @ r) / (d @ d)),
        "ref_absmax": np.abs(r).max(),
    }


@pytest.mark.parametrize("cand_dtype", [np.float32, np.float16])
def test_metrics_match_float64_oracle(cand_dtype):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 7, 11)).astype(np.float32)
    cand = (ref + rng.normal(scale=0.05, size=ref.shape)).astype(cand_dtype)
    m = diff_metrics(ref, cand)
    for key, want in oracle(ref, cand).items():
        assert getattr(m, key) == pytest.approx(want, rel=1e-12, abs=1e-15), key
    assert m.count == ref.size and m.ref_nonfinite == m.cand_nonfinite == 0


def test_blocks_accumulate_like_one_pass(monkeypatch):
    rng = np.random.default_rng(1)
    ref = rng.normal(size=10_001).astype(np.float32)
    cand = ref * 1.01 + 0.001
    whole = diff_metrics(ref, cand)
    monkeypatch.setattr(metrics, "_BLOCK", 97)
    blocked = diff_metrics(ref, cand)
    for key in ("cosine", "max_abs", "mean_abs", "rel_rms", "sqnr_db", "ref_absmax"):
        assert getattr(blocked, key) == pytest.approx(getattr(whole, key), rel=1e-12)


def test_metrics_agree_with_polygraphy_comparator():
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult

    rng = np.random.default_rng(2)
    ref = rng.random((4, 10)).astype(np.float32)
    cand = (ref + rng.normal(scale=0.01, size=ref.shape)).astype(np.float32)
    results = RunResults()
    results.append(("ref", [IterationResult({"t": ref}, runner_name="ref")]))
    results.append(("cand", [IterationResult({"t": cand}, runner_name="cand")]))
    acc = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e9, rtol=1e9))
    theirs = next(iter(acc.lst[0].values()))[0]["t"]
    ours = diff_metrics(ref, cand)
    assert ours.max_abs == pytest.approx(float(theirs.max_absdiff), rel=1e-6)
    assert ours.mean_abs == pytest.approx(float(theirs.mean_absdiff), rel=1e-5)


def test_identical_tensors():
    x = np.arange(6, dtype=np.float32)
    m = diff_metrics(x, x.copy())
    assert m.cosine == 1.0 and m.max_abs == 0.0 and m.rel_rms == 0.0 and m.sqnr_db == math.inf


def test_all_zero_tensors():
    z = np.zeros(5, np.float32)
    both = diff_metrics(z, z)
    assert both.cosine == 1.0 and both.rel_rms == 0.0
    one = diff_metrics(z, np.ones(5, np.float32))
    assert one.cosine == 0.0 and one.rel_rms == math.inf and one.sqnr_db == -math.inf and one.max_abs == 1.0


def test_one_element_cosine_is_what_its_relative_error_allows():
    """A [1, 1] tensor 21.6% off had cosine 1 (the sign of one number agrees), shown green in a new
    user's Magika report beside local rel 0.216; its cosine is now the one a vector with that relative
    error has, 1 - rel^2 / 2, as the tolerance judges one-element outputs."""
    m = diff_metrics(np.array([[2.0]]), np.array([[2.432]]))
    rel = (2.432 - 2.0) / 2.0
    assert m.rel_rms == pytest.approx(rel, rel=1e-6) and m.cosine == pytest.approx(1 - rel * rel / 2, rel=1e-9)
    assert diff_metrics(np.array([3.0]), np.array([3.0])).cosine == 1.0
    assert diff_metrics(np.array([1.0]), np.array([-1.0])).cosine == -1.0  # rel 2: the floor
    assert diff_metrics(np.array([0.0]), np.array([0.5])).cosine == 0.0  # a zero reference: as before
    assert diff_metrics(np.array([0.5]), np.array([0.0])).cosine == 0.0  # a zero candidate: as before
    # two elements: the ordinary cosine
    two = diff_metrics(np.array([2.0, 1.0]), np.array([2.432, 1.0]))
    r, c = np.array([2.0, 1.0]), np.array([2.432, 1.0])
    assert two.cosine == pytest.approx(r @ c / np.linalg.norm(r) / np.linalg.norm(c), rel=1e-12)


def test_nonfinite_counted_and_excluded():
    ref = np.array([1.0, 2.0, np.nan, 4.0], np.float32)
    cand = np.array([1.0, np.inf, 3.0, 4.5], np.float32)
    m = diff_metrics(ref, cand)
    assert (m.ref_nonfinite, m.cand_nonfinite, m.count) == (1, 1, 2)
    assert m.max_abs == pytest.approx(0.5)
    all_bad = diff_metrics(np.full(3, np.inf, np.float32), np.ones(3, np.float32))
    assert math.isnan(all_bad.cosine) and all_bad.count == 0


def test_fp16_range_flag():
    assert diff_metrics(np.array([70000.0], np.float32), np.array([70000.0], np.float32)).exceeds_fp16
    assert not diff_metrics(np.array([60000.0], np.float32), np.array([60000.0], np.float32)).exceeds_fp16


def test_shapes_must_match():
    with pytest.raises(ValueError):
        diff_metrics(np.zeros(3), np.zeros(4))


def test_aggregate_worst_and_mean():
    ref = np.linspace(-1, 1, 50).astype(np.float32)
    a = diff_metrics(ref, ref + 0.01)
    b = diff_metrics(ref, ref + 0.1)
    agg = aggregate([a, b])
    assert agg.worst.cosine == min(a.cosine, b.cosine)
    assert agg.worst.max_abs == pytest.approx(0.1, rel=1e-5)
    assert agg.worst.sqnr_db == min(a.sqnr_db, b.sqnr_db)
    assert agg.mean.max_abs == pytest.approx((a.max_abs + b.max_abs) / 2)
    assert agg.samples == 2
