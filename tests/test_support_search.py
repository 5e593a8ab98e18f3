"""simattr.support.search: the searches on oracles and pure-Python models (no file, no training)."""
import math
import subprocess
import sys

import numpy as np
import pytest

from simattr import flipcurve
from simattr.errors import SimattrError
from simattr.support.search import (Bank, Probe, adaptive_search, bank_probe, bisect_support, check_k,
                                    models_needed, monotone_checks, released_reading, search)


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


# ------------------------------------------------------------------------------- a pure-Python model
class Coins:
    """A model in plain Python: model (k, seed index) gets the image right with probability accuracy(k), its coin
    seeded by (k, seed index); every call is recorded."""

    def __init__(self, accuracy):
        self.accuracy, self.calls = accuracy, []

    def __call__(self, k: int, indices: list[int]) -> list[bool]:
        self.calls.append((k, list(indices)))
        return [np.random.default_rng([k, i]).random() < self.accuracy(k) for i in indices]

    def trained(self) -> list[tuple[int, int]]:
        return [(k, i) for k, idx in self.calls for i in idx]


def sharp(k):          # every model right below 13, none from 13 on: the support is 13
    return 1.0 if k < 13 else 0.0


def test_both_engines_find_the_support_of_a_pure_python_model_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = {i: True for i in range(5)}               # the full-data models: right at k = 0, for free
    coins = Coins(sharp)
    bank = Bank(coins, full)
    probe = bank_probe(bank, seeds=3, threshold=0.5, early_stop=True)
    found, probes = search(probe, 40, 6)
    checks = monotone_checks(probe, found, 40, probes, 2)
    assert found == 13 and released_reading(probes) == 13 and all(c.flipped for c in checks)
    assert probes[1].k == 0 and probes[1].reused == 2 and all(k != 0 for k, _ in coins.calls)   # k = 0: free
    assert len(coins.trained()) == len(set(coins.trained())) == bank.trainings              # each model once

    coins = Coins(sharp)
    bank = Bank(coins, full)
    probes = adaptive_search(bank, 40, threshold=0.5, seeds_min=3, seeds_max=9, max_models=40, confidence=0.9)
    assert [p.k for p in probes][:2] == [40, 0] and bank.trainings <= 40
    assert flipcurve.estimate(bank.points(), 0.5, n_draws=0).support == 13
    assert len(coins.trained()) == len(set(coins.trained())) == bank.trainings
    assert not list(tmp_path.iterdir())                                                     # no file written


def test_a_noisy_pure_python_model_gets_more_seeds_where_it_is_uncertain():
    bank = Bank(Coins(lambda k: 0.5 if k >= 20 else 1.0))
    probes = adaptive_search(bank, 40, threshold=0.5, seeds_min=3, seeds_max=9, max_models=60, confidence=0.9)
    assert max(p.n_models for p in probes if p.k >= 20) > 3 and all(p.n_models == 3 for p in probes if p.k < 20)
    assert 0 not in bank.outcomes                      # no full-data models: k = 0 waits until it matters


def test_early_stopping_keeps_every_decision_of_a_pure_python_model():
    for k_true in (1, 7, 30):
        for draw in range(5):
            def accuracy(k):
                return 0.9 if k < k_true else 0.2 + 0.02 * draw
            slow = bank_probe(Bank(Coins(accuracy)), seeds=5, threshold=0.5, early_stop=False)
            fast = bank_probe(Bank(Coins(accuracy)), seeds=5, threshold=0.5, early_stop=True)
            for k in (0, 1, 5, 10, 20, 30, 40):
                a, b = slow(k), fast(k)
                assert a.flipped == b.flipped and a.n_models == 5 and 1 <= b.n_models <= 5


def test_a_threshold_of_one_is_refused_by_the_probe():
    with pytest.raises(SimattrError, match="threshold"):
        bank_probe(Bank(Coins(sharp)), seeds=3, threshold=1.0, early_stop=True)


def test_the_search_module_loads_neither_the_models_the_stage_nor_submitit():
    code = ("import sys, simattr.support.search; "
            "print(sorted(m for m in ('simattr.models', 'simattr.support.bank', 'simattr.support.stage', "
            "'simattr.launch', 'simattr.settings', 'submitit', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
