"""The batched exemplar-SVM solver against scikit-learn's per-query LinearSVC (the released method)."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from simattr import datasets, encoders, store
from simattr.errors import SimattrError
from simattr import config
from simattr import esvm
from simattr.synthetic import clustered_features

SVM = config.defaults()["esvm"]       # the schema's C, chunk_size, tol and max_iter


def exemplar_svm_scores(q, neg, C=SVM["C"], **kw):
    return esvm.exemplar_svm_scores(q, neg, C, **{"chunk_size": SVM["chunk_size"], **kw})


def esvm_reference(q, neg):
    return esvm.esvm_reference(q, neg, SVM["C"], tol=SVM["tol"], max_iter=SVM["max_iter"])


def agreement(got, ref, k=100):
    k = min(k, got.shape[1])
    overlap = [len(set(np.argsort(-g)[:k]) & set(np.argsort(-r)[:k])) / k for g, r in zip(got, ref)]
    rho = [spearmanr(g, r)[0] for g, r in zip(got, ref)]
    return min(overlap), min(rho)


@pytest.mark.parametrize("n, d, m", [(5000, 128, 6), (1300, 2048, 3)], ids=["cifar-scale", "imagenet-scale"])
def test_agrees_with_sklearn_on_clustered_features_at_both_scales(n, d, m):
    neg, q = clustered_features(n, d, m, seed=7)
    got, info = exemplar_svm_scores(q, neg, return_info=True)
    assert info.unconverged == 0
    overlap, rho = agreement(got, esvm_reference(q, neg))
    assert overlap >= 0.99 and rho >= 0.999, (overlap, rho)


def test_agrees_with_sklearn_on_digits_features():
    tr = datasets.load_split("digits", "train", test_fraction=0.2, seed=0)
    te = datasets.load_split("digits", "test", test_fraction=0.2, seed=0)
    enc = encoders.Pixels.fit(tr.images, tr.labels, {}, seed=0, progress=False)
    ftr, fte = enc.encode(tr.images), enc.encode(te.images)
    for cls in (0, 3, 8):
        neg, q = ftr[tr.labels == cls], fte[te.labels == cls][:8]
        ref = esvm_reference(q, neg)
        got = exemplar_svm_scores(q, neg)
        np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max())
        overlap, rho = agreement(got, ref)
        assert overlap >= 0.99 and rho >= 0.999


def test_wide_features_use_the_dual_and_narrow_the_primal_with_the_same_answer(monkeypatch):
    import simattr.esvm as E

    neg, q = clustered_features(400, 64, 5, seed=3)
    a, ia = exemplar_svm_scores(q, neg, return_info=True, dtype=torch.float64)
    monkeypatch.setattr(E, "PRIMAL_MAX_DIM", 8)
    b, ib = exemplar_svm_scores(q, neg, return_info=True, dtype=torch.float64)
    monkeypatch.setattr(E, "GRAM_MAX_ENTRIES", 0)            # dual without the Gram matrix
    c = exemplar_svm_scores(q, neg, dtype=torch.float64)
    assert (ia.backend, ib.backend) == ("primal", "dual")
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_chunks_do_not_change_the_answer_and_torch_in_gives_torch_out():
    neg, q = clustered_features(800, 32, 23, seed=4)
    whole = exemplar_svm_scores(q, neg, chunk_size=64)
    parts = exemplar_svm_scores(q, neg, chunk_size=5)
    np.testing.assert_allclose(whole, parts, atol=1e-4)
    t = exemplar_svm_scores(torch.as_tensor(q), torch.as_tensor(neg))
    assert isinstance(t, torch.Tensor) and t.shape == (23, 800)
    assert isinstance(whole, np.ndarray) and whole.dtype == np.float32


def reference_close(q, neg, atol=1e-3):
    got = exemplar_svm_scores(q, neg, dtype=torch.float64)
    ref = esvm_reference(q, neg)
    np.testing.assert_allclose(got, ref, atol=atol * max(1.0, np.abs(ref).max()))
    return got


def test_a_class_with_one_training_image():
    rng = np.random.default_rng(0)
    got = reference_close(rng.normal(size=(3, 10)), rng.normal(size=(1, 10)))
    assert got.shape == (3, 1)


def test_duplicated_negatives_score_equal():
    neg, q = clustered_features(200, 16, 4, seed=5)
    neg = np.vstack([neg, neg[:50]])
    got = reference_close(q, neg)
    np.testing.assert_allclose(got[:, :50], got[:, 200:], atol=1e-6)


def test_a_query_identical_to_a_negative_ranks_it_first():
    neg, q = clustered_features(300, 16, 3, seed=6)
    q[1] = neg[17]
    got = reference_close(q, neg)
    assert np.argmax(got[1]) == 17


def test_zero_variance_features():
    neg, q = clustered_features(300, 16, 4, seed=8)
    neg[:, 3] = 2.5
    q[:, 3] = 2.5
    neg[:, 9] = 0.0
    q[:, 9] = 0.0
    reference_close(q, neg)
    const = exemplar_svm_scores(q, np.ones((20, 16), np.float32))      # every negative the same point
    assert np.isfinite(const).all() and np.ptp(const, axis=1).max() < 1e-5


def test_float16_features_are_computed_in_float32():
    neg, q = clustered_features(500, 32, 4, seed=9)
    neg16, q16 = neg.astype(np.float16), q.astype(np.float16)
    got = exemplar_svm_scores(q16, neg16)
    ref = esvm_reference(q16.astype(np.float32), neg16.astype(np.float32))
    overlap, rho = agreement(got, ref)
    assert got.dtype == np.float32 and overlap >= 0.99 and rho >= 0.999


def test_nan_or_inf_features_are_a_one_line_error():
    neg, q = clustered_features(50, 8, 2, seed=1)
    neg[7, 2] = np.nan
    with pytest.raises(SimattrError, match=r"negatives\): features hold NaN or inf \(first at row 7, column 2\)"):
        exemplar_svm_scores(q, neg)
    with pytest.raises(SimattrError, match="queries have 8 features but negatives 5"):
        exemplar_svm_scores(q, np.nan_to_num(neg)[:, :5])


def test_a_shard_with_nan_features_is_named_when_read(tmp_path):
    import h5py

    feats = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    store.write_embeddings(tmp_path, feats, np.zeros(30, np.int64), shard_size=10, dataset="digits",
                           split="train", encoder="pixels", config_hash="h")
    with h5py.File(tmp_path / "shard-00002.h5", "r+") as f:      # damaged after writing (the writer refuses NaN)
        f["features"][1, 1] = np.inf
    with pytest.raises(SimattrError, match=r"shard-00002\.h5: features contain NaN or inf"):
        store.read_embeddings(tmp_path / "index.json")


@pytest.mark.cuda
def test_cuda_scores_agree_with_the_cpu():
    neg, q = clustered_features(1300, 512, 8, seed=3)
    cpu = exemplar_svm_scores(q, neg, 0.1, device="cpu")
    cuda = exemplar_svm_scores(q, neg, 0.1, device="cuda")
    assert isinstance(cuda, np.ndarray) and cuda.shape == cpu.shape
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max())
