import numpy as np
import pytest

from simattr import config as sconfig
from simattr import datasets, models
from simattr.errors import SimattrError


def test_digits_mlp_learns_and_each_seed_is_independent_of_its_batch():
    tr = datasets.load_split("digits", "train", test_fraction=0.2, seed=0)
    te = datasets.load_split("digits", "test", test_fraction=0.2, seed=0)
    Xtr, Xte = models.standardise(tr.images, te.images)
    r = models.Recipe.of()
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
    with pytest.raises(SimattrError, match="valid: mlp, resnet9"):
        models.Recipe.of(name="resnet")
    with pytest.raises(SimattrError, match="valid: digits"):
        datasets.load_split("cifar", "train", test_fraction=0.2, seed=0)


def _colour_data(n, seed):
    from datafiles import cifar_images

    raw, labels = cifar_images(n, seed)
    return raw.reshape(n, 3, 32, 32).astype(np.float32) / 255.0, np.asarray(labels)


def test_resnet9_learns_and_a_seed_repeats_exactly():
    xtr, ytr = _colour_data(160, 0)
    xte, yte = _colour_data(40, 1)
    r = models.Recipe.of(name="resnet9", epochs=4, batch_size=32, lr=0.2, weight_decay=5e-4)
    Xtr, Xte = models.prepare_inputs(r, xtr, xte)
    assert Xtr.dtype == np.float16 and Xtr.shape == (160, 3, 32, 32)
    assert np.allclose(Xtr.astype(np.float32).mean(axis=(0, 2, 3)), 0, atol=1e-2)
    p = models.train_predict(Xtr, ytr, Xte, seeds=[5, 6], n_classes=10, recipe=r)
    assert p.shape == (2, 40, 10) and np.allclose(p.sum(-1), 1, atol=1e-5)
    assert (p.argmax(-1) == yte).mean() > 0.5                 # the classes' colours are learnable
    again = models.train_predict(Xtr, ytr, Xte, seeds=[6], n_classes=10, recipe=r)
    np.testing.assert_array_equal(again[0], p[1])             # a model depends on its own seed only
    assert not np.array_equal(p[0], p[1])


def test_augmentation_is_drawn_from_the_generator():
    import torch

    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12) + 1
    a = models.augment_batch(x, torch.Generator().manual_seed(3), shift=2, cutout=4)
    b = models.augment_batch(x, torch.Generator().manual_seed(3), shift=2, cutout=4)
    c = models.augment_batch(x, torch.Generator().manual_seed(4), shift=2, cutout=4)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert ((a == 0).sum(dim=(1, 2, 3)) == 3 * 16).all()      # one 4x4 cutout per image, all channels
    assert set(a[a != 0].tolist()) <= set(x.flatten().tolist())   # flips and shifts only move pixels


def test_recipe_reads_only_its_fields_and_round_trips_through_its_settings():
    from simattr import settings

    mlp = models.Recipe.of(hidden=16, epochs=3)
    assert mlp.identity() == {"name": "mlp", "hidden": 16, "steps": 100, "lr": 0.01, "weight_decay": 0.0}
    assert mlp.epochs is None                                    # a field the MLP does not read
    cnn = models.Recipe.of(name="resnet9", lr=0.5, weight_decay=5e-4, epochs=3, batch_size=64)
    assert "hidden" not in cnn.identity() and cnn.identity()["epochs"] == 3 and cnn.hidden is None
    for r in (mlp, cnn):
        made = {**settings.for_job("queries", sconfig.defaults()), "model": r.identity()}
        assert settings.parse("queries", settings.as_json(made)).model == r


def test_resnet18_streams_a_folder_split_and_repeats_exactly(tmp_path):
    from datafiles import make_image_folder

    root = make_image_folder(tmp_path / "f", per_class=8, val_per_class=2)
    spec = datasets.Spec.of(name="imagefolder", root=str(root), image_size=16)
    tr, te = datasets.load_split(spec, "train"), datasets.load_split(spec, "test")
    r = models.Recipe.of(name="resnet18", epochs=2, batch_size=8, lr=0.1, weight_decay=5e-5)
    assert models.prepare_inputs(r, tr, te) == [tr, te]       # streamed: nothing loaded up front
    keep = np.arange(len(tr)) != 3
    p = models.train_predict(tr[keep], tr.labels[keep], te, seeds=[1, 2], n_classes=3, recipe=r)
    assert p.shape == (2, 6, 3) and np.allclose(p.sum(-1), 1, atol=1e-5)
    q = models.train_predict(tr[keep], tr.labels[keep], te.load(np.arange(6)).astype(np.float16), seeds=[2],
                             n_classes=3, recipe=r)
    np.testing.assert_allclose(q[0], p[1], atol=1e-3)          # same seed: same model (eval input float16)


# ------------------------------------------------------------ logits, margins and torch modules (TRAK)
def _blobs(n, d, n_classes, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d))
    y = rng.integers(0, n_classes, n)
    return (centres[y] + rng.standard_normal((n, d))).astype(np.float32), y


def test_logits_are_the_same_models_before_the_softmax():
    X, y = _blobs(150, 64, 4, 0)
    Xtr, Xte = models.standardise(X[:120], X[120:])
    r = models.Recipe.of(hidden=16, steps=30)
    p = models.train_predict(Xtr, y[:120], Xte, seeds=[3, 4], n_classes=4, recipe=r)
    z = models.train_predict(Xtr, y[:120], Xte, seeds=[3, 4], n_classes=4, recipe=r, logits=True)
    assert z.shape == p.shape == (2, 30, 4)
    e = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(-1, keepdims=True), p, rtol=1e-5, atol=1e-7)
    assert models.train_predict(Xtr, y[:120], Xte, seeds=[], n_classes=4, recipe=r, logits=True).shape == (0, 30, 4)


def test_margins_are_correct_logit_minus_logsumexp_of_the_others():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 5, 4))
    y = rng.integers(0, 4, 5)
    m = models.margins(z, y)                                   # labels (5,) broadcast over the 2 models
    assert m.shape == (2, 5)
    for s in range(2):
        for i in range(5):
            others = np.delete(z[s, i], y[i])
            assert np.isclose(m[s, i], z[s, i, y[i]] - np.log(np.exp(others).sum()))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    pc = np.take_along_axis(p, np.broadcast_to(y, (2, 5))[..., None], -1)[..., 0]
    np.testing.assert_allclose(m, np.log(pc / (1 - pc)))       # log p / (1 - p) of the correct class
    big = models.margins(np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 999.0]], np.float32), [0, 2])
    np.testing.assert_allclose(big, [1000.0, -1.0], atol=1e-9)     # stable where exp overflows
    assert np.isclose(models.margins(np.array([2.0, -1.0]), 0), 3.0)   # a single example, two classes
    with pytest.raises(SimattrError, match="C >= 2"):
        models.margins(np.zeros((3, 1)), [0, 0, 0])


def test_importing_models_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, simattr.models; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_mlp_train_state_in_its_torch_module_gives_train_predicts_logits():
    import torch

    X, y = _blobs(140, 64, 4, 1)
    Xtr, Xte = models.standardise(X[:100], X[100:])
    r = models.Recipe.of(hidden=32, steps=40, weight_decay=1e-4)
    state = models.train_state(Xtr, y[:100], 7, 4, r)
    assert {k: tuple(v.shape) for k, v in state.items()} == {"0.weight": (32, 64), "0.bias": (32,),
                                                            "2.weight": (4, 32), "2.bias": (4,)}
    with models.one_blas_thread():
        w1 = models.train_mlp(Xtr, y[:100], [7], 4, hidden=32, steps=40, lr=r.lr, weight_decay=1e-4)[0][0]
    np.testing.assert_array_equal(state["0.weight"].numpy(), w1.T)         # the same bits as training
    net = models.torch_module(r, Xtr.shape[1:], 4)
    net.load_state_dict(state)
    with torch.no_grad():
        z = net(torch.as_tensor(Xte)).numpy()
    np.testing.assert_allclose(z, models.train_predict(Xtr, y[:100], Xte, seeds=[7], n_classes=4, recipe=r,
                                                       logits=True)[0], rtol=1e-5, atol=1e-5)


def test_resnet9_train_state_in_its_torch_module_gives_train_predicts_logits():
    import torch

    rng = np.random.default_rng(0)
    x = rng.random((50, 3, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 50)
    r = models.Recipe.of(name="resnet9", epochs=1, batch_size=20, lr=0.1)
    Xtr, Xte = models.prepare_inputs(r, x[:40], x[40:])
    before = torch.random.get_rng_state()
    net = models.torch_module(r, Xtr.shape[1:], 4)
    assert torch.equal(torch.random.get_rng_state(), before)               # the global RNG is left alone
    net.load_state_dict(models.train_state(Xtr, y[:40], 5, 4, r, device="cpu"))
    with torch.no_grad():
        z = net.eval()(torch.as_tensor(Xte).float()).numpy()
    ref = models.train_predict(Xtr, y[:40], Xte, seeds=[5], n_classes=4, recipe=r, logits=True)[0]
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)
    p = models.train_predict(Xtr, y[:40], Xte, seeds=[5], n_classes=4, recipe=r)[0]
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(ref), -1).numpy(), p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet9", "resnet18"])
def test_a_retrain_leaves_no_parameters_or_optimiser_state_alive(name, tmp_path, monkeypatch):
    """Freed by reference counting when train_predict returns, without waiting for a full garbage collection
    (collection is off here): on a GPU its memory is free for the next model. CPU-only check of Python
    references; holds on any device."""
    import gc
    import weakref

    import torch
    import torchvision  # noqa: F401 - its first import leaves a traceback cycle (through the importing frame)

    refs = []
    real_sgd = torch.optim.SGD

    class SpySGD(real_sgd):
        def __init__(self, params, **kw):
            params = list(params)
            refs.extend(weakref.ref(p) for p in params)
            super().__init__(params, **kw)
            refs.append(weakref.ref(self))

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    if name == "resnet9":
        xtr, ytr = _colour_data(40, 0)
        r = models.Recipe.of(name="resnet9", epochs=1, batch_size=16, lr=0.1)
        X, Xe = models.prepare_inputs(r, xtr, xtr[:4])
    else:
        from datafiles import make_image_folder

        root = make_image_folder(tmp_path / "f", per_class=4, val_per_class=1)
        spec = datasets.Spec.of(name="imagefolder", root=str(root), image_size=16)
        X, Xe = datasets.load_split(spec, "train"), datasets.load_split(spec, "test")
        ytr = X.labels
        r = models.Recipe.of(name="resnet18", epochs=1, batch_size=4, lr=0.1)
    gc.collect()
    gc.disable()
    try:
        p = models.train_predict(X, ytr, Xe, seeds=[3], n_classes=10 if name == "resnet9" else 3, recipe=r)
        alive = [w for w in refs if w() is not None]
    finally:
        gc.enable()
    assert p.shape[0] == 1 and len(refs) > 10
    assert not alive, f"{len(alive)} of {len(refs)} parameters / optimisers outlive the retrain"


@pytest.mark.cuda
def test_resnet9_on_cuda_learns_as_on_the_cpu_and_deterministic_mode_repeats_its_bits():
    """bfloat16 autocast and channels-last on CUDA: the same accuracy as the CPU's float32 within seed noise;
    with model.deterministic the same seed gives the same bits on one GPU."""
    xtr, ytr = _colour_data(512, 0)
    xte, yte = _colour_data(256, 1)
    r = models.Recipe.of(name="resnet9", epochs=4, batch_size=64, lr=0.2, weight_decay=5e-4, deterministic=True)
    Xtr, Xte = models.prepare_inputs(r, xtr, xte)
    kw = dict(seeds=[5], n_classes=10, recipe=r)
    a = models.train_predict(Xtr, ytr, Xte, **kw, device="cuda")
    np.testing.assert_array_equal(models.train_predict(Xtr, ytr, Xte, **kw, device="cuda"), a)
    cpu = models.train_predict(Xtr, ytr, Xte, **kw, device="cpu")
    acc_cuda, acc_cpu = (a[0].argmax(1) == yte).mean(), (cpu[0].argmax(1) == yte).mean()
    assert acc_cuda > 0.5 and abs(acc_cuda - acc_cpu) < 0.15, (acc_cuda, acc_cpu)


def test_deterministic_is_part_of_a_cnns_identity_and_swaps_only_the_pooling():
    """model.deterministic changes which kernels run on CUDA, so it names a different model; the networks it
    builds have the same parameters and, on the CPU, the same outputs (max exactly, mean to rounding)."""
    import torch

    r = models.Recipe.of(name="resnet18", epochs=1, batch_size=8, lr=0.1, deterministic=True)
    assert r.identity()["deterministic"] is True and "deterministic" not in models.Recipe.of().identity()
    assert models.Recipe.from_settings(r.identity()) == r
    det, plain = (models.torch_module(models.Recipe.of(**{**r.__dict__, "deterministic": d}), (3, 32, 32), 5)
                  for d in (True, False))
    assert type(det.avgpool).__name__ == "GlobalPool" and type(plain.avgpool).__name__ == "AdaptiveAvgPool2d"
    plain.load_state_dict(det.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(det.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-6)
