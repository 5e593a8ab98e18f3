import numpy as np
import pytest
from sklearn.svm import LinearSVC

from simattr import rankers
from simattr.errors import SimattrError


def test_esvm_equals_sklearn_decision_function_with_the_method_parameters():
    rng = np.random.default_rng(0)
    neg = rng.normal(size=(60, 16)).astype(np.float32)
    queries = rng.normal(size=(4, 16)).astype(np.float32)
    got = rankers.score("esvm", queries, neg, C=0.1, tol=1e-6, max_iter=10000)
    for i, q in enumerate(queries):
        X = np.vstack([q[None], neg])
        y = np.r_[1, np.zeros(len(neg), int)]
        svm = LinearSVC(C=0.1, class_weight="balanced", loss="squared_hinge", tol=1e-6, max_iter=10000).fit(X, y)
        np.testing.assert_allclose(got[i], svm.decision_function(neg), rtol=1e-5, atol=1e-5)


def test_esvm_ranks_the_query_cluster_first():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 4
    cluster = np.repeat(np.arange(4), 25)
    neg = centers[cluster] + rng.normal(size=(100, 8))
    q = centers[2] + rng.normal(size=8)
    top = rankers.topk(rankers.score("esvm", q[None], neg), 5)[0]
    assert (cluster[top] == 2).all()


def test_knn_rankers():
    c = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, -2.0]])
    q = np.array([[0.9, 0.1]])
    assert rankers.topk(rankers.score("knn_l2", q, c), 4)[0].tolist() == [1, 0, 2, 3]
    cos = rankers.score("knn_cos", q, c)
    assert cos[0, 1] == pytest.approx(cos[0, 2]) and cos[0, 1] > cos[0, 3]


def test_random_is_seeded_per_query():
    c = np.zeros((50, 3))
    a = rankers.score("random", np.zeros((2, 3)), c, query_seeds=np.array([5, 6]))
    b = rankers.score("random", np.zeros((1, 3)), c, query_seeds=np.array([6]))
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])


def test_unknown_ranker_lists_valid_names():
    with pytest.raises(SimattrError, match="esvm, esvm_reference, knn_l2, knn_cos, random"):
        rankers.score("trak", np.zeros((1, 2)), np.zeros((3, 2)))


def test_runner_up_class_is_the_most_similar_other_class():
    rng = np.random.default_rng(2)
    centers = np.array([[5.0, 0, 0], [4.0, 3.0, 0], [-5.0, 0, 0]])
    labels = np.repeat([0, 1, 2], 20)
    feats = centers[labels] + rng.normal(scale=0.3, size=(60, 3))
    q = np.array([[5.0, 0.5, 0.0], [4.0, -2.0, 0.0]])
    assert rankers.runner_up_classes(q, feats, labels, 0, neighbours=5).tolist() == [1, 1]


def test_esvm_signed_scores_own_class_positive_runner_up_negative_rest_zero():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8)) * 3
    labels = np.repeat(np.arange(4), 30)
    feats = (centers[labels] + rng.normal(size=(120, 8))).astype(np.float32)
    q = (centers[[2, 2, 2]] + rng.normal(size=(3, 8))).astype(np.float32)
    full, r = rankers.esvm_signed(q, feats, labels, 2, C=0.1)
    assert full.shape == (3, 120) and (r != 2).all()
    for i in range(3):
        own, rival = labels == 2, labels == r[i]
        assert (full[i, own] >= 0).all() and (full[i, rival] <= 0).all() and (full[i, ~own & ~rival] == 0).all()
        # the values are one ESVM of the query against both classes, shifted by their minimum
        cand = np.flatnonzero(own | rival)
        s = rankers.score("esvm", q[i:i + 1], feats[cand], C=0.1)[0]
        s = s - s.min()
        np.testing.assert_allclose(np.abs(full[i, cand]), s, rtol=1e-4, atol=1e-4)
        assert np.abs(full[i, cand]).min() == pytest.approx(0.0, abs=1e-6)     # the least like q scores 0


@pytest.mark.parametrize("name", ["esvm", "knn_l2", "knn_cos"])
def test_the_device_is_accels_choice_unless_named(name, monkeypatch):
    """device auto / None: accel.default_device() decides (here it refuses a bad SIMATTR_DEVICE); a named device
    is taken as it is."""
    q, c = np.ones((1, 3), np.float32), np.eye(3, dtype=np.float32)
    want = rankers.score(name, q, c, device="cpu")
    monkeypatch.setenv("SIMATTR_DEVICE", "tpu")
    for device in ("auto", None):
        with pytest.raises(SimattrError, match="SIMATTR_DEVICE='tpu'"):
            rankers.score(name, q, c, device=device)
    np.testing.assert_array_equal(rankers.score(name, q, c, device="cpu"), want)
