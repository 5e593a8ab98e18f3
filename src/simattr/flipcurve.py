"""The flip curve of one support answer, estimated from every model trained for it.

f(k) is the probability that a model retrained with the test image's top-k training images removed (or
relabelled) still classifies the image correctly. An answer's models give, at each probed k, n_k models of
which c_k were correct. The support is the smallest k where f(k) <= threshold.

Estimator (the one `support` reports when support.engine is adaptive):
* fit: weighted isotonic regression of the per-k accuracies c_k / n_k, non-increasing in k (weights n_k). It
  pools neighbouring probes that contradict each other instead of trusting the last decision, and assumes
  only that removing (relabelling) more never helps the image, not a parametric shape: digits curves include
  both sharp drops (1.00 -> 0.00 within 16 images) and long plateaus near the threshold.
* crossing: between the last probed k whose fitted accuracy is above the threshold (lo) and the first one at
  or below it (hi), linear interpolation of the fitted values; the support is that k rounded up, within
  (lo, hi]. Fitted accuracy above the threshold at the largest probed k: censored (None); at or below it at
  k = 0: 0.
* model uncertainty: posterior predictive draws. Each probed k gets p_k ~ Beta(c_k + 1/2, n_k - c_k + 1/2)
  (Jeffreys prior), then c*_k ~ Binomial(n_k, p_k): the accuracies the same number of models would show in a
  rerun; each draw is refitted (isotonic) and gives a crossing and a bracket (lo, hi]. An answer's interval at
  level L runs from the (1-L)/2 quantile of lo + 1 to the (1+L)/2 quantile of hi (censored draws count as
  +inf): it covers the models' noise and where between two probes the curve crosses.
* why predictive rather than the posterior of p alone: a search probes where the accuracy is near the
  threshold and stops adding seeds once a probe looks settled, so the probes it keeps are lucky more often
  than the posterior of p assumes (3 of 3 correct happens 1 time in 8 at an accuracy of 0.5; the Jeffreys
  posterior calls it 3% likely to be flipped). On simulated curves with known crossings (a sharp drop, a long
  plateau below the threshold, one just above it, a knee; tests/test_flipcurve.py) the adaptive engine's 90%
  intervals covered the true crossing 65-75% of the time with posterior draws of p and 85-96% with the
  predictive draws, and a threshold of 0 ("every model wrong") stays reachable by a draw.
* k = 0: the sampled test images are the ones the full-data models classify correctly, so where no model
  was trained at k = 0 and the smallest probed k is already flipped, the crossing is interpolated from an
  accuracy of 1 at k = 0 (an answer of 0 needs models at k = 0).

Everything here is deterministic given its seed; the draws are vectorised (no per-draw Python loop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

INF = math.inf


@dataclass(frozen=True)
class Points:
    """The curve's data: sorted probed k, models trained there, models correct there."""
    k: np.ndarray          # int64, strictly increasing
    n: np.ndarray          # int64, >= 1
    c: np.ndarray          # int64, 0 <= c <= n

    @classmethod
    def from_counts(cls, counts: Mapping[int, tuple[int, int]]) -> "Points":
        """{k: (n_models, n_correct)} -> Points (k sorted); k without models are dropped."""
        ks = sorted(int(k) for k, (n, _) in counts.items() if n > 0)
        return cls(k=np.array(ks, np.int64), n=np.array([counts[k][0] for k in ks], np.int64),
                   c=np.array([counts[k][1] for k in ks], np.int64))

    @classmethod
    def from_curve(cls, curve: Sequence[Mapping]) -> "Points":
        """From an answer's `curve` records ({"k", "n_models", "n_correct", ...})."""
        return cls.from_counts({int(p["k"]): (int(p["n_models"]), int(p["n_correct"])) for p in curve})

    def __len__(self) -> int:
        return len(self.k)


def isotonic_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-increasing fit of each row of `values` (D, m) (or one row (m,)).

    Exact, by the min-max formula f(i) = min_{a <= i} max_{b >= i} mean_w(values[a..b]), vectorised over rows;
    O(D m^2) memory, meant for the few dozen probes of one answer.
    """
    v = np.asarray(values, np.float64)
    one = v.ndim == 1
    v = np.atleast_2d(v)
    w = np.asarray(weights, np.float64)
    m = v.shape[1]
    if m == 0:
        return v[0] if one else v
    S = np.concatenate([np.zeros((v.shape[0], 1)), np.cumsum(v * w, axis=1)], axis=1)      # (D, m+1)
    W = np.concatenate([[0.0], np.cumsum(w)])
    a = np.arange(m)[:, None]
    b = np.arange(m)[None, :]
    valid = a <= b
    denom = np.where(valid, W[b + 1] - W[a], 1.0)
    avg = (S[:, None, 1:] - S[:, :m, None]) / denom                                        # (D, a, b)
    avg = np.where(valid, avg, -np.inf)
    # M[a, i] = max_{b >= i} avg[a, b]: reverse cumulative max over b
    M = np.flip(np.maximum.accumulate(np.flip(avg, axis=2), axis=2), axis=2)
    M = np.where(valid, M, np.inf)                                                          # only a <= i
    fit = M.min(axis=1)
    return fit[0] if one else fit


def _crossings(ks: np.ndarray, fitted: np.ndarray, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """crossings() with the interpolated (unrounded) k of each row first: NaN where censored."""
    G = np.atleast_2d(np.asarray(fitted, np.float64))
    ks = np.asarray(ks, np.float64)
    below = G <= threshold + 1e-12
    D = G.shape[0]
    k_star, support, lo, hi = np.full(D, np.nan), np.full(D, INF), np.full(D, ks[-1]), np.full(D, INF)
    any_below = below.any(axis=1)
    j = np.argmax(below, axis=1)                                   # first probe at or below (if any)
    if ks[0] == 0:
        zero = any_below & (j == 0)
        k_star[zero], support[zero], lo[zero], hi[zero] = 0.0, 0.0, -1.0, 0.0
        inner = any_below & (j > 0)
    else:                   # nothing probed below ks[0]: from an accuracy of 1 at k = 0 (correct by selection)
        inner = any_below
    if inner.any():
        rows = np.flatnonzero(inner)
        jm = j[inner]
        prev = np.maximum(jm - 1, 0)
        k_lo = np.where(jm > 0, ks[prev], 0.0)
        g_lo = np.where(jm > 0, G[rows, prev], 1.0)
        k_hi, g_hi = ks[jm], G[rows, jm]
        t = (g_lo - threshold) / np.maximum(g_lo - g_hi, 1e-12)
        k_star[inner] = k_lo + np.clip(t, 0.0, 1.0) * (k_hi - k_lo)
        support[inner] = np.clip(np.ceil(k_star[inner] - 1e-9), k_lo + 1, k_hi)
        lo[inner], hi[inner] = k_lo, k_hi
    return k_star, support, lo, hi


def crossings(ks: np.ndarray, fitted: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fitted curves (D, m) on probed ks (m,): (support, lo, hi) per row, as float arrays.

    support: the interpolated crossing rounded up into (lo, hi]; +inf when the curve stays above the
    threshold at the largest k (lo = that k, hi = +inf); 0 when it is at or below it at k = 0 (lo = -1); when
    the smallest probed k > 0 is already at or below it, interpolated from an accuracy of 1 at k = 0 (lo = 0).
    """
    return _crossings(ks, fitted, threshold)[1:]


def raw_draws(points: Points, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, m) accuracies a rerun of each probe's n_k models would show: c*_k / n_k with
    c*_k ~ Binomial(n_k, p_k), p_k ~ Beta(c_k + 1/2, n_k - c_k + 1/2)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(points.c + 0.5, points.n - points.c + 0.5, size=(n_draws, len(points)))
    return rng.binomial(points.n, p) / points.n


def posterior_draws(points: Points, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, m) fitted curves: raw_draws, each row refitted (isotonic)."""
    return isotonic_decreasing(raw_draws(points, n_draws, seed), points.n)


def released_draws(points: Points, n_draws: int, seed: int, threshold: float) -> np.ndarray:
    """Per draw, the released protocol's reading of raw_draws: +inf when the largest probed k (k_max) is not
    flipped, else the smallest probed k that is (what bisection answers from the same probes)."""
    flipped = raw_draws(points, n_draws, seed) <= threshold + 1e-12
    k = np.where(flipped, points.k.astype(np.float64)[None, :], INF).min(axis=1)
    return np.where(flipped[:, -1], k, INF)


@dataclass(frozen=True)
class Estimate:
    support: float            # +inf when censored
    lo: float                 # bracket of the point estimate: the crossing lies in (lo, hi]
    hi: float
    crossing: float | None    # interpolated k (not rounded); None when censored
    fitted: np.ndarray        # fitted accuracy at each probed k
    draws: np.ndarray         # per-draw supports (+inf = censored), for intervals and the report's bootstrap
    draw_lo: np.ndarray
    draw_hi: np.ndarray

    def interval(self, level: float) -> tuple[float, float]:
        """(low, high) at `level`: low from the draws' lower bracket ends + 1, high from their upper ends."""
        q = (1.0 - level) / 2.0
        if not len(self.draws):
            return 0.0, INF
        low = float(np.quantile(self.draw_lo + 1.0, q, method="lower"))
        high = float(np.quantile(self.draw_hi, 1.0 - q, method="higher"))
        return max(low, 0.0), high

    @property
    def p_censored(self) -> float:
        return float(np.mean(~np.isfinite(self.draws))) if len(self.draws) else 0.0


def estimate(points: Points, threshold: float, *, n_draws: int = 1000, seed: int = 0) -> Estimate:
    """The fitted crossing of one answer's models and its posterior draws (see the module docstring). No
    models (an empty ranking): censored, with no draws."""
    if len(points) == 0:
        empty = np.zeros(0)
        return Estimate(support=INF, lo=-1.0, hi=INF, crossing=None, fitted=empty, draws=empty, draw_lo=empty,
                        draw_hi=empty)
    fitted = isotonic_decreasing(points.c / points.n, points.n)
    k_star, s, lo, hi = _crossings(points.k, fitted[None], threshold)
    crossing = None if np.isnan(k_star[0]) else float(k_star[0])
    draws = posterior_draws(points, n_draws, seed) if n_draws > 0 else np.zeros((0, len(points)))
    ds, dlo, dhi = crossings(points.k, draws, threshold) if n_draws > 0 else (np.zeros(0),) * 3
    return Estimate(support=float(s[0]), lo=float(lo[0]), hi=float(hi[0]), crossing=crossing, fitted=fitted,
                    draws=ds, draw_lo=dlo, draw_hi=dhi)


def flip_probability(n: int, c: int, threshold: float) -> float:
    """Posterior probability (Jeffreys prior) that the accuracy at a probe with c of n models correct is at or
    below the threshold: how sure the probe's decision is."""
    from scipy.special import betainc

    return float(betainc(c + 0.5, n - c + 0.5, threshold))


def as_int(x: float) -> int | None:
    """A support value for JSON: int, or None for +inf (censored)."""
    return None if not math.isfinite(x) else int(x)
