import numpy as np
import pytest

from simattr import datasets, models
from simattr.errors import SimattrError


def test_digits_mlp_learns_and_each_seed_is_independent_of_its_batch():
    tr = datasets.load_split("digits", "train", test_fraction=0.2, seed=0)
    te = datasets.load_split("digits", "test", test_fraction=0.2, seed=0)
    Xtr, Xte = models.standardise(tr.images, te.images)
    r = models.Recipe()
    p = models.train_predict(Xtr, tr.labels, Xte, seeds=[11, 12, 13], n_classes=10, recipe=r)
    assert p.shape == (3, len(te.labels), 10)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p.argmax(-1) == te.labels).mean() > 0.93
    alone = models.train_predict(Xtr, tr.labels, Xte, seeds=[12], n_classes=10, recipe=r)
    np.testing.assert_array_equal(alone[0], p[1])


def test_digits_split_is_stratified_and_seeded():
    a = datasets.load_split("digits", "test", test_fraction=0.2, seed=0)
    b = datasets.load_split("digits", "test", test_fraction=0.2, seed=0)
    tr = datasets.load_split("digits", "train", test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(a.source_index, b.source_index)
    assert len(a.labels) + len(tr.labels) == 1797
    assert not set(a.source_index) & set(tr.source_index)
    counts = np.bincount(a.labels, minlength=10) / len(a.labels)
    assert np.all(np.abs(counts - 0.1) < 0.02)
    assert a.images.shape[1:] == (1, 8, 8) and a.images.max() <= 1.0


def test_unknown_names_are_clear_errors():
    with pytest.raises(SimattrError, match="valid: mlp"):
        models.Recipe(name="resnet")
    with pytest.raises(SimattrError, match="valid: digits"):
        datasets.load_split("cifar", "train", test_fraction=0.2, seed=0)
