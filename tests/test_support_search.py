"""simattr.support.search: the searches on oracles (no file, no training)."""
import math

import numpy as np
import pytest

from simattr.support.search import Probe, bisect_support, check_k, models_needed, monotone_checks, search


def oracle(true_k, calls=None):
    def probe(k):
        if calls is not None:
            calls.append(k)
        return Probe(k=k, accuracy=0.0 if k >= true_k else 1.0, n_models=1, flipped=k >= true_k)
    return probe


@pytest.mark.parametrize("k_max", [1, 2, 7, 64, 100, 128, 144])
def test_bisection_finds_the_true_minimum_on_a_monotone_oracle(k_max):
    budget = math.ceil(math.log2(k_max)) if k_max > 1 else 0
    for true_k in range(1, k_max + 1):
        calls = []
        found, probes = bisect_support(oracle(true_k, calls), k_max, budget)
        assert found == true_k
        assert calls[0] == k_max and len(calls) <= 1 + budget
        assert [p.k for p in probes] == calls


def test_bisection_returns_none_when_k_max_does_not_flip():
    calls = []
    found, probes = bisect_support(oracle(10**9, calls), 64, 6)
    assert found is None and calls == [64] and len(probes) == 1


def test_small_budget_gives_an_upper_bound():
    found, probes = bisect_support(oracle(5), 64, 2)
    assert found is not None and found >= 5 and len(probes) == 3


def test_check_k_spreads_unprobed_values_above_the_support():
    assert check_k(4, 16, {16, 0, 8, 4, 6, 5}, 1) == [12]     # the middle of 7, 9, 10, ..., 15
    ks = check_k(4, 16, {16, 0, 8, 4, 6, 5}, 3)
    assert len(ks) == 3 and all(4 < k < 16 and k not in {8, 6, 5} for k in ks) and ks == sorted(ks)
    assert check_k(4, 16, set(), 100) == list(range(5, 16))      # fewer free values than asked
    assert check_k(15, 16, set(), 2) == [] and check_k(3, 16, set(), 0) == []


def test_monotone_checks_count_a_violation_bisection_cannot_see():
    def probe(k):                       # flipped from 4 on, except at 10 (a non-monotone image)
        flipped = k >= 4 and k != 10
        return Probe(k=k, accuracy=0.0 if flipped else 1.0, n_models=1, flipped=flipped)
    found, probes = search(probe, 16, 4)
    assert found == 4 and all(p.flipped == (p.k >= 4) for p in probes)     # bisection saw nothing wrong
    assert sorted(p.k for p in probes) == [0, 2, 3, 4, 8, 16]
    checks = monotone_checks(probe, found, 16, probes, 1)
    assert [c.k for c in checks] == [10] and not checks[0].flipped
    assert monotone_checks(oracle(4), found, 16, probes, 3) and \
        all(c.flipped for c in monotone_checks(oracle(4), found, 16, probes, 3))
    assert monotone_checks(probe, None, 16, probes, 3) == []


def test_models_needed_matches_training_every_model():
    rng = np.random.default_rng(0)
    for n_total in range(1, 8):
        for threshold in (0.0, 0.25, 0.5, 0.75):
            for _ in range(50):
                outcomes = rng.random(n_total) < 0.5      # True = the model is right on the query
                full = outcomes.mean() <= threshold
                correct, trained = 0, 0
                while True:
                    need = models_needed(correct, trained, n_total, threshold)
                    if need == 0:
                        break
                    correct += int(outcomes[trained:trained + need].sum())
                    trained += need
                limit = math.floor(threshold * n_total + 1e-9)
                assert (correct <= limit) == full
                assert trained <= n_total


def test_search_reports_zero_when_the_image_flips_without_any_change():
    calls = []

    def always(k):
        calls.append(k)
        return Probe(k=k, accuracy=0.0, n_models=3, flipped=True)

    found, probes = search(always, 64, 6)
    assert found == 0 and calls == [64, 0] and [p.k for p in probes] == [64, 0]
    found, probes = search(oracle(9), 64, 6)
    assert found == 9 and [p.k for p in probes][:2] == [64, 0]
    found, probes = search(oracle(10**6), 64, 6)
    assert found is None and [p.k for p in probes] == [64]
