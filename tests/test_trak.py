import logging

import numpy as np
import pytest

from simattr import models, trak
from simattr.errors import SimattrError


def _blobs(n_train, n_target, d, n_classes, seed, sep=1.0):
    """Gaussian blobs (digits-like: d standardised features), split into train and targets."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * sep
    y = rng.integers(0, n_classes, n_train + n_target)
    X = (centres[y] + rng.standard_normal((len(y), d))).astype(np.float32)
    Xtr, Xt = models.standardise(X[:n_train], X[n_train:])
    return Xtr, y[:n_train], Xt, y[n_train:]


def test_trak_scores_equal_a_direct_traker_call(tmp_path):
    import torch
    from torch import nn
    from trak import TRAKer

    Xtr, ytr, Xt, yt = _blobs(400, 20, 64, 4, 0)
    r = models.Recipe.of(hidden=16, steps=50)
    ckpts = trak.train_checkpoints(recipe=r, X_train=Xtr, y_train=ytr, n_classes=4, seeds=[0, 1])
    s = trak.trak_scores(recipe=r, X_train=Xtr, y_train=ytr, X_target=Xt, y_target=yt, checkpoints=ckpts,
                         n_classes=4, proj_dim=256, projector_seed=3, batch_size=128, save_dir=tmp_path / "ours")
    assert s.shape == (20, 400) and s.dtype == np.float32

    # by hand, as traker's quickstart does it (other batch sizes, its own save_dir handling)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    grad_dim = sum(p.numel() for p in model.parameters())
    t = TRAKer(model=model, task="image_classification", train_set_size=400, save_dir=str(tmp_path / "direct"),
               device="cpu", proj_dim=256, projector_seed=3, use_half_precision=False, load_from_save_dir=True,
               projector=trak.HashedProjector(grad_dim, 256, 3, "cpu"), logging_level=logging.ERROR)
    X, y, XT, YT = (torch.as_tensor(a) for a in (Xtr, ytr, Xt, yt))
    for k, c in enumerate(ckpts):
        t.load_checkpoint(c, model_id=k)
        for i in range(0, 400, 64):
            t.featurize(batch=(X[i:i + 64], y[i:i + 64]), num_samples=len(y[i:i + 64]))
    t.finalize_features()
    for k, c in enumerate(ckpts):
        t.start_scoring_checkpoint(exp_name="direct", checkpoint=c, model_id=k, num_targets=20)
        t.score(batch=(XT, YT), num_samples=20)
    direct = np.asarray(t.finalize_scores(exp_name="direct")).T
    np.testing.assert_allclose(s, direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())


def test_top_scored_training_image_mostly_has_the_targets_label(tmp_path):
    Xtr, ytr, Xt, yt = _blobs(300, 40, 64, 4, 0)
    r = models.Recipe.of(hidden=16, steps=100)
    ckpts = trak.train_checkpoints(recipe=r, X_train=Xtr, y_train=ytr, n_classes=4, seeds=range(8))
    assert (models.train_predict(Xtr, ytr, Xt, seeds=[0], n_classes=4, recipe=r)[0].argmax(1) == yt).mean() > 0.95
    s = trak.trak_scores(recipe=r, X_train=Xtr, y_train=ytr, X_target=Xt, y_target=yt, checkpoints=ckpts,
                         n_classes=4, proj_dim=16, batch_size=128, save_dir=tmp_path / "t")
    assert (ytr[s.argmax(1)] == yt).mean() > 0.6                        # chance: 0.25
    same = ytr[None] == yt[:, None]
    mean_same = (s * same).sum(1) / same.sum(1)
    mean_other = (s * ~same).sum(1) / (~same).sum(1)
    assert (mean_same > mean_other).mean() > 0.9


def test_trak_scores_are_deterministic_and_save_dir_is_made_fresh(tmp_path):
    Xtr, ytr, Xt, yt = _blobs(120, 10, 16, 3, 1)
    r = models.Recipe.of(hidden=8, steps=20)
    ckpts = trak.train_checkpoints(recipe=r, X_train=Xtr, y_train=ytr, n_classes=3, seeds=[4, 5])
    kw = dict(recipe=r, X_train=Xtr, y_train=ytr, X_target=Xt, y_target=yt, checkpoints=ckpts, n_classes=3,
              proj_dim=32, batch_size=128)
    a = trak.trak_scores(**kw, save_dir=tmp_path / "t")
    b = trak.trak_scores(**kw, save_dir=tmp_path / "t")                # the same folder again: emptied first
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and not np.array_equal(a, trak.trak_scores(**kw, projector_seed=1,
                                                                           save_dir=tmp_path / "t"))
    one = trak.trak_scores(**{**kw, "checkpoints": ckpts[:1]}, save_dir=tmp_path / "t")   # one block, one model
    assert one.shape == (10, 120) and np.isfinite(one).all()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not traker's")
    with pytest.raises(SimattrError, match="not a traker folder"):
        trak.trak_scores(**kw, save_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").exists()
    assert trak.trak_scores(**{**kw, "X_target": Xt[:0], "y_target": yt[:0]}, save_dir=tmp_path / "t").shape == (0, 120)


def test_resnet9_trak_scores_are_finite(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((24, 3, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 24)
    r = models.Recipe.of(name="resnet9", epochs=1, batch_size=10, lr=0.1)
    Xtr, Xt = models.prepare_inputs(r, x[:20], x[20:])
    ckpts = trak.train_checkpoints(recipe=r, X_train=Xtr, y_train=y[:20], n_classes=4, seeds=[0], device="cpu")
    assert "7.f.1.running_mean" in ckpts[0]                                 # BatchNorm statistics travel too
    s = trak.trak_scores(recipe=r, X_train=Xtr, y_train=y[:20], X_target=Xt, y_target=y[20:], checkpoints=ckpts,
                         n_classes=4, proj_dim=8, batch_size=10, device="cpu", save_dir=tmp_path / "t")
    assert s.shape == (4, 20) and s.dtype == np.float32 and np.isfinite(s).all() and np.abs(s).max() > 0


def _numpy_matrix(grad_dim, proj_dim, seed, model_id):
    """The projection written out in numpy from its definition (int64 keys, wrapping arithmetic)."""
    key = (np.arange(grad_dim, dtype=np.int64)[:, None] * proj_dim + np.arange(proj_dim, dtype=np.int64)[None]
           + np.int64(trak.projection_salt(seed, model_id)))
    with np.errstate(over="ignore"):
        return trak.rademacher_signs(key, np).astype(np.float32)


def test_the_projection_is_its_definition_in_any_block_size_and_a_good_jl_matrix():
    import torch

    ref = _numpy_matrix(300, 96, 3, 1)
    for budget in (300, 300 * 7, 1 << 22):                # 1, 7 and all 96 columns per block
        pr = trak.HashedProjector(300, 96, 3, "cpu", budget=budget)
        np.testing.assert_array_equal(pr.matrix(1, 0, 96).numpy(), ref)
        g = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
        np.testing.assert_allclose(pr.project(g, 1).numpy(), g.numpy() @ ref, rtol=1e-5, atol=1e-4)
    assert set(np.unique(ref)) == {-1.0, 1.0} and abs(ref.mean()) < 0.02
    cos = (ref.T @ ref) / 300
    assert np.abs(cos[~np.eye(96, dtype=bool)]).max() < 0.3             # nearly orthogonal columns
    assert not np.array_equal(ref, _numpy_matrix(300, 96, 3, 2))        # one matrix per checkpoint ...
    assert not np.array_equal(ref, _numpy_matrix(300, 96, 4, 1))        # ... and per projector_seed


@pytest.mark.cuda
def test_trak_scores_on_cuda_agree_with_the_cpu(tmp_path):
    """The same projection on both devices (hashed, not drawn from a device generator), float32 on both."""
    import torch

    pr_cpu, pr_cuda = trak.HashedProjector(5000, 64, 0, "cpu"), trak.HashedProjector(5000, 64, 0, "cuda")
    assert torch.equal(pr_cpu.matrix(2, 0, 64), pr_cuda.matrix(2, 0, 64).cpu())
    Xtr, ytr, Xt, yt = _blobs(400, 20, 64, 4, 0)
    r = models.Recipe.of(hidden=16, steps=50)
    ckpts = trak.train_checkpoints(recipe=r, X_train=Xtr, y_train=ytr, n_classes=4, seeds=[0, 1])
    kw = dict(recipe=r, X_train=Xtr, y_train=ytr, X_target=Xt, y_target=yt, checkpoints=ckpts, n_classes=4,
              proj_dim=128, projector_seed=3, batch_size=128)
    cpu = trak.trak_scores(**kw, device="cpu", save_dir=tmp_path / "cpu")
    cuda = trak.trak_scores(**kw, device="cuda", save_dir=tmp_path / "cuda")
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3, atol=1e-3 * np.abs(cpu).max())
