"""simattr.support.bank: the real models of one answer (trained, journaled, seeded)."""
import numpy as np
import pytest

from simattr import models
from simattr.errors import SimattrError
from simattr.support.bank import Journal, make_probe

from datafiles import toy_blobs


def test_k0_probe_reuses_the_full_data_models_and_trains_nothing(monkeypatch):
    X, y = toy_blobs()
    calls = []
    real = models.train_predict
    monkeypatch.setattr(models, "train_predict", lambda *a, **kw: calls.append(kw["seeds"]) or real(*a, **kw))
    kw = dict(X_train=X, y_train=y, x_query=X[0], label=0, ranking=np.arange(40), metric="removal", flip_class=None,
              n_classes=3, recipe=models.Recipe.of(hidden=8, steps=20, lr=0.05), threshold=0.5, dataset="toy",
              test_index=0)
    journal = Journal(None, "")
    p = make_probe(seeds=3, early_stop=True, full_correct=np.array([0, 0, 1, 1, 1], bool), journal=journal, **kw)(0)
    assert (p.flipped, p.n_models, p.reused) == (True, 2, 2) and calls == [] and not journal.models
    p = make_probe(seeds=5, early_stop=False, full_correct=np.array([1, 0, 1], bool), **kw)(0)
    assert (p.n_models, p.reused) == (5, 3) and len(calls) == 1 and len(calls[0]) == 2   # 2 seeds beyond them
    assert p.as_dict()["full_data_models"] == 3
    make_probe(seeds=3, early_stop=True, full_correct=np.ones(5, bool), **kw)(4)  # k > 0: trained
    assert len(calls) == 2


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_early_stopping_keeps_every_decision(metric):
    X, y = toy_blobs()
    q = X[0] + 0.1
    ranking = np.argsort(((X - q) ** 2).sum(1))
    ranking = ranking[y[ranking] == 0]
    kw = dict(X_train=X, y_train=y, x_query=q, label=0, ranking=ranking, metric=metric, flip_class=1,
              n_classes=3, recipe=models.Recipe.of(hidden=8, steps=40, lr=0.05), seeds=5, threshold=0.5,
              dataset="toy", test_index=0)
    slow = make_probe(early_stop=False, **kw)
    fast = make_probe(early_stop=True, **kw)
    for k in (1, 5, 10, 20, 30, 40):
        a, b = slow(k), fast(k)
        assert a.flipped == b.flipped
        assert a.n_models == 5 and 1 <= b.n_models <= 5


def test_threshold_of_one_is_refused():
    X, y = toy_blobs()
    with pytest.raises(SimattrError, match="threshold"):
        make_probe(X_train=X, y_train=y, x_query=X[0], label=0, ranking=np.arange(10), metric="removal",
                   flip_class=None, n_classes=3, recipe=models.Recipe.of(), seeds=3, threshold=1.0,
                   early_stop=True, dataset="toy", test_index=0)
