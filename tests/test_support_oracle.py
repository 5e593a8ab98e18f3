"""Oracle tests of the counterfactual: the training sets the probes actually train on, the queries stage's
choices worked out by hand, and searches over a planted support whose answer is known.

`models.train_predict` is replaced by fakes throughout: every training row carries its identity in feature 0,
so a fake can tell exactly which rows (with which labels) it was asked to train on.
"""
from __future__ import annotations

import numpy as np
import pytest

from simattr import datasets, models, store
from simattr import queries as queries_stage
from simattr.errors import SimattrError
from simattr.support.answer import Settings
from simattr.support.bank import make_probe, modified_training_set
from simattr.support.stage import answer

N_TRAIN, N_CLASSES, LABEL, FLIP = 40, 3, 0, 2
RECIPE = models.Recipe.of(name="mlp", hidden=4, steps=1, lr=0.01)


def _toy():
    """40 distinct training rows (row i = [i, 1000 + i]), labels i % 3, a shuffled ranking."""
    ids = np.arange(N_TRAIN)
    X = np.stack([ids, 1000 + ids], axis=1).astype(np.float32)
    y = ids % N_CLASSES
    ranking = np.random.default_rng(7).permutation(N_TRAIN)
    return X, y, ranking


def _rows(X, y) -> dict[int, int]:
    """{row identity: its label} of one training set; every row at most once."""
    ids = X[:, 0].astype(int).tolist()
    assert len(ids) == len(set(ids)), "a training row appears twice"
    assert np.array_equal(X[:, 1], X[:, 0] + 1000), "a row's features were scrambled"
    return dict(zip(ids, np.asarray(y).tolist()))


def _expected(y, ranking, k, metric) -> dict[int, int]:
    top = set(ranking[:k].tolist())
    if metric == "removal":
        return {i: int(y[i]) for i in range(N_TRAIN) if i not in top}
    return {i: (FLIP if i in top else int(y[i])) for i in range(N_TRAIN)}


class Spy:
    """A train_predict that records every (X, y) it is given and answers LABEL with certainty."""

    def __init__(self):
        self.calls: list[dict[int, int]] = []

    def __call__(self, X, y, X_eval, *, seeds, n_classes, recipe, **_):
        assert X_eval.shape[0] == 1 and n_classes == N_CLASSES
        self.calls.append(_rows(X, y))
        p = np.zeros((len(seeds), 1, n_classes), np.float32)
        p[:, :, LABEL] = 1.0
        return p


KS = (1, 3, 10, 17)


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_modified_training_set_changes_exactly_the_rankings_top_k(metric):
    X, y, ranking = _toy()
    for k in (0,) + KS:
        top = ranking[:k]
        assert metric == "removal" or k == 0 or (y[top] != FLIP).any()     # else a no-op relabel would pass
        Xk, yk = modified_training_set(X, y, ranking, k, metric, FLIP if metric == "mislabel" else None)
        assert _rows(Xk, yk) == _expected(y, ranking, k, metric), (metric, k)
    assert np.array_equal(y, np.arange(N_TRAIN) % N_CLASSES)                  # the caller's labels untouched


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_each_probe_trains_on_the_full_set_with_exactly_the_top_k_changed(metric, monkeypatch):
    X, y, ranking = _toy()
    spy = Spy()
    monkeypatch.setattr(models, "train_predict", spy)
    probe = make_probe(X_train=X, y_train=y, x_query=X[0], label=LABEL, ranking=ranking, metric=metric,
                       flip_class=FLIP if metric == "mislabel" else None, n_classes=N_CLASSES,
                       recipe=RECIPE, seeds=2, threshold=0.5, early_stop=False, dataset="toy",
                       test_index=0)
    for k in KS:
        spy.calls.clear()
        p = probe(k)
        assert p.k == k and p.n_models == 2 and not p.flipped
        assert spy.calls and all(c == _expected(y, ranking, k, metric) for c in spy.calls), (metric, k)


# ----------------------------------------------------------------------------------------- planted support
PLANTED = 7          # the image flips once every one of the ranking's top 7 rows is removed / relabelled


def _planted_model(planted: set[int], label: int, flip: int):
    """A train_predict whose models get the image right unless every planted row is gone or carries `flip`:
    the true support is then the rank of the last planted row."""
    def fake(X, y, X_eval, *, seeds, n_classes, recipe, **_):
        rows = _rows(X, y)
        flipped = all(rows.get(i, flip) == flip for i in planted)
        p = np.full((len(seeds), len(X_eval), n_classes), 0.1 / (n_classes - 1), np.float32)
        p[..., flip if flipped else label] = 0.9
        return p
    return fake


SETTINGS = {"dataset": "toy", "encoder": "toy", "ranker": "toy", "k_max": 20, "threshold": 0.5, "seed_set": 0,
            "bisection_steps": 5, "seeds": 3, "early_stop": True, "monotone_checks": 3,
            "seeds_min": 3, "seeds_max": 5, "max_models": 60, "confidence": 0.9,
            "model": {"name": "mlp", "hidden": 4, "steps": 1, "lr": 0.01, "weight_decay": 0.0}}


def _answer_inputs(tmp_path, order):
    """queries.h5 for test image 5 (label LABEL, flip class FLIP) and a score file ranking `order` best first."""
    X, y, _ = _toy()
    store.write_arrays(tmp_path / "queries.h5", {
        "X_train": X, "y_train": y, "test_indices": np.array([5]), "X_query": X[5:6],
        "y_query": np.array([LABEL]), "flip_class": np.array([FLIP])}, {"n_classes": N_CLASSES})
    train = np.sort(order)
    scores = np.empty(len(train), np.float32)
    scores[np.searchsorted(train, order)] = 100.0 - np.arange(len(order))    # order[0] scores highest
    store.write_scores(tmp_path / "scores.h5", test_indices=np.array([5]), train_indices=train,
                       scores=scores[None], topk=order[None, :16], attrs={"encoder": "toy", "ranker": "toy"})
    return str(tmp_path / "queries.h5"), str(tmp_path / "scores.h5")


@pytest.mark.parametrize("engine", ["bisection", "adaptive"])
@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_an_answer_finds_a_planted_support_of_the_scored_ranking(metric, engine, tmp_path, monkeypatch):
    X, y, _ = _toy()
    order = np.random.default_rng(3).permutation(np.flatnonzero(y != FLIP))   # the ranker's best first
    monkeypatch.setattr(models, "train_predict", _planted_model(set(order[:PLANTED].tolist()), LABEL, FLIP))
    queries, scores = _answer_inputs(tmp_path, order)
    a = answer(queries_path=queries, scores_path=scores, out_path=str(tmp_path / "a" / "5.json"),
               test_index=5, metric=metric, settings=Settings.from_config({**SETTINGS, "engine": engine}))
    assert a["support"] == PLANTED and a["support_bisection"] == PLANTED
    assert a["violations"] == 0


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_a_support_beyond_k_max_is_censored(metric, tmp_path, monkeypatch):
    X, y, _ = _toy()
    order = np.random.default_rng(3).permutation(np.flatnonzero(y != FLIP))
    monkeypatch.setattr(models, "train_predict", _planted_model({int(order[20])}, LABEL, FLIP))   # rank 21
    queries, scores = _answer_inputs(tmp_path, order)
    a = answer(queries_path=queries, scores_path=scores, out_path=str(tmp_path / "a" / "5.json"),
               test_index=5, metric=metric, settings=Settings.from_config({**SETTINGS, "engine": "bisection"}))
    assert a["support"] is None and [p["k"] for p in a["probes"]] == [20]


# ----------------------------------------------------------------------------------------- queries stage
class FakeSplit:
    def __init__(self, images, labels):
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.class_names = np.array(["a", "b", "c"])


TEST_LABELS = [0, 1, 2, 0, 1, 2]
R = {0: [.6, .1, .3], 1: [.4, .6, 0.], 4: [.35, .5, .15], 5: [.1, .3, .6]}   # right models' probabilities
W = {1: (2, [1., 0., 0.]), 4: (0, [.6, .3, .1])}                              # (the wrong model, its probs)
# image 2: two of four models right (accuracy 0.5: not eligible); image 3: every model wrong
FULL_PROBS = np.zeros((4, 6, 3), np.float32)
for _i, _p in R.items():
    FULL_PROBS[:, _i] = _p
for _i, (_m, _p) in W.items():
    FULL_PROBS[_m, _i] = _p
FULL_PROBS[:, 2] = [[0., .2, .8], [0., .2, .8], [.7, .3, 0.], [.7, .3, 0.]]
FULL_PROBS[:, 3] = [0., .3, .7]


@pytest.fixture
def fake_queries_stage(monkeypatch):
    rng = np.random.default_rng(0)
    splits = {"train": FakeSplit(rng.normal(size=(9, 1, 2, 2)).astype(np.float32), np.arange(9) % 3),
              "test": FakeSplit(rng.normal(size=(6, 1, 2, 2)).astype(np.float32), TEST_LABELS)}
    calls = []

    def train_predict(X, y, X_eval, *, seeds, n_classes, recipe, **_):
        calls.append(seeds)
        assert X.shape == (9, 4) and np.array_equal(y, splits["train"].labels) and X_eval.shape == (6, 4)
        assert n_classes == 3 and len(seeds) == 4
        return FULL_PROBS.copy()

    monkeypatch.setattr(datasets, "load_split", lambda data, split, **_: splits[split])
    monkeypatch.setattr(models, "train_predict", train_predict)
    return splits, calls


def test_prepare_queries_picks_eligible_images_flip_classes_and_full_correct_as_worked_by_hand(
        fake_queries_stage, tmp_path):
    splits, calls = fake_queries_stage
    out = tmp_path / "queries.h5"
    attrs = queries_stage.prepare_queries(data=datasets.Spec.of(name="digits"), n_test=4, sample_seed=0, flip_models=4,
                                    recipe=RECIPE, out_path=str(out))
    assert len(calls) == 1
    arrays, stored = store.read_arrays(out, ("test_indices", "y_query", "flip_class", "full_correct",
                                             "full_accuracy", "mean_probs", "X_query", "X_train", "y_train"))
    assert arrays["test_indices"].tolist() == [0, 1, 4, 5]           # accuracy 1, .75, .75, 1 (> 0.5)
    assert arrays["y_query"].tolist() == [0, 1, 1, 2]
    # runner-up of the mean: 0 -> class 2; 4 -> class 0; 5 -> class 1; 1: the mean's runner-up is its own
    # label (mean [.55, .45, 0]), so its flip class is the mean's top class, 0
    assert arrays["flip_class"].tolist() == [2, 0, 0, 1]
    assert arrays["full_correct"].tolist() == [[1, 1, 0, 1], [1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]]
    assert np.allclose(arrays["full_accuracy"], [1, .75, .75, 1])
    assert np.allclose(arrays["mean_probs"][1], [.55, .45, 0]) and np.allclose(arrays["mean_probs"][0], R[0])
    tr = splits["train"].images.reshape(9, 4)
    mean, std = tr.mean(0), np.maximum(tr.std(0), 1e-3)
    assert np.allclose(arrays["X_train"], (tr - mean) / std, atol=1e-5)
    assert np.allclose(arrays["X_query"], (splits["test"].images.reshape(6, 4)[[0, 1, 4, 5]] - mean) / std,
                       atol=1e-5)
    assert arrays["y_train"].tolist() == splits["train"].labels.tolist()
    assert stored["n_eligible"] == attrs["n_eligible"] == 4 and stored["n_classes"] == 3
    assert stored["full_model_accuracy"] == pytest.approx(16 / 24)


def test_prepare_queries_refuses_more_images_than_are_eligible(fake_queries_stage, tmp_path):
    with pytest.raises(SimattrError, match="only 4 of 6"):
        queries_stage.prepare_queries(data=datasets.Spec.of(name="digits"), n_test=5, sample_seed=0, flip_models=4,
                                recipe=RECIPE, out_path=str(tmp_path / "queries.h5"))
    assert not (tmp_path / "queries.h5").exists()
