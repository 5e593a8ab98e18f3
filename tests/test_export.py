"""The export stage (simattr.export): what an outside method reads, in simattr's index order, for an in-memory
dataset with the numpy MLP (digits) and one of 8-bit images with ResNet-9 (CIFAR-10 files); a bad input is one
line and leaves the export there as it was."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datafiles import make_cifar_root
from simattr import datasets, export, models, queries, trak
from simattr.errors import SimattrError


def inputs(tmp_path, data, recipe, n_checkpoints=2):
    q, ck = tmp_path / "queries.h5", tmp_path / "checkpoints.pt"
    queries.prepare_queries(data=data, n_test=3, sample_seed=0, flip_models=1, recipe=recipe, out_path=str(q))
    trak.trak_checkpoints(data=data, recipe=recipe, n_checkpoints=n_checkpoints, seed=0, out=str(ck),
                          progress=False)
    return str(q), str(ck)


def test_digits_export_in_index_order_with_loadable_checkpoints(tmp_path):
    data, recipe = datasets.Spec.of(), models.Recipe.of(hidden=8, steps=30)
    q, ck = inputs(tmp_path, data, recipe)
    out = tmp_path / "export"
    m = export.export_stage(data=data, recipe=recipe, queries=q, checkpoints=ck, lds_shards=[], embeddings=[],
                            out_dir=str(out))
    tr, te = datasets.load_split(data, "train"), datasets.load_split(data, "test")
    assert (m["n_train"], m["n_test"], m["lds"]) == (len(tr), len(te), None)
    assert np.array_equal(np.load(out / "train_labels.npy"), tr.labels)
    assert np.array_equal(torch.load(out / "test_images.pt").numpy(), te.images)      # (N, 1, 8, 8) in [0, 1]
    x_tr, x_te = models.prepare_inputs(recipe, tr.images, te.images)
    assert np.array_equal(np.load(out / "test_inputs.npy"), x_te) and m["input_shape"] == [64]
    assert not (out / "lds_masks.npy").exists()
    # the documented module with an exported state predicts what the recipe's own trained model predicts
    seed = m["checkpoints"][1]["seed"]
    net = models.torch_module(recipe, tuple(m["input_shape"]), m["n_classes"])
    net.load_state_dict(torch.load(out / m["checkpoints"][1]["file"], weights_only=True))
    with torch.no_grad():
        got = net(torch.from_numpy(x_te)).numpy()
    want = models.train_predict(x_tr, tr.labels, x_te, seeds=[seed], n_classes=10, recipe=recipe, logits=True)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # a second export replaces the first whole; nothing temporary is left beside it
    np.save(out / "stale.npy", np.zeros(1))
    export.export_stage(data=data, recipe=recipe, queries=q, checkpoints=ck, lds_shards=[], embeddings=[],
                        out_dir=str(out))
    assert not (out / "stale.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cifar_export_keeps_uint8_images_and_the_resnet9_inputs(tmp_path):
    root = make_cifar_root(tmp_path / "cifar", per_batch=8, n_test=20)
    data = datasets.Spec.of(name="cifar10", root=str(root))
    recipe = models.Recipe.of(name="resnet9", epochs=1, batch_size=16)
    q, ck = inputs(tmp_path, data, recipe, n_checkpoints=1)
    m = export.export_stage(data=data, recipe=recipe, queries=q, checkpoints=ck, lds_shards=[], embeddings=[],
                            out_dir=str(tmp_path / "export"))
    ex = tmp_path / "export"
    images = np.load(ex / "train_images.npy")
    assert images.dtype == np.uint8 and images.shape == (40, 3, 32, 32) and m["input_shape"] == [3, 32, 32]
    assert np.load(ex / "train_inputs.npy").dtype == np.float16
    assert json.loads((ex / "class_names.json").read_text())[0] == "airplane"
    net = models.torch_module(recipe, (3, 32, 32), 10)
    net.load_state_dict(torch.load(ex / "checkpoints" / "model-0.pt", weights_only=True))


def test_checkpoints_of_another_model_are_one_line_and_the_export_stays(tmp_path):
    data, recipe = datasets.Spec.of(), models.Recipe.of(hidden=8, steps=30)
    q, ck = inputs(tmp_path, data, recipe, n_checkpoints=1)
    out = tmp_path / "export"
    export.export_stage(data=data, recipe=recipe, queries=q, checkpoints=ck, lds_shards=[], embeddings=[],
                        out_dir=str(out))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SimattrError, match="checkpoints.pt: made for other data or another model"):
        export.export_stage(data=data, recipe=models.Recipe.of(hidden=16, steps=30), queries=q, checkpoints=ck,
                            lds_shards=[], embeddings=[], out_dir=str(out))
    with pytest.raises(SimattrError, match="queries.h5: made for another split"):
        export.export_stage(data=datasets.Spec.of(test_fraction=0.3), recipe=recipe, queries=q, checkpoints=ck,
                            lds_shards=[], embeddings=[], out_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
