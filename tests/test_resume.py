"""CNN trainings that survive a time limit: a training state saved at epoch boundaries (models.TrainingState),
resumed bit for bit, never from another training, written atomically, deleted when the model is done; and the
support answers, subset shards, queries and TRAK checkpoints that use it."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from simattr import config as sconfig
from simattr import models, store
from simattr.errors import SimattrError
from simattr.support.answer import Settings, journal_path
from simattr.support.bank import state_path
from simattr.support.stage import answer

sys.path.insert(0, str(Path(__file__).parent))
from datafiles import SUPPORT_SETTINGS, cifar_images  # noqa: E402

RECIPE = models.Recipe.of(name="resnet9", epochs=3, batch_size=8, lr=0.2, weight_decay=5e-4, deterministic=True)


class Interrupted(Exception):
    """What a test raises to stop a training right after it saved its state (a time limit, a preemption)."""


def interrupt_after(monkeypatch, *epochs: int) -> list[int]:
    """Make the next trainings raise Interrupted right after saving their state at any of `epochs`; the list
    returned collects the epoch of every save."""
    real, saved = models.cnn.save_state, []

    def save(state, identity, **kw):
        real(state, identity, **kw)
        saved.append(kw["epoch"])
        if kw["epoch"] in epochs:
            raise Interrupted(f"after epoch {kw['epoch']}")

    monkeypatch.setattr(models.cnn, "save_state", save)
    return saved


def tiny_cifar(n: int = 8, n_eval: int = 4):
    """n CIFAR-shaped training images (3 x 32 x 32, ten classes) and n_eval others, prepared for resnet9."""
    raw, labels = cifar_images(n + n_eval, 0)
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    X, Xe = models.prepare_inputs(RECIPE, x[:n], x[n:])
    return X, np.asarray(labels[:n]), Xe


def _state(tmp_path, data="tiny", every_s=0.0) -> models.TrainingState:
    return models.TrainingState(path=tmp_path / "m.state.pt", data=data, name="model k=0 seed=0", every_s=every_s)


def _equal_states(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_cnn_training_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    """Interrupted after epoch 1, resumed, interrupted after epoch 2, resumed: the same parameters (BatchNorm
    statistics included) and the same predictions as one uninterrupted training; the state is gone at the end."""
    X, y, Xe = tiny_cifar()
    ref_params = models.train_state(X, y, 5, 10, RECIPE, device="cpu")
    ref_logits = models.train_predict(X, y, Xe, seeds=[5], n_classes=10, recipe=RECIPE, logits=True, device="cpu")

    st = _state(tmp_path)
    saves = interrupt_after(monkeypatch, 1, 2)
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)
    assert st.path.exists() and saves == [1]
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)       # resumed at 1, stopped after 2
    assert saves == [1, 2]
    params = models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)  # resumed at 2, to the end
    assert _equal_states(params, ref_params)
    assert st.resumed_at == [1, 2] and saves == [1, 2]          # no save after the last epoch
    assert not st.path.exists() and not list(tmp_path.iterdir())   # done: the state (and no temporary) is left

    monkeypatch.undo()
    interrupt_after(monkeypatch, 1)
    st = _state(tmp_path)
    kw = dict(seeds=[5], n_classes=10, recipe=RECIPE, logits=True, device="cpu", states=[st])
    with pytest.raises(Interrupted):
        models.train_predict(X, y, Xe, **kw)
    import torch

    logits = models.train_predict(X, y, Xe, **kw)
    assert st.resumed_at == [1] and torch.equal(torch.as_tensor(logits), torch.as_tensor(ref_logits))
    assert not st.path.exists()


@pytest.mark.cuda
def test_on_cuda_with_deterministic_kernels_a_resumed_training_is_bit_identical(tmp_path, monkeypatch):
    """On a GPU (bfloat16 autocast, channels-last, a device generator for augmentation) with model.deterministic:
    interrupted after epoch 1 and resumed, the same bits as uninterrupted (scripts/gpu-check runs this)."""
    X, y, _ = tiny_cifar()
    ref = models.train_state(X, y, 5, 10, RECIPE, device="cuda")
    st = _state(tmp_path)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cuda", state=st)
    got = models.train_state(X, y, 5, 10, RECIPE, device="cuda", state=st)
    assert st.resumed_at == [1] and _equal_states(got, ref) and not st.path.exists()


def test_a_state_of_another_training_is_never_resumed_from(tmp_path, monkeypatch, caplog):
    """Another seed, another training set (labels or the caller's identity of the images), another recipe: the
    saved state is ignored (a log line says so) and overwritten; an unreadable file likewise."""
    import torch

    X, y, _ = tiny_cifar()
    st = _state(tmp_path)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)
    original = torch.load(st.path, weights_only=True)["identity"]
    assert original == models.state_identity(RECIPE, 5, 10, y, "tiny", "cpu")
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    others = {"seed": dict(seed=6), "labels": dict(y=y2), "images": dict(data="other images"),
              "recipe": dict(recipe=models.Recipe.of(**{**RECIPE.__dict__, "lr": 0.1}))}
    for what, change in others.items():
        kw = {"seed": 5, "y": y, "data": "tiny", "recipe": RECIPE, **change}
        st = _state(tmp_path, data=kw["data"])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="simattr"), pytest.raises(Interrupted):
            models.train_state(X, kw["y"], kw["seed"], 10, kw["recipe"], device="cpu", state=st)
        assert "training state of another training" in caplog.text, what
        assert "resumed" not in caplog.text and "from epoch 0" in caplog.text, what
        saved = torch.load(st.path, weights_only=True)
        assert saved["identity"] == models.state_identity(kw["recipe"], kw["seed"], 10, kw["y"], kw["data"], "cpu")
        assert saved["identity"] != original and saved["epoch"] == 1, what     # overwritten by this training
        original = saved["identity"]
    st.path.write_bytes(b"not a torch file")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simattr"), pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=_state(tmp_path))
    assert "unreadable training state" in caplog.text and "resumed" not in caplog.text


def test_a_state_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous complete state (and no temporary file); a state cut short
    by anything else is refused as unreadable, never resumed from."""
    import torch

    X, y, _ = tiny_cifar()
    st = _state(tmp_path)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)
    complete = st.path.read_bytes()
    monkeypatch.undo()
    real_save = torch.save

    def dies_half_way(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        Path(f).write_bytes(Path(f).read_bytes()[:1000])     # a torn write ...
        raise Interrupted("killed while saving")              # ... and the process dies

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(Interrupted):
        models.train_state(X, y, 5, 10, RECIPE, device="cpu", state=st)     # resumes at 1, dies saving 2
    assert st.path.read_bytes() == complete                                   # the epoch-1 state, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.state.pt"]       # no temporary left behind
    assert torch.load(st.path, weights_only=True)["epoch"] == 1


def test_the_save_interval_makes_saves_rarer_than_epochs(tmp_path, monkeypatch):
    """every_s = 0: a save at every epoch boundary but the last; a long interval: none in a short training (the
    interval comes from SIMATTR_STATE_EVERY_S, else the schema's launch.state_every_s)."""
    X, y, _ = tiny_cifar()
    r = models.Recipe.of(**{**RECIPE.__dict__, "epochs": 2})
    saves = interrupt_after(monkeypatch)
    models.train_state(X, y, 5, 10, r, device="cpu", state=_state(tmp_path, every_s=0))
    assert saves == [1]
    monkeypatch.setenv(models.STATE_EVERY_ENV, "3600")
    models.train_state(X, y, 5, 10, r, device="cpu", state=_state(tmp_path, every_s=None))
    assert saves == [1] and not list(tmp_path.iterdir())


def test_the_save_interval_setting(monkeypatch):

    from simattr.launch import LaunchSettings, Task

    monkeypatch.delenv(models.STATE_EVERY_ENV, raising=False)
    assert models.state_every_s() == sconfig.defaults()["launch"]["state_every_s"] > 0
    monkeypatch.setenv(models.STATE_EVERY_ENV, "0")
    assert models.state_every_s() == 0.0
    monkeypatch.setenv(models.STATE_EVERY_ENV, "soon")
    with pytest.raises(SimattrError, match="SIMATTR_STATE_EVERY_S='soon': expected a number of seconds >= 0"):
        models.state_every_s()
    # a task sees its launch settings' interval and leaves the process's as it was
    s = LaunchSettings.of(state_every_s=7)
    assert Task(models.state_every_s, 1, state_every_s=s.state_every_s)({}) == 7.0
    launch_words = {k: v for k, v in sconfig.defaults()["launch"].items() if k != "state_every_s"}
    with pytest.raises(SimattrError, match="launch: lacks state_every_s"):     # the support rule always passes it
        LaunchSettings.from_settings(launch_words)
    import os

    assert os.environ[models.STATE_EVERY_ENV] == "soon"


def test_the_mlp_keeps_no_state(tmp_path):
    """The digits MLP (numpy, sub-second) ignores training states: nothing is written, its bits are unchanged."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 5)).astype(np.float32), rng.integers(0, 3, 30)
    r = models.Recipe.of(hidden=8, steps=10)
    st = _state(tmp_path)
    a = models.train_predict(X, y, X[:3], seeds=[1], n_classes=3, recipe=r, states=[st])
    np.testing.assert_array_equal(a, models.train_predict(X, y, X[:3], seeds=[1], n_classes=3, recipe=r))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ support answers
def cnn_support_inputs(folder: Path, n_train: int = 12) -> tuple[str, list[str]]:
    """The support stage's inputs for one CIFAR-shaped test image and a resnet9 recipe (queries.h5 with n_train
    prepared training images, one score file ranking all of them); with cnn_settings an answer trains exactly
    one model (k = k_max; k = 0 is the queries stage's full-data model)."""
    raw, labels = cifar_images(n_train + 1, 3)
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    X, Xq = models.prepare_inputs(RECIPE, x[:n_train], x[n_train:])
    yq = int(labels[n_train])
    store.write_arrays(folder / "queries.h5", {
        "X_train": X, "y_train": np.asarray(labels[:n_train], np.int64), "test_indices": np.array([0]),
        "X_query": Xq, "y_query": np.array([yq]), "flip_class": np.array([(yq + 1) % 10]),
        "full_correct": np.ones((1, 1), np.uint8)}, {"n_classes": 10})
    s = np.random.default_rng(4).random((1, n_train)).astype(np.float32)
    f = folder / f"class-{yq}.h5"
    store.write_scores(f, test_indices=np.array([0]), train_indices=np.arange(n_train), scores=s,
                       topk=np.argsort(-s, 1), attrs={"class": yq, "encoder": "toy", "ranker": "knn_l2"})
    return str(folder / "queries.h5"), [str(f)]


def cnn_settings(epochs: int) -> dict:
    """Bisection with one model per probe and no bisection step: the k_max probe's model is the only one trained
    (on n_train - 4 images: one batch per epoch)."""
    return {**SUPPORT_SETTINGS, "k_max": 4, "seeds": 1, "bisection_steps": 0, "monotone_checks": 0,
            "model": {**RECIPE.identity(), "epochs": epochs}}


def journal_models(answer_path) -> list[dict]:
    return [json.loads(ln) for ln in journal_path(answer_path).read_text().splitlines()]


def test_a_support_answer_killed_mid_model_resumes_that_model_from_its_state(tmp_path, monkeypatch):
    monkeypatch.setenv(models.STATE_EVERY_ENV, "0")
    queries, files = cnn_support_inputs(tmp_path)
    unit = dict(queries_path=queries, scores_path=files[0], test_index=0, metric="removal",
                settings=Settings.from_settings(cnn_settings(3)))
    clean = answer(out_path=str(tmp_path / "clean" / "0.json"), **unit)
    assert clean["trainings"] == 1
    out = tmp_path / "killed" / "0.json"
    real = models.cnn.save_state
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        answer(out_path=str(out), **unit)
    state = state_path(journal_path(out), 4, 0)
    assert state.name == "0.k4.s0.state.pt" and state.exists() and not out.exists()
    assert journal_models(out) == []                         # the model was not finished
    monkeypatch.setattr(models.cnn, "save_state", real)
    resumed = answer(out_path=str(out), **unit)
    strip = lambda a: {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}
    assert strip(resumed) == strip(clean)
    (ref,), (got,) = journal_models(tmp_path / "clean" / "0.json"), journal_models(out)
    assert got.pop("resumed_at") == [1] and "resumed_at" not in ref
    assert got == ref                                        # the same model: seed, prediction, margin
    assert not list(out.parent.glob("*.state.pt")) and not list(out.parent.glob(".*.tmp"))


# ------------------------------------------------------------------ the queries, subsets and TRAK jobs
def test_every_job_that_trains_models_gives_each_its_state_file_beside_its_output(tmp_path, monkeypatch):
    """Which state file each job's trainings get (the digits MLP keeps none, but is handed them alike)."""
    from simattr import datasets, queries, subsets, trak

    seen = []
    real_predict, real_state = models.train_predict, models.train_state

    def predict(*a, states=None, **kw):
        seen.extend((s.path.name, s.name) for s in states)
        return real_predict(*a, states=states, **kw)

    def state(*a, state=None, **kw):
        seen.append((state.path.name, state.name))
        return real_state(*a, state=state, **kw)

    monkeypatch.setattr(models, "train_predict", predict)
    monkeypatch.setattr(models, "train_state", state)
    digits, mlp = datasets.Spec.of(name="digits"), models.Recipe.of(hidden=8, steps=10)
    queries.prepare_queries(data=digits, n_test=2, sample_seed=0, flip_models=2, recipe=mlp,
                            out_path=str(tmp_path / "queries.h5"))
    assert seen == [("queries.m0.state.pt", "full-data model 0"), ("queries.m1.state.pt", "full-data model 1")]
    seen.clear()
    trak.trak_checkpoints(data=digits, recipe=mlp, n_checkpoints=2, seed=0, out=str(tmp_path / "trak-checkpoints.pt"),
                          progress=False)
    assert seen == [("trak-checkpoints.c0.state.pt", "TRAK checkpoint 0"),
                    ("trak-checkpoints.c1.state.pt", "TRAK checkpoint 1")]
    seen.clear()
    subsets.train_shard(data=digits, purpose="lds", alpha=0.5, n_models=4, shard_size=2, shard=1, recipe=mlp,
                        out=str(tmp_path / "shard-00001.h5"), progress=False)
    assert seen == [("shard-00001.m2.state.pt", "lds model 2"), ("shard-00001.m3.state.pt", "lds model 3")]
    assert not list(tmp_path.glob("*.state.pt"))


def test_a_subset_shard_and_trak_checkpoints_killed_mid_model_resume_it(tmp_path, monkeypatch):
    """CIFAR-shaped files, resnet9: a subsets job and a trak_checkpoints job killed after a model's first epoch
    and run again write what uninterrupted jobs write (margins, checkpoint parameters), and no state is left."""
    import torch

    from datafiles import make_cifar_root
    from simattr import datasets, subsets, trak

    monkeypatch.setenv(models.STATE_EVERY_ENV, "0")
    data = datasets.Spec.of(name="cifar10", root=str(make_cifar_root(tmp_path / "cifar", per_batch=2, n_test=4)))
    recipe = RECIPE
    shard = dict(data=data, purpose="datamodels", alpha=0.8, n_models=1, shard_size=1, shard=0, recipe=recipe,
                 progress=False)
    subsets.train_shard(out=str(tmp_path / "ref" / "shard-00000.h5"), **shard)
    trak.trak_checkpoints(data=data, recipe=recipe, n_checkpoints=1, seed=0, out=str(tmp_path / "ref" / "ck.pt"),
                          progress=False)
    real = models.cnn.save_state
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        subsets.train_shard(out=str(killed / "shard-00000.h5"), **shard)
    with pytest.raises(Interrupted):
        trak.trak_checkpoints(data=data, recipe=recipe, n_checkpoints=1, seed=0, out=str(killed / "ck.pt"),
                              progress=False)
    assert sorted(p.name for p in killed.glob("*.state.pt")) == ["ck.c0.state.pt", "shard-00000.m0.state.pt"]
    monkeypatch.setattr(models.cnn, "save_state", real)
    subsets.train_shard(out=str(killed / "shard-00000.h5"), **shard)
    trak.trak_checkpoints(data=data, recipe=recipe, n_checkpoints=1, seed=0, out=str(killed / "ck.pt"),
                          progress=False)
    a, _ = store.read_arrays(tmp_path / "ref" / "shard-00000.h5", ("margins",))
    b, _ = store.read_arrays(killed / "shard-00000.h5", ("margins",))
    np.testing.assert_array_equal(a["margins"], b["margins"])
    ref, got = (torch.load(p, weights_only=True)["states"][0] for p in (tmp_path / "ref" / "ck.pt", killed / "ck.pt"))
    assert _equal_states(ref, got)
    assert not list(killed.glob("*.state.pt")) and not list(killed.glob(".*.tmp"))
