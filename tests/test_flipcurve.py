"""The fitted flip curve (simattr.flipcurve) and the adaptive engine on synthetic curves with known crossings:
the estimator's bias and its intervals' coverage over many simulated seed draws."""
import math

import numpy as np
import pytest

from simattr import flipcurve
from simattr.support.bank import ModelBank
from simattr.support.search import adaptive_search


def test_isotonic_fit_equals_scikit_learn_on_random_weighted_rows():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    for _ in range(100):
        m = int(rng.integers(1, 15))
        v, w = rng.random((4, m)), rng.integers(1, 9, m).astype(float)
        fit = flipcurve.isotonic_decreasing(v, w)
        for row, got in zip(v, fit):
            ref = IsotonicRegression(increasing=False).fit(np.arange(m), row, sample_weight=w).predict(np.arange(m))
            np.testing.assert_allclose(got, ref, atol=1e-12)


def test_crossing_by_hand():
    # accuracies 1, 1, 2/3, 0.4, 1/3, 0: already non-increasing, so the fit is the data
    pts = flipcurve.Points.from_counts({0: (3, 3), 32: (3, 3), 48: (3, 2), 56: (5, 2), 64: (3, 1), 128: (3, 0)})
    est = flipcurve.estimate(pts, 0.5, n_draws=0)
    np.testing.assert_allclose(est.fitted, [1, 1, 2 / 3, 0.4, 1 / 3, 0])
    # fitted 2/3 at 48, 0.4 at 56: crosses 0.5 at 48 + (2/3 - 1/2) / (2/3 - 0.4) * 8 = 53
    assert (est.lo, est.hi) == (48, 56) and est.crossing == pytest.approx(53.0) and est.support == 53
    # a violation (1/3 at 40, 1 at 48) is pooled: (1 + 3) / 6 = 2/3 at both, not a crossing at 40
    pooled = flipcurve.estimate(flipcurve.Points.from_counts({0: (3, 3), 40: (3, 1), 48: (3, 3), 64: (3, 0)}), 0.5,
                                n_draws=0)
    np.testing.assert_allclose(pooled.fitted, [1, 2 / 3, 2 / 3, 0])
    assert pooled.support == 52 and (pooled.lo, pooled.hi) == (48, 64)     # 48 + (1/6) / (2/3) * 16
    censored = flipcurve.estimate(flipcurve.Points.from_counts({128: (3, 2)}), 0.5, n_draws=0)
    assert censored.support == math.inf and censored.crossing is None
    zero = flipcurve.estimate(flipcurve.Points.from_counts({0: (3, 1), 128: (3, 0)}), 0.5, n_draws=0)
    assert zero.support == 0


def test_flip_probability_is_the_jeffreys_posterior():
    assert flipcurve.flip_probability(3, 3, 0.5) < 0.05 and flipcurve.flip_probability(3, 0, 0.5) > 0.95
    assert flipcurve.flip_probability(4, 2, 0.5) == pytest.approx(0.5)


class SimBank(ModelBank):
    """A ModelBank whose models are coin flips: correct with probability f(k), seeded by (draw, k, index)."""

    def __init__(self, f, draw: int):
        self.f, self.draw = f, draw
        self.outcomes, self.trainings, self.full = {}, 0, {}

    def ensure(self, k, indices):
        have = self.outcomes.setdefault(k, {})
        for i in indices:
            if i not in have:
                self.trainings += 1
                have[i] = bool(np.random.default_rng([self.draw, k, i]).random() < self.f(k))


def sharp(k):          # 1.0 up to 100, then falls to 0 by 120: crossing 111
    return float(np.clip((120 - k) / 20, 0, 1))


def plateau(k):        # 0.95, then a long plateau at 0.4 from 40 (below the threshold), 0 from 100
    return 0.95 if k < 40 else (0.4 if k < 100 else 0.0)


def near_plateau(k):   # a plateau at 0.6 (above), then 0.35 from 70: crossing 70
    return 0.95 if k < 30 else (0.6 if k < 70 else 0.35)


def true_support(f, k_max=128):
    return next((k for k in range(k_max + 1) if f(k) <= 0.5), None)


@pytest.mark.parametrize("f", [sharp, plateau, near_plateau], ids=["sharp", "plateau", "near-plateau"])
def test_adaptive_engine_is_unbiased_and_its_90_percent_intervals_cover_the_true_crossing(f):
    truth = true_support(f)
    errors, covered, used = [], [], []
    for draw in range(60):
        bank = SimBank(f, draw)
        adaptive_search(bank, 128, threshold=0.5, seeds_min=3, seeds_max=9, max_models=40, confidence=0.9)
        est = flipcurve.estimate(bank.points(), 0.5, n_draws=400, seed=draw)
        lo, hi = est.interval(0.9)
        errors.append(est.support - truth)
        covered.append(lo <= truth <= hi)
        used.append(bank.trainings)
    assert max(used) <= 40
    assert abs(np.median(errors)) <= 4                  # no systematic shift
    assert np.mean(covered) >= 0.8, np.mean(covered)    # honest intervals (nominal 90%)


def test_k0_is_probed_only_once_the_smallest_probed_k_flips():
    bank = SimBank(lambda k: 0.0, 0)                       # flipped with nothing changed
    probes = adaptive_search(bank, 128, threshold=0.5, seeds_min=3, seeds_max=9, max_models=60,
                             confidence=0.9)
    assert probes[-1].k == 0 and [p.k for p in probes][:3] == [128, 64, 32]
    assert flipcurve.estimate(bank.points(), 0.5, n_draws=0).support == 0


def test_adaptive_engine_stops_at_a_flat_curve_and_reports_censoring():
    bank = SimBank(lambda k: 0.95, 0)
    probes = adaptive_search(bank, 128, threshold=0.5, seeds_min=3, seeds_max=9, max_models=40,
                             confidence=0.9)
    assert [p.k for p in probes] == [128] and bank.trainings == 3
    est = flipcurve.estimate(bank.points(), 0.5, n_draws=200, seed=0)
    assert est.support == math.inf and est.interval(0.9)[1] == math.inf


def test_uncertain_probes_get_more_seeds_and_clear_ones_do_not():
    bank = SimBank(lambda k: 0.5 if k >= 64 else 1.0, 3)
    probes = adaptive_search(bank, 128, threshold=0.5, seeds_min=3, seeds_max=9, max_models=200,
                             confidence=0.9)
    by_k = {p.k: p.n_models for p in probes}
    assert 0 not in by_k                                   # no full-data models: k = 0 waits until it matters
    assert all(n == 3 for k, n in by_k.items() if k < 64)
    assert max(n for k, n in by_k.items() if k >= 64) == 9


def test_a_threshold_of_zero_is_reachable_by_the_draws():
    est = flipcurve.estimate(flipcurve.Points.from_counts({0: (5, 5), 16: (5, 0), 32: (5, 0)}), 0.0, seed=0)
    assert est.support == 16 and est.p_censored < 0.5
    lo, hi = est.interval(0.9)
    assert lo <= 16 <= hi


def test_no_models_is_a_censored_estimate():
    est = flipcurve.estimate(flipcurve.Points.from_counts({}), 0.5)
    assert est.support == math.inf and est.interval(0.9) == (0.0, math.inf)


def test_without_k0_models_the_crossing_is_interpolated_from_a_correct_image_at_k0():
    est = flipcurve.estimate(flipcurve.Points.from_counts({64: (3, 0), 128: (3, 0)}), 0.5, n_draws=0)
    assert (est.lo, est.hi) == (0, 64) and est.support == 32 and est.crossing == pytest.approx(32.0)
