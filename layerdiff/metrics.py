"""Per-tensor error metrics, accumulated in float64 over blocks so that no full-size float64 copy of a
tensor is ever made.

Definitions (r = reference, c = candidate, d = c - r, over elements finite in both runs):
  cosine    r·c / (|r| |c|);  1.0 when both are all-zero, 0.0 when exactly one is
  max_abs   max |d|;  mean_abs  mean |d|
  rel_rms   |d| / |r|;  0.0 when d is all-zero, +inf when r is all-zero and d is not
  sqnr_db   10 log10(|r|² / |d|²);  +inf when d is all-zero
  nonfinite NaN/Inf counts in each run;  ref_absmax  max |r| over the reference's finite elements
A tensor with no element finite in both runs has NaN metrics. Infinities and NaNs become null in JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

FP16_MAX = 65504.0
# 512 KiB of float64 per operand: the block stays in cache. Dot products are numpy's own einsum loops,
# not BLAS: BLAS splits long dot products over its threads, which changes the order of the additions
# with its thread settings; einsum adds in one fixed order, so metrics are bit-identical across runs,
# threads and machines' BLAS settings (and layerdiff never has to change those process-wide settings).
_BLOCK = 1 << 16


@dataclass(frozen=True, eq=False)
class TensorMetrics:
    cosine: float
    max_abs: float
    mean_abs: float
    rel_rms: float
    sqnr_db: float
    ref_nonfinite: int
    cand_nonfinite: int
    ref_absmax: float
    count: int
    # the values themselves, side by side (over the finite pairs; largest |x| also over all finite values)
    cand_absmax: float = math.nan
    ref_rms: float = math.nan
    cand_rms: float = math.nan

    @property
    def exceeds_fp16(self) -> bool:
        return self.ref_absmax > FP16_MAX

    def _key(self) -> tuple:
        # NaN (an undefined metric) equals NaN here, so that a report read back equals the one written
        return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in astuple_shallow(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorMetrics):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def to_json(self) -> dict:
        """Every field; values that are not finite numbers are null, and `nonfinite_values` says which
        (+inf, -inf or nan), so that `from_json` gives back an equal object."""
        d: dict = {k: finite_or_none(getattr(self, k)) for k in METRICS}
        d["nonfinite"] = {"reference": self.ref_nonfinite, "candidate": self.cand_nonfinite}
        d["ref_absmax"] = finite_or_none(self.ref_absmax)
        d["exceeds_fp16"] = self.exceeds_fp16
        d["count"] = self.count
        for k in STATS:
            d[k] = finite_or_none(getattr(self, k))
        special = {k: _spell(getattr(self, k)) for k in (*METRICS, "ref_absmax")
                   if not math.isfinite(getattr(self, k))}
        special.update({k: "inf" if getattr(self, k) > 0 else "-inf" for k in STATS if math.isinf(getattr(self, k))})
        if special:
            d["nonfinite_values"] = special
        return d

    @classmethod
    def from_json(cls, d: dict) -> TensorMetrics:
        special = d.get("nonfinite_values") or {}

        def num(k: str) -> float:
            v = d.get(k)
            return float(special.get(k, "nan")) if v is None else float(v)

        nonfinite = d.get("nonfinite") or {}
        return cls(num("cosine"), num("max_abs"), num("mean_abs"), num("rel_rms"), num("sqnr_db"),
                   int(nonfinite.get("reference", 0)), int(nonfinite.get("candidate", 0)), num("ref_absmax"),
                   int(d.get("count", 0)), *(num(k) for k in STATS))


METRICS = ("cosine", "max_abs", "mean_abs", "rel_rms", "sqnr_db")
STATS = ("cand_absmax", "ref_rms", "cand_rms")  # written since layerdiff 0.x; null (NaN) in older reports


def astuple_shallow(m: TensorMetrics) -> tuple:
    return tuple(getattr(m, f.name) for f in fields(m))


def _spell(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def cosine(rr: float, cc: float, rc: float) -> float:
    if rr == 0.0 and cc == 0.0:
        return 1.0
    if rr == 0.0 or cc == 0.0:
        return 0.0
    return min(1.0, max(-1.0, rc / math.sqrt(rr * cc)))


def rel_rms(rr: float, dd: float) -> float:
    if dd == 0.0:
        return 0.0
    return math.inf if rr == 0.0 else math.sqrt(dd / rr)


def sqnr_db(rr: float, dd: float) -> float:
    if dd == 0.0:
        return math.inf
    return -math.inf if rr == 0.0 else 10.0 * math.log10(rr / dd)


def diff_metrics(ref: np.ndarray, cand: np.ndarray) -> TensorMetrics:
    """Compare two arrays of the same shape (any float dtype)."""
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {cand.shape}")
    r_flat, c_flat = ref.reshape(-1), cand.reshape(-1)
    acc = [0.0] * 8  # rr, cc, rc, dd, sum|d|, max|d|, max|r|, max|c|
    n = ref_bad = cand_bad = 0
    for start in range(0, r_flat.size, _BLOCK):
        r = r_flat[start:start + _BLOCK].astype(np.float64)
        c = c_flat[start:start + _BLOCK].astype(np.float64)
        block = _block_sums(r, c)
        if not all(math.isfinite(v) for v in block):
            # rare: a NaN/Inf in the block poisons the sums; count them and keep the finite pairs
            r_ok, c_ok = np.isfinite(r), np.isfinite(c)
            ref_bad += int(r.size - r_ok.sum())
            cand_bad += int(c.size - c_ok.sum())
            if r_ok.any():
                acc[6] = max(acc[6], float(np.abs(r[r_ok]).max()))
            if c_ok.any():
                acc[7] = max(acc[7], float(np.abs(c[c_ok]).max()))
            both = r_ok & c_ok
            r, c = r[both], c[both]
            if r.size == 0:
                continue
            block = _block_sums(r, c)
        for i in range(5):
            acc[i] += block[i]
        for i in (5, 6, 7):
            acc[i] = max(acc[i], block[i])
        n += r.size
    rr, cc, rc, dd, sad, mx, rmax, cmax = acc
    if n == 0:
        nan = math.nan
        return TensorMetrics(nan, nan, nan, nan, nan, ref_bad, cand_bad, rmax if ref_bad < r_flat.size else nan, 0,
                             cmax if cand_bad < c_flat.size else nan)
    cos = cosine(rr, cc, rc)
    if n == 1 and rr > 0.0 and cc > 0.0:
        # one element: its cosine is only its sign (1 for any error that keeps it); the cosine a vector
        # with this relative error has instead, as the tolerance judges a one-element output
        cos = max(-1.0, 1.0 - dd / rr / 2.0)
    return TensorMetrics(
        cosine=cos, max_abs=mx, mean_abs=sad / n, rel_rms=rel_rms(rr, dd),
        sqnr_db=sqnr_db(rr, dd), ref_nonfinite=ref_bad, cand_nonfinite=cand_bad, ref_absmax=rmax, count=n,
        cand_absmax=cmax, ref_rms=math.sqrt(rr / n), cand_rms=math.sqrt(cc / n),
    )


def _block_sums(r: np.ndarray, c: np.ndarray) -> tuple[float, ...]:
    if r.size == 0:
        return (0.0,) * 8
    with np.errstate(invalid="ignore", over="ignore"):
        d = c - r
        ad = np.abs(d)
        return (_dot(r, r), _dot(c, c), _dot(r, c), _dot(d, d), float(ad.sum()), float(ad.max()),
                float(np.abs(r).max()), float(np.abs(c).max()))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))


_LOWER_IS_WORSE = {"cosine", "sqnr_db"}


@dataclass(frozen=True)
class Aggregate:
    """A tensor's metrics over all samples: `worst` (per metric, the worst sample) and `mean`."""

    worst: TensorMetrics
    mean: TensorMetrics
    samples: int


def aggregate(per_sample: list[TensorMetrics]) -> Aggregate:
    if not per_sample:
        raise ValueError("no samples to aggregate")
    worst, mean = {}, {}
    for f in fields(TensorMetrics):
        values = [getattr(m, f.name) for m in per_sample]
        if f.name in ("ref_nonfinite", "cand_nonfinite", "count"):
            worst[f.name] = sum(values)
            mean[f.name] = sum(values) // len(values)
            continue
        known = [v for v in values if not math.isnan(v)]
        if not known:
            worst[f.name] = mean[f.name] = math.nan
            continue
        worst[f.name] = min(known) if f.name in _LOWER_IS_WORSE else max(known)
        mean[f.name] = sum(known) / len(known)  # +inf stays +inf (identical samples), inf - inf is nan
    return Aggregate(TensorMetrics(**worst), TensorMetrics(**mean), len(per_sample))


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def match_rate(ref: np.ndarray, cand: np.ndarray) -> float:
    """The fraction of elements equal in both (integer and bool tensors: class indices, masks)."""
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {cand.shape}")
    return float(np.count_nonzero(ref == cand)) / ref.size if ref.size else 1.0
