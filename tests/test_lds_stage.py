"""LDS of a method from its score files and the LDS subset shards (simattr.lds.lds_stage): the weights a
score file gives (attribution_weights) and the Spearman correlation, checked against hand-computed numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from simattr import lds, store


def _score_file(path, *, test, train, scores, full=None):
    extra = {"full_scores": np.asarray(full, np.float32)} if full is not None else {}
    store.write_scores(path, test_indices=np.array(test), train_indices=np.array(train),
                       scores=np.asarray(scores, np.float32), topk=np.zeros((len(test), 1), np.int64),
                       attrs={"dataset": "toy", "encoder": "e", "ranker": "r", "class": 0, "n_train": 4}, extra=extra)
    return str(path)


def _lds_shard(path, masks, margins):
    masks = np.asarray(masks, bool)
    store.write_arrays(path, {"model_ids": np.arange(len(masks)), "masks": np.packbits(masks, axis=1, bitorder="little"),
                              "margins": np.asarray(margins, np.float32)},
                       {"purpose": "lds", "dataset": "toy", "alpha": 0.5, "n_train": masks.shape[1],
                        "n_test": np.asarray(margins).shape[1], "recipe": "{}", "shard_size": len(masks)})
    return str(path)


def test_weights_of_a_similarity_ranker_are_shifted_candidate_scores_and_zero_elsewhere(tmp_path):
    sc = store.read_scores(_score_file(tmp_path / "a.h5", test=[0], train=[1, 3], scores=[[-2.0, -5.0]]))
    np.testing.assert_array_equal(lds.attribution_weights(sc), [[0.0, 3.0, 0.0, 0.0]])
    sc = store.read_scores(_score_file(tmp_path / "b.h5", test=[0], train=[1, 3], scores=[[1, 2]],
                                       full=[[0.5, 1.0, -2.0, 2.0]]), extras=True)
    np.testing.assert_array_equal(lds.attribution_weights(sc), [[0.5, 1.0, -2.0, 2.0]])   # signed, as given


def test_lds_equals_the_hand_computed_spearman(tmp_path):
    # 4 training images, 5 LDS models, 2 test images (test image 1 is scored by this method's file)
    masks = [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]]
    margins = [[0.0, 1.0], [0.0, 4.0], [0.0, 2.0], [0.0, 3.0], [0.0, 5.0]]   # column 1: test image 1
    shard = _lds_shard(tmp_path / "shard-00000.h5", masks, margins)
    # full weights (1, 2, -1, 0): predicted margins 3, 1, 0, -1, 2 -> ranks 5, 3, 2, 1, 4
    # actual 1, 4, 2, 3, 5 -> ranks 1, 4, 2, 3, 5; d = 4, -1, 0, -2, -1; sum d^2 = 22
    # Spearman = 1 - 6 * 22 / (5 * 24) = -0.1
    f = _score_file(tmp_path / "class-0.h5", test=[1], train=[0, 1], scores=[[1, 2]], full=[[1.0, 2.0, -1.0, 0.0]])
    out = tmp_path / "lds.json"
    r = lds.lds_stage(score_files=[f], subset_shards=[shard], n_boot=50, seed=0, out=str(out))
    assert r["per_test"] == [{"test_index": 1, "spearman": pytest.approx(-0.1)}]
    assert r["mean"] == pytest.approx(-0.1) and r["n_models"] == 5 and r["n_undefined"] == 0
    assert json.loads(out.read_text())["mean"] == pytest.approx(-0.1)


def test_lds_refuses_score_files_of_another_training_set_size(tmp_path):
    shard = _lds_shard(tmp_path / "shard-00000.h5", [[1, 0, 1]] * 3, [[0.0], [1.0], [2.0]])
    f = _score_file(tmp_path / "class-0.h5", test=[0], train=[0, 1], scores=[[1, 2]])
    with pytest.raises(Exception, match="training images, the LDS models 3"):
        lds.lds_stage(score_files=[f], subset_shards=[shard], n_boot=10, seed=0, out=str(tmp_path / "x.json"))
