import numpy as np
import pytest
from sklearn.svm import LinearSVC

from simattr import config, rankers
from simattr.errors import SimattrError

DEFAULTS = config.defaults()


def score(name, q, c, **changed):
    """rankers.score with the schema's settings of ranker `name`, `changed` ones replaced."""
    return rankers.score(name, q, c, **{**config.ranker_settings(DEFAULTS, name), **changed})


def test_esvm_equals_sklearn_decision_function_with_the_method_parameters():
    rng = np.random.default_rng(0)
    neg = rng.normal(size=(60, 16)).astype(np.float32)
    queries = rng.normal(size=(4, 16)).astype(np.float32)
    got = score("esvm", queries, neg, C=0.1)
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
    top = rankers.topk(score("esvm", q[None], neg), 5)[0]
    assert (cluster[top] == 2).all()


def test_knn_rankers():
    c = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, -2.0]])
    q = np.array([[0.9, 0.1]])
    assert rankers.topk(score("knn_l2", q, c), 4)[0].tolist() == [1, 0, 2, 3]
    cos = score("knn_cos", q, c)
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


def test_a_misspelled_or_missing_ranker_setting_is_one_line_naming_it():
    q, c = np.zeros((1, 2), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(SimattrError, match="ranker esvm's settings: has unknown keys c$"):
        rankers.score("esvm", q, c, c=0.1, C=0.1, chunk_size=8, device="cpu")
    with pytest.raises(SimattrError, match="ranker knn_l2's settings: lacks device"):
        rankers.score("knn_l2", q, c, chunk_size=8)


def test_every_list_of_rankers_comes_from_the_one_table():
    specs = config.RANKER_SPECS
    # rankers.score serves every feature ranker but the one that scores the whole train split (esvm_signed)
    assert set(rankers.RANKERS) == {r for r, s in specs.items() if s.family == "feature" and s.reads != "all"}
    assert {r: s.reads for r, s in specs.items() if s.family == "feature"} == {
        "esvm": "class", "esvm_reference": "class", "esvm_signed": "all", "knn_l2": "class", "knn_cos": "class",
        "random": "none"}
    assert tuple(r for r, s in specs.items() if s.chunked) == ("knn_l2", "knn_cos")
    assert config.DEVICE_RANKERS == ("esvm", "esvm_signed", "knn_l2", "knn_cos")
    assert config.SIGNED_RANKERS == ("esvm_signed", "trak", "datamodels")
    assert config.EXPLAIN_RANKERS == ("esvm", "esvm_reference", "knn_l2", "knn_cos")
    for name, spec in specs.items():            # every keyword is a config key the schema has
        for section, key, _ in spec.keys:
            assert key in DEFAULTS[section], (name, section, key)


def test_runner_up_class_is_the_most_similar_other_class():
    rng = np.random.default_rng(2)
    centers = np.array([[5.0, 0, 0], [4.0, 3.0, 0], [-5.0, 0, 0]])
    labels = np.repeat([0, 1, 2], 20)
    feats = centers[labels] + rng.normal(scale=0.3, size=(60, 3))
    q = np.array([[5.0, 0.5, 0.0], [4.0, -2.0, 0.0]])
    assert rankers.runner_up_classes(q, feats, labels, 0, neighbours=5, chunk_size=128, device=None).tolist() == [1, 1]


def test_esvm_signed_scores_own_class_positive_runner_up_negative_rest_zero():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8)) * 3
    labels = np.repeat(np.arange(4), 30)
    feats = (centers[labels] + rng.normal(size=(120, 8))).astype(np.float32)
    q = (centers[[2, 2, 2]] + rng.normal(size=(3, 8))).astype(np.float32)
    full, r = rankers.esvm_signed(q, feats, labels, 2, C=0.1, neighbours=10, chunk_size=128, device=None)
    assert full.shape == (3, 120) and (r != 2).all()
    for i in range(3):
        own, rival = labels == 2, labels == r[i]
        assert (full[i, own] >= 0).all() and (full[i, rival] <= 0).all() and (full[i, ~own & ~rival] == 0).all()
        # the values are one ESVM of the query against both classes, shifted by their minimum
        cand = np.flatnonzero(own | rival)
        s = score("esvm", q[i:i + 1], feats[cand], C=0.1)[0]
        s = s - s.min()
        np.testing.assert_allclose(np.abs(full[i, cand]), s, rtol=1e-4, atol=1e-4)
        assert np.abs(full[i, cand]).min() == pytest.approx(0.0, abs=1e-6)     # the least like q scores 0


@pytest.mark.parametrize("name", ["esvm", "knn_l2", "knn_cos"])
def test_the_device_is_accels_choice_unless_named(name, monkeypatch):
    """device auto / None: accel.default_device() decides (here it refuses a bad SIMATTR_DEVICE); a named device
    is taken as it is."""
    q, c = np.ones((1, 3), np.float32), np.eye(3, dtype=np.float32)
    want = score(name, q, c, device="cpu")
    monkeypatch.setenv("SIMATTR_DEVICE", "tpu")
    for device in ("auto", None):
        with pytest.raises(SimattrError, match="SIMATTR_DEVICE='tpu'"):
            score(name, q, c, device=device)
    np.testing.assert_array_equal(score(name, q, c, device="cpu"), want)
