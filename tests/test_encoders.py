"""Encoders: fit/encode contract, determinism, state files, errors. Tiny params on a 200-image subset: fast."""
from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

from simattr import augment as A
from simattr import config
from simattr import encoders as E
from simattr.datasets import load_split
from simattr.errors import SimattrError

TINY = {
    "pixels": {},
    "simclr": {"arch": "small", "epochs": 2, "batch_size": 64, "lr": 2e-3, "temperature": 0.2, "feature_dim": 32,
               "proj_dim": 16},
    "supervised": {"epochs": 2, "batch_size": 64, "lr": 2e-3, "hidden": 24},
}
N_SUB = 200


@pytest.fixture(scope="module")
def data():
    tr = load_split("digits", "train", test_fraction=0.2, seed=0)
    te = load_split("digits", "test", test_fraction=0.2, seed=0)
    return tr.images[:N_SUB], tr.labels[:N_SUB], te.images[:50]


@pytest.fixture(scope="module")
def states(data):
    x, y, _ = data
    return {name: E.get(name).fit(x, y, TINY[name], seed=3, progress=False) for name in TINY}


def test_registry_names():
    assert config.FEATURE_ENCODERS == ("pixels", "simclr", "supervised", "resnet")
    assert config.STATE_ENCODERS == ("simclr", "supervised", "resnet")
    assert [E.get(n) for n in config.FEATURE_ENCODERS] == [E.Pixels, E.SimCLR, E.Supervised, E.ResNet]
    assert all(issubclass(k, E.Encoder) and k.name == n for n, k in E.KINDS.items())
    # the code's registry is the one config names without importing torch (config.FEATURE_ENCODER_STATE)
    assert tuple(E.KINDS) == config.FEATURE_ENCODERS
    assert tuple(n for n, k in E.KINDS.items() if k.trainable) == config.STATE_ENCODERS
    assert tuple(n for n, k in E.KINDS.items() if k.trainable and not k.pretrained) == config.TRAINED_ENCODERS
    assert not hasattr(E, "DEFAULT_PARAMS")
    for name in TINY:
        assert set(E.get(name).param_keys) == set(TINY[name])


def test_import_does_not_import_torch():
    import subprocess

    code = "import sys, simattr.encoders; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


def test_unknown_encoder_lists_valid_names(data, tmp_path):
    x, y, _ = data
    with pytest.raises(SimattrError) as e:
        E.get("vit")
    for name in config.FEATURE_ENCODERS:
        assert name in str(e.value)
    assert "vit" in str(e.value)
    with pytest.raises(SimattrError, match="pixels, simclr, supervised, resnet"):
        E.read_state(tmp_path / "x.pt", "vit")
    with pytest.raises(SimattrError, match="pixels, simclr, supervised, resnet"):
        E.Encoder.from_state({"encoder": "vit"})


@pytest.mark.parametrize("name,bad,word", [
    ("simclr", {k: v for k, v in TINY["simclr"].items() if k != "temperature"}, "temperature"),
    ("supervised", {**TINY["supervised"], "hiden": 3}, "hiden"),
    ("supervised", {**TINY["supervised"], "epochs": 0}, "epochs"),
    ("simclr", {**TINY["simclr"], "feature_dim": 1.5}, "feature_dim"),
    ("pixels", {"epochs": 1}, "epochs"),
    ("supervised", {**TINY["supervised"], "batch_size": 1}, "batch_size"),
    ("simclr", "not a dict", "mapping"),
    ("simclr", {**TINY["simclr"], "arch": "vgg"}, r"unknown arch 'vgg'; valid: small, resnet18"),
])
def test_bad_params_raise(data, name, bad, word):
    x, y, _ = data
    with pytest.raises(SimattrError, match=word):
        E.get(name).fit(x, y, bad, seed=0, progress=False)


@pytest.mark.parametrize("name", list(TINY))
def test_encode_shape_dtype_finite(states, data, name):
    x, _, xt = data
    enc = states[name]
    assert type(enc) is E.get(name) and enc.name == name and enc.params == TINY[name]
    d = enc.dim
    assert d == {"pixels": 64, "simclr": 32, "supervised": 24}[name]
    for imgs in (x, xt):
        f = enc.encode(imgs)
        assert f.shape == (len(imgs), d)
        assert f.dtype == np.float32
        assert np.isfinite(f).all()
    f = enc.encode(x)
    # the features tell images apart (not a constant map)
    assert np.ptp(f, axis=0).max() > 1e-3
    assert len(np.unique(f.round(5), axis=0)) > len(x) // 2


@pytest.mark.parametrize("name", list(TINY))
def test_encode_independent_of_batching(states, data, name):
    x, _, _ = data
    a = states[name].encode(x)
    b = states[name].encode(x, batch_size=7)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(states[name].encode(x[:10]), states[name].encode(x[:10]))


@pytest.mark.parametrize("name", ["simclr", "supervised"])
def test_fit_is_deterministic(states, data, name):
    x, y, xt = data
    again = E.get(name).fit(x, y, TINY[name], seed=3, progress=False)
    np.testing.assert_array_equal(states[name].encode(xt), again.encode(xt))
    other = E.get(name).fit(x, y, TINY[name], seed=4, progress=False)
    assert not np.allclose(states[name].encode(xt), other.encode(xt))


def test_simclr_ignores_labels(states, data):
    x, y, xt = data
    perm = np.random.default_rng(0).permutation(y)
    assert (perm != y).any()
    ref = states["simclr"].encode(xt)
    for labels in (perm, np.zeros_like(y), None):
        enc = E.SimCLR.fit(x, labels, TINY["simclr"], seed=3, progress=False)
        np.testing.assert_array_equal(enc.encode(xt), ref)


def test_supervised_uses_labels(states, data):
    x, y, xt = data
    perm = np.random.default_rng(0).permutation(y)
    enc = E.Supervised.fit(x, perm, TINY["supervised"], seed=3, progress=False)
    assert not np.allclose(enc.encode(xt), states["supervised"].encode(xt))


def test_pixels_standardised_on_train(states, data):
    x, _, _ = data
    enc = states["pixels"]
    f = enc.encode(x)
    raw_std = x.reshape(len(x), -1).std(0)
    varying = raw_std >= E.PIXEL_STD_FLOOR
    assert varying.sum() > 30
    np.testing.assert_allclose(f.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(f[:, varying].std(0), 1.0, rtol=1e-3)
    # (near-)constant pixels: divided by the floor, not by ~0
    assert (raw_std == 0).any()
    assert np.abs(f[:, raw_std == 0]).max() < 1e-6
    assert np.abs(enc.encode(np.ones_like(x[:2]))).max() < 1.0 / E.PIXEL_STD_FLOOR + 1e-3
    assert "backbone" not in enc.state_dict() and enc.device is None


@pytest.mark.parametrize("name", list(TINY))
def test_save_load_round_trip(states, data, tmp_path, name):
    import torch

    _, _, xt = data
    path = tmp_path / "enc" / f"{name}.pt"
    states[name].save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{name}.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # plain tensors and python values only
    assert list(raw) == ["encoder", "params", "input_shape", "seed", *E.get(name).state_keys]
    for loaded in (E.get(name).from_state(path), E.Encoder.from_state(path), E.Encoder.from_state(raw)):
        assert type(loaded) is E.get(name) and loaded.params == TINY[name]
        assert loaded.dim == states[name].dim
        np.testing.assert_array_equal(loaded.encode(xt), states[name].encode(xt))
    assert list(loaded.state_dict()) == list(raw)
    if name in config.STATE_ENCODERS:  # the projection head / classifier layer is not part of the state
        assert all(not k.startswith("head") for k in raw["backbone"])


def test_other_entries_are_kept_and_written_back(states, data, tmp_path):
    """What a caller stores beside the encoder's own entries (the embed stage's "settings") comes back as it was."""
    import torch

    enc = states["supervised"]
    again = E.Supervised({**enc.state_dict(), "settings": "{}"})
    assert again.meta == {"settings": "{}"} and enc.meta == {}
    again.save(tmp_path / "s.pt")
    assert list(torch.load(tmp_path / "s.pt", weights_only=True))[-1] == "settings"
    assert E.Encoder.from_state(tmp_path / "s.pt").meta == {"settings": "{}"}


def test_load_state_errors_name_the_path(states, tmp_path):
    path = tmp_path / "simclr.pt"
    states["simclr"].save(path)
    for wrong in ("supervised", "pixels"):
        for load in (E.get(wrong).from_state, lambda p: E.read_state(p, wrong)):
            with pytest.raises(SimattrError) as e:
                load(path)
            assert str(path) in str(e.value) and "simclr" in str(e.value) and "\n" not in str(e.value)

    missing = tmp_path / "nope.pt"
    with pytest.raises(SimattrError) as e:
        E.SimCLR.from_state(missing)
    assert str(missing) in str(e.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file\x00\x01" * 10)
    with pytest.raises(SimattrError) as e:
        E.SimCLR.from_state(garbage)
    assert str(garbage) in str(e.value) and "\n" not in str(e.value)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SimattrError) as e:
        E.SimCLR.from_state(truncated)
    assert str(truncated) in str(e.value)


def test_load_state_rejects_wrong_structure(states, tmp_path):
    import torch

    sup = states["supervised"].state_dict()
    cases = {
        "notdict.pt": [1, 2, 3],
        "noname.pt": {"params": {}},
        "noweights.pt": {k: v for k, v in sup.items() if k != "backbone"},
        "badshape.pt": {**sup, "params": {**TINY["supervised"], "hidden": 99}},
        "badinput.pt": {**sup, "input_shape": [1, 8]},
    }
    for fname, obj in cases.items():
        p = tmp_path / fname
        torch.save(obj, p)
        with pytest.raises(SimattrError) as e:
            E.Supervised.from_state(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_encode_rejects_wrong_image_shape(states):
    with pytest.raises(SimattrError, match="shape"):
        states["simclr"].encode(np.zeros((3, 1, 16, 16), np.float32))
    with pytest.raises(SimattrError, match="shape"):
        states["pixels"].encode(np.zeros((3, 64), np.float32))


def test_fit_logs_epoch_losses(data, caplog):
    x, _, _ = data
    log = logging.getLogger("simattr.test_encoders")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        E.SimCLR.fit(x, None, TINY["simclr"], seed=0, progress=False, log=log)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("simclr epoch" in m and "loss" in m for m in msgs) == TINY["simclr"]["epochs"]


def test_augment_and_loss():
    import torch

    x = torch.from_numpy(load_split("digits", "train", test_fraction=0.2, seed=0).images[:64])
    a = A.augment(x, torch.Generator().manual_seed(1))
    b = A.augment(x, torch.Generator().manual_seed(1))
    c = A.augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x)
    # translation: every image is its zero-padded self cropped at an offset of at most 1 pixel
    t = A.translate(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        assert any(torch.equal(t[i], padded[i, :, r:r + 8, c:c + 8]) for r in range(3) for c in range(3))
    assert not torch.equal(t, x)
    # the photometric / small geometric parts keep a view nearest (cosine, in pixels) to its own image
    g = torch.Generator().manual_seed(1)
    v = A.noise(A.jitter(A.erase(A.affine(x, g), g), g), g).clamp(0, 1)
    sim = torch.nn.functional.normalize(v.flatten(1), dim=1) @ torch.nn.functional.normalize(x.flatten(1), dim=1).T
    assert (sim.argmax(1) == torch.arange(len(x))).float().mean() > 0.9

    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    matched = A.nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.2)
    shuffled = A.nt_xent(z, z[torch.randperm(32, generator=g)], 0.2)
    chance = float(np.log(2 * 32 - 1))  # the loss when the partner is no more similar than the 62 others
    assert float(matched) < 1.0 and float(shuffled) > chance - 0.5


def test_pixels_knn_quality():
    from sklearn.neighbors import KNeighborsClassifier

    tr = load_split("digits", "train", test_fraction=0.2, seed=0)
    te = load_split("digits", "test", test_fraction=0.2, seed=0)
    enc = E.Pixels.fit(tr.images, tr.labels, {}, seed=0, progress=False)
    knn = KNeighborsClassifier(1, metric="cosine").fit(enc.encode(tr.images), tr.labels)
    assert (knn.predict(enc.encode(te.images)) == te.labels).mean() >= 0.95


def test_rgb_views_are_simclr_crops_and_colour(tmp_path):
    import torch

    x = torch.rand(6, 3, 16, 16)
    a = A.augment(x, torch.Generator().manual_seed(0))
    b = A.augment(x, torch.Generator().manual_seed(0))
    c = A.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    gray = A.augment(x[:1, :1], torch.Generator().manual_seed(0))     # one channel: the digits' views
    assert gray.shape == (1, 1, 16, 16)


def test_simclr_fits_rgb_images(tmp_path):
    from datafiles import cifar_images

    raw, labels = cifar_images(64, 0)
    images = raw.reshape(64, 3, 32, 32).astype(np.float32) / 255.0
    params = {**TINY["simclr"], "epochs": 1, "batch_size": 32}
    enc = E.SimCLR.fit(images, np.asarray(labels), params, seed=0, progress=False)
    f = enc.encode(images[:5])
    assert f.shape == (5, params["feature_dim"]) and np.isfinite(f).all()


def test_simclr_resnet18_trains_and_encodes_512d_deterministically():
    """arch resnet18: torchvision's ResNet-18 with the CIFAR stem, 512-d features whatever feature_dim says;
    the same seed gives the same features (CPU, same thread count)."""
    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 16, 16), dtype=np.float32)
    params = {**TINY["simclr"], "arch": "resnet18", "epochs": 1, "batch_size": 20}
    a = E.SimCLR.fit(images, None, params, seed=0, progress=False)
    b = E.SimCLR.fit(images, None, params, seed=0, progress=False)
    assert a.dim == 512
    assert a.backbone["conv1.weight"].shape == (64, 3, 3, 3) and "fc.weight" not in a.backbone
    fa = a.encode(images[:6])
    assert fa.shape == (6, 512) and fa.dtype == np.float32 and np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, b.encode(images[:6]))


def test_simclr_resnet18_on_grayscale_takes_one_channel(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((8, 1, 8, 8), dtype=np.float32)
    params = {**TINY["simclr"], "arch": "resnet18", "epochs": 1, "batch_size": 8}
    enc = E.SimCLR.fit(images, None, params, seed=0, progress=False)
    assert enc.backbone["conv1.weight"].shape == (64, 1, 3, 3)
    enc.save(tmp_path / "simclr.pt")
    loaded = E.SimCLR.from_state(tmp_path / "simclr.pt")
    np.testing.assert_array_equal(loaded.encode(images), enc.encode(images))
    assert loaded.encode(images).shape == (8, 512)


def test_simclr_arch_changes_the_settings_hash():
    from simattr import datasets, embedding, store

    spec = datasets.Spec.of(name="digits")
    small = embedding.embed_settings(spec, "simclr", TINY["simclr"], 0)
    r18 = embedding.embed_settings(spec, "simclr", {**TINY["simclr"], "arch": "resnet18"}, 0)
    assert small["params"]["arch"] == "small" and r18["params"]["arch"] == "resnet18"
    assert store.config_hash(small) != store.config_hash(r18)


def test_a_simclr_state_saved_before_arch_existed_loads_as_small(states, data, tmp_path):
    _, _, xt = data
    import torch

    old = {**states["simclr"].state_dict(), "params": {k: v for k, v in TINY["simclr"].items() if k != "arch"}}
    torch.save(old, tmp_path / "old.pt")
    loaded = E.SimCLR.from_state(tmp_path / "old.pt")
    assert loaded.params["arch"] == "small" and "arch" not in old["params"]
    np.testing.assert_array_equal(loaded.encode(xt), states["simclr"].encode(xt))


@pytest.mark.cuda
def test_an_encoder_on_cuda_gives_the_cpus_features(states, data):
    """cuDNN's convolutions (TF32 by default) differ from the CPU's in the last digits only."""
    x = data[2]
    for name in ("simclr", "supervised"):
        cpu = E.Encoder.from_state(states[name].state_dict(), device="cpu").encode(x)
        cuda = E.Encoder.from_state(states[name].state_dict(), device="cuda")
        assert cuda.device.type == "cuda" and cuda.to("cpu").device.type == "cpu" and cuda.to("cuda") is cuda
        cuda = cuda.encode(x)
        np.testing.assert_allclose(cuda, cpu, rtol=1e-2, atol=1e-2 * np.abs(cpu).max())
