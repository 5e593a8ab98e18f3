"""The subset-model stage (datamodels, LDS): masks, margins, the journal that makes a shard resumable, and the
checks that keep shards of different settings apart."""
from __future__ import annotations

import json

import numpy as np
import pytest

from simattr import datasets, models, store, subsets
from simattr.errors import SimattrError

DIGITS = datasets.Spec.of(name="digits")
RECIPE = models.Recipe.of(name="mlp", hidden=16, steps=10, lr=0.05)


def _train(tmp_path, shard=0, **kw):
    args = dict(data=DIGITS, purpose="lds", alpha=0.5, n_models=5, shard_size=3, shard=shard, recipe=RECIPE,
                out=str(tmp_path / f"shard-{shard:05d}.h5"), progress=False)
    args.update(kw)
    return subsets.train_shard(**args), args["out"]


def test_a_shard_holds_its_models_masks_and_margins(tmp_path):
    attrs, out = _train(tmp_path, shard=1)
    arrays, a = store.read_arrays(out, ("model_ids", "seeds", "masks", "margins"))
    assert arrays["model_ids"].tolist() == [3, 4] and a["n_train"] == 1437 and a["n_test"] == 360
    masks = np.unpackbits(arrays["masks"], axis=1, count=1437, bitorder="little").astype(bool)
    assert (masks.sum(1) == round(0.5 * 1437)).all()
    # margin of model 3 = correct logit minus logsumexp of the others, from its own seed and mask
    tr, te = datasets.load_split(DIGITS, "train"), datasets.load_split(DIGITS, "test")
    X, Xt = models.prepare_inputs(RECIPE, tr.images, te.images)
    logits = models.train_predict(X[masks[0]], tr.labels[masks[0]], Xt, seeds=[int(arrays["seeds"][0])],
                                  n_classes=10, recipe=RECIPE, logits=True)[0]
    np.testing.assert_allclose(arrays["margins"][0], models.margins(logits, te.labels), rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "shard-00001.journal.jsonl").exists()        # done: the journal is gone


def test_a_killed_shard_resumes_from_its_journal_without_training_a_model_twice(tmp_path, monkeypatch):
    _, out = _train(tmp_path)
    ref = store.read_arrays(out, ("margins",))[0]["margins"]
    calls = []
    real = models.train_predict

    def dying(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(kw["seeds"])
        return real(*a, **kw)

    monkeypatch.setattr(models, "train_predict", dying)
    out2 = str(tmp_path / "again" / "shard-00000.h5")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, out=out2)
    journal = (tmp_path / "again" / "shard-00000.journal.jsonl")
    assert len(journal.read_text().splitlines()) == 2
    with journal.open("a") as f:
        f.write('{"identity": "')                         # a line cut by the kill
    calls.clear()
    monkeypatch.setattr(models, "train_predict", lambda *a, **kw: (calls.append(kw["seeds"]), real(*a, **kw))[1])
    _train(tmp_path, out=out2)
    assert len(calls) == 1                                # only the third model was left
    np.testing.assert_array_equal(store.read_arrays(out2, ("margins",))[0]["margins"], ref)


def test_a_journal_of_other_settings_is_ignored(tmp_path):
    out = tmp_path / "shard-00000.h5"
    out.with_suffix(".journal.jsonl").write_text(json.dumps({"identity": "other", "model_id": 0, "seed": 1,
                                                             "margins": [0.0] * 360}) + "\n")
    _, out = _train(tmp_path)
    assert store.read_arrays(out, ("margins",))[0]["margins"][0].std() > 0


def test_masks_depend_on_the_purpose_and_read_shards_checks_the_set(tmp_path):
    _train(tmp_path / "lds", shard=0)
    _train(tmp_path / "lds", shard=1)
    _train(tmp_path / "dm", shard=0, purpose="datamodels")
    lds = sorted(str(p) for p in (tmp_path / "lds").glob("*.h5"))
    masks, margins, attrs = subsets.read_shards(lds, "lds")
    assert masks.shape == (5, 1437) and margins.shape == (5, 360) and attrs["purpose"] == "lds"
    dm = store.read_arrays(tmp_path / "dm" / "shard-00000.h5", ("masks",))[0]["masks"]
    assert not np.array_equal(np.unpackbits(dm, axis=1, count=1437, bitorder="little")[:3], masks[:3])
    with pytest.raises(SimattrError, match="purpose 'datamodels', expected 'lds'"):
        subsets.read_shards(lds + [str(tmp_path / "dm" / "shard-00000.h5")], "lds")
    with pytest.raises(SimattrError, match="expected each of 0..M-1 once"):
        subsets.read_shards(lds[1:], "lds")
    _train(tmp_path / "other", shard=0, alpha=0.3)
    with pytest.raises(SimattrError, match="alpha=0.3 differs"):
        subsets.read_shards([lds[0], str(tmp_path / "other" / "shard-00000.h5")], "lds")


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(SimattrError, match="shard 2 does not exist"):
        _train(tmp_path, shard=2)
    with pytest.raises(SimattrError, match="alpha must be in"):
        _train(tmp_path, alpha=1.5)
