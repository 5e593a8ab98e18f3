"""Datasets: digits, CIFAR-10 from a local root, ImageFolder trees; and every bad input with its message."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from datafiles import CIFAR_CLASSES, cifar_images, make_cifar_root, make_image_folder

from simattr import datasets, images
from simattr.datasets import Spec, load_split, n_classes
from simattr.errors import SimattrError


def test_digits_split_is_stratified_and_seeded():
    tr = load_split(Spec.of(name="digits"), "train")
    te = load_split("digits", "test", test_fraction=0.2, seed=0)
    assert len(tr) + len(te) == 1797 and abs(len(te) - 0.2 * 1797) < 2
    assert not set(tr.source_index) & set(te.source_index)
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == np.float32
    assert np.array_equal(load_split(Spec.of(name="digits", split_seed=1), "test").labels.shape, te.labels.shape)
    assert not np.array_equal(load_split(Spec.of(name="digits", split_seed=1), "test").source_index, te.source_index)
    assert np.array_equal(te[3], te.images[3])
    assert n_classes("digits") == 10


def test_cifar_root_loads_through_torchvision(tmp_path):
    root = make_cifar_root(tmp_path / "c", per_batch=12, n_test=20)
    spec = Spec.of(name="cifar10", root=str(root))
    tr, te = load_split(spec, "train"), load_split(spec, "test")
    assert len(tr) == 60 and len(te) == 20
    assert tr.class_names == tuple(CIFAR_CLASSES) and n_classes(spec) == 10
    raw, labels = cifar_images(12, 0 + 1)                      # data_batch_1 comes first
    assert tr.labels[:12].tolist() == labels
    img = tr.load([0])[0]
    assert img.shape == (3, 32, 32) and img.dtype == np.float32
    np.testing.assert_allclose(img, raw[0].reshape(3, 32, 32) / 255.0, atol=1e-6)
    assert spec.identity() == {"name": "cifar10", "root": str(root)}


def test_cifar_missing_root_says_what_to_put_where(tmp_path):
    with pytest.raises(SimattrError, match=r"cifar-10-batches-py.*cifar-10-python\.tar\.gz.*missing: data_batch_1"):
        load_split(Spec.of(name="cifar10", root=str(tmp_path / "nowhere")), "train")
    root = make_cifar_root(tmp_path / "c")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(SimattrError, match="missing: test_batch$"):
        load_split(Spec.of(name="cifar10", root=str(root)), "train")
    with pytest.raises(SimattrError, match="needs dataset.root"):
        Spec.of(name="cifar10")


def test_cifar_corrupt_batch_is_named(tmp_path):
    root = make_cifar_root(tmp_path / "c")
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(SimattrError, match=r"data_batch_3: not a CIFAR-10 batch file"):
        load_split(Spec.of(name="cifar10", root=str(root)), "train")
    with open(bad, "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, f)
    with pytest.raises(SimattrError, match=r"data_batch_3: not a CIFAR-10 batch file"):
        load_split(Spec.of(name="cifar10", root=str(root)), "train")
    assert len(load_split(Spec.of(name="cifar10", root=str(root)), "test")) == 30     # the test split does not read it


def test_image_folder_lists_sorted_and_decodes(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class={"cat": 6, "dog": 4, "eel": 5})
    spec = Spec.of(name="imagefolder", root=str(root), image_size=12)
    tr, te = load_split(spec, "train"), load_split(spec, "test")
    assert tr.class_names == ("cat", "dog", "eel") and n_classes(spec) == 3
    assert len(tr) == 15 and len(te) == 9
    assert tr.labels.tolist() == [0] * 6 + [1] * 4 + [2] * 5
    assert tr.sources[0] == "train/cat/000.png" and te.sources[-1] == "val/eel/002.png"
    x = tr.images
    assert x.shape == (15, 3, 12, 12) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(tr.load([4, 3]), x[[4, 3]])          # grayscale and RGBA files become RGB
    means = [x[tr.labels == c].mean(axis=(0, 2, 3)) for c in range(3)]
    assert np.abs(means[0] - means[1]).max() > 0.1             # the classes' colours survive decoding
    assert Spec.of(name="imagefolder", root=str(root)).image_size is None
    assert load_split(Spec.of(name="imagefolder", root=str(root)), "test").load([0]).shape == (1, 3, 224, 224)


def test_an_image_from_outside_a_folder_dataset_is_read_as_the_dataset_reads_its_own(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class={"cat": 3, "dog": 2, "eel": 2})
    for size in (12, None):                                     # None: the folder datasets' default side
        spec = Spec.of(name="imagefolder", root=str(root), image_size=size)
        tr = load_split(spec, "train")
        for i in (0, 4):
            got = datasets.read_image(spec, root / tr.sources[i])
            assert got.dtype == np.uint8 and np.array_equal(got, tr.load_raw([i])[0]), (size, i)


def test_image_folder_test_folder_and_missing_classes(tmp_path):
    root = make_image_folder(tmp_path / "f")
    (root / "val").rename(root / "test")
    shutil.rmtree(root / "test" / "dog")
    te = load_split(Spec.of(name="imagefolder", root=str(root), image_size=8), "test")
    assert sorted(set(te.labels.tolist())) == [0, 2]           # labels follow the train folders' order


@pytest.mark.parametrize("breakage, message", [
    (lambda r: shutil.rmtree(r / "train"), r"no train/ folder"),
    (lambda r: shutil.rmtree(r / "val"), r"no val/ folder"),
    (lambda r: (r / "train" / "stray.png").write_bytes(b"x"), r"train/stray\.png: a file directly in train/"),
    (lambda r: (r / "val" / "fox").mkdir(), r"val/fox: class folder not in"),
    (lambda r: (r / "val" / "dog" / "notes.txt").write_text("hi"), r"val/dog/notes\.txt: not an image file"),
    (lambda r: [p.unlink() for p in (r / "val").rglob("*.png")], r"val: no images in any class folder"),
])
def test_image_folder_wrong_layout(tmp_path, breakage, message):
    root = make_image_folder(tmp_path / "f")
    breakage(root)
    with pytest.raises(SimattrError, match=message):
        load_split(Spec.of(name="imagefolder", root=str(root), image_size=8), "test")
    with pytest.raises(SimattrError, match="not a folder"):
        load_split(Spec.of(name="imagenet", root=str(tmp_path / "absent")), "train")


def test_corrupt_image_error_or_skip(tmp_path):
    root = make_image_folder(tmp_path / "f")
    bad = root / "train" / "dog" / "002.png"
    bad.write_bytes(bad.read_bytes()[:40])                     # a truncated PNG
    (root / "train" / "eel" / "readme.md").write_text("x")
    strict = Spec.of(name="imagefolder", root=str(root), image_size=8)
    with pytest.raises(SimattrError, match=r"eel/readme\.md: not an image file.*bad_images: skip"):
        load_split(strict, "train")
    (root / "train" / "eel" / "readme.md").unlink()
    datasets._folder_listing.cache_clear()
    tr = load_split(strict, "train")
    i = tr.sources.index("train/dog/002.png")
    with pytest.raises(SimattrError, match=r"dog/002\.png: cannot decode the image"):
        tr.load([i])
    (root / "train" / "eel" / "readme.md").write_text("x")
    lenient = load_split(Spec.of(name="imagefolder", root=str(root), image_size=8, bad_images="skip"), "train")
    assert sorted(lenient.skipped) == ["train/dog/002.png", "train/eel/readme.md"]
    assert len(lenient) == len(tr) - 1 and lenient.images.shape[0] == len(tr) - 1


def test_spec_checks_and_cli_round_trip():
    with pytest.raises(SimattrError, match="unknown dataset 'cifar'"):
        Spec.of(name="cifar")
    with pytest.raises(SimattrError, match="image_size applies to imagenet, imagefolder only"):
        Spec.of(name="digits", image_size=32)
    with pytest.raises(SimattrError, match="bad_images must be one of error, skip"):
        Spec.of(name="imagefolder", root="x", bad_images="ignore")
    for section in ({"name": "digits", "test_fraction": 0.3, "split_seed": 2}, {"name": "cifar10", "root": "/d/c"},
                    {"name": "imagefolder", "root": "/d/my images", "image_size": 64, "bad_images": "skip"}):
        spec = Spec.from_config(section)
        assert spec.identity() == section and Spec.from_settings(spec.identity()) == spec
    assert Spec.from_config({"name": "imagenet", "root": "/r", "image_size": None, "bad_images": "error",
                             "test_fraction": 0.2}).identity() == \
        {"name": "imagenet", "root": "/r", "image_size": None, "bad_images": "error"}
    with pytest.raises(SimattrError, match="dataset: lacks split_seed"):
        Spec.from_settings({"name": "digits", "test_fraction": 0.2})


def test_embedding_with_decoding_workers_matches_in_process(tmp_path):
    from simattr import embedding, encoders

    root = make_image_folder(tmp_path / "f", per_class=5)
    part = load_split(Spec.of(name="imagefolder", root=str(root), image_size=8), "train")
    enc = encoders.Pixels.fit(part.images, part.labels, {}, seed=0, progress=False)
    a = embedding._encode_range(enc, part, 2, 13, 4, False, "test", workers=0)
    b = embedding._encode_range(enc, part, 2, 13, 4, False, "test", workers=2)
    assert a.shape == (11, 3 * 8 * 8) and np.array_equal(a, b)


def test_split_indexing_selects_without_decoding(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=4)
    tr = load_split(Spec.of(name="imagefolder", root=str(root), image_size=8), "train")
    keep = np.ones(len(tr), bool)
    keep[[0, 5]] = False
    sub = tr[keep]                                    # what a removal probe does to the training set
    assert len(sub) == len(tr) - 2 and sub.labels.tolist() == np.delete(tr.labels, [0, 5]).tolist()
    assert sub.sources[0] == tr.sources[1]
    np.testing.assert_array_equal(sub.load([0, 3]), tr.load([1, 4]))
    np.testing.assert_array_equal(sub[[2, 0]].images, tr.load([3, 1]))


def _resnet_params(tmp_path):
    """The resnet encoder's params, for a random ResNet-18 checkpoint written here."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    return {"arch": "resnet18", "checkpoint": str(tmp_path / "r18.pth"), "layout": "auto", "feature": "pool",
            "normalize": "imagenet"}


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
def test_streamed_batches_are_uint8_and_give_the_features_of_float_images(dataset, tmp_path):
    """What travels from the decoders to the device is uint8 (a quarter of float32's bytes); the features are the
    same bits as from the float32 images the pipeline used before (scaling by 255 happens on the device).
    Decoded by 2 workers under the forkserver start method (Python 3.14's default): a Split pickles."""
    import torch

    from simattr import embedding, encoders
    from datafiles import make_cifar_root

    if dataset == "cifar10":
        spec = Spec.of(name="cifar10", root=str(make_cifar_root(tmp_path / "c", per_batch=6, n_test=4)))
    else:
        spec = Spec.of(name="imagefolder", root=str(make_image_folder(tmp_path / "f", per_class=5)), image_size=16)
    part = load_split(spec, "train")
    stream = part.stream(4, 2, labels=True, context="forkserver")
    try:
        for epoch in range(2):                          # the same workers serve every epoch
            order = np.random.default_rng(epoch).permutation(len(part))[:9]
            got = list(stream(order))
            assert [len(x) for x, _ in got] == [4, 4, 1]
            assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 for x, y in got)
            np.testing.assert_array_equal(torch.cat([x for x, _ in got]).numpy(), part.load_raw(order))
            np.testing.assert_array_equal(torch.cat([y for _, y in got]).numpy(), part.labels[order])
    finally:
        stream.close()
    enc = encoders.ResNet.from_checkpoint(_resnet_params(tmp_path))
    before = enc.encode(part.images, batch_size=4)                      # float32 images, as before
    for workers in (0, 2):
        after = embedding._encode_range(enc, part, 0, len(part), 4, False, "t", workers=workers)
        np.testing.assert_array_equal(after, before)


def test_an_embed_job_builds_its_network_once(tmp_path, monkeypatch):
    import simattr.backbones as bb
    from simattr import embedding

    spec = Spec.of(name="imagefolder", root=str(make_image_folder(tmp_path / "f", per_class=6)), image_size=16)
    state, shard = str(tmp_path / "resnet.pt"), str(tmp_path / "shard.h5")
    embedding.train_encoder(data=spec, encoder="resnet", params=_resnet_params(tmp_path), seed=0, out=state,
                            progress=False)
    builds = []
    real = bb.resnet
    monkeypatch.setattr(bb, "resnet", lambda *a, **k: (builds.append(1), real(*a, **k))[1])
    embedding.embed_shard(data=spec, encoder="resnet", split="train", shard=0, shard_size=0, batch_size=3,
                          float16=False, workers=0, out=shard, state_path=state, progress=False)
    assert len(builds) == 1              # the state file read and checked, 18 images in 6 batches: one network
    embedding.embed_index(data=spec, encoder="resnet", split="train", shards=[shard],
                          out=str(tmp_path / "index.json"), state_path=state)
    assert len(builds) == 1              # the manifest reads the state's settings only


@pytest.mark.cuda
def test_a_pinned_stream_feeds_cuda_without_changing_a_bit(tmp_path):
    import torch

    from simattr.images import tensor_to_unit

    spec = Spec.of(name="imagefolder", root=str(make_image_folder(tmp_path / "f", per_class=5)), image_size=16)
    part = load_split(spec, "train")
    stream = part.stream(4, 2, pin=True)
    try:
        batches = list(stream(np.arange(len(part))))
    finally:
        stream.close()
    assert all(b.is_pinned() and b.dtype == torch.uint8 for b in batches)
    on_gpu = torch.cat([tensor_to_unit(b, "cuda") for b in batches]).cpu().numpy()
    np.testing.assert_array_equal(on_gpu, part.images)


@pytest.mark.parametrize("size", [(40, 40), (37, 64), (64, 37), (300, 201), (201, 300), (33, 32), (31, 90)])
def test_resize_crop_is_torchvisions_resize_then_centre_crop(size):
    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(sum(size))
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    for target in (32, 24, 17):
        want = np.asarray(TF.center_crop(TF.resize(im, target), [target, target]))
        assert np.array_equal(np.asarray(images.resize_crop(im, target)), want), (size, target)
