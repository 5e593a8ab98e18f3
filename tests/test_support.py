import math

import numpy as np
import pytest

from simattr import models, support
from simattr.support import Probe, bisect_support, models_needed


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


def _toy():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 5)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centers[y] + rng.normal(size=(120, 5))).astype(np.float32)
    return X, y


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_early_stopping_keeps_every_decision(metric):
    X, y = _toy()
    q = X[0] + 0.1
    ranking = np.argsort(((X - q) ** 2).sum(1))
    ranking = ranking[y[ranking] == 0]
    kw = dict(X_train=X, y_train=y, x_query=q, label=0, ranking=ranking, metric=metric, flip_class=1,
              n_classes=3, recipe=models.Recipe(hidden=8, steps=40, lr=0.05), seeds=5, threshold=0.5,
              dataset="toy", test_index=0)
    slow = support.make_probe(early_stop=False, **kw)
    fast = support.make_probe(early_stop=True, **kw)
    for k in (1, 5, 10, 20, 30, 40):
        a, b = slow(k), fast(k)
        assert a.flipped == b.flipped
        assert a.n_models == 5 and 1 <= b.n_models <= 5
