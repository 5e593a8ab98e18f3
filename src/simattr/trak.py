"""TRAK scores (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale") for the model simattr retrains,
computed by the `traker` package (class trak.TRAKer):

    checkpoints = train_checkpoints(recipe=r, X_train=Xtr, y_train=ytr, n_classes=C, seeds=[0, 1, 2, 3, 4])
    trak_scores(recipe=r, X_train=Xtr, y_train=ytr, X_target=Xte, y_target=yte, checkpoints=checkpoints,
                n_classes=C, proj_dim=2048, save_dir=tmp) -> (n_target, n_train) float32

What is computed. For each checkpoint theta_k, traker's `image_classification` task takes per-example gradients
of the margin f(z; theta) = log p / (1 - p) of the correct class (the correct logit minus the logsumexp of the
others: models.margins), projects them to proj_dim with a random JL matrix P_k, and builds the training features
Phi_k (n_train, proj_dim). A target's score against training image i is, averaged over the checkpoints,
g_k(target)^T (Phi_k^T Phi_k)^-1 phi_k(i), times the checkpoint average of Q_i = 1 - p(correct | train image i).
Higher = training image i pushes the target's correct-class margin up more (supports its correct prediction).

Which model and checkpoints. The model is the recipe's own (models.torch_module): the numpy MLP of the digits
default as torch Linear layers, ResNet-9 / ResNet-18 in eval mode (BatchNorm running statistics). The checkpoints
are final models trained on the whole training set from different seeds, exactly as train_predict trains them
(train_checkpoints -> models.train_state: the same bits); no intermediate-epoch checkpoints. Gradients are taken
in float32 at the trained weights (on CUDA the CNNs were trained in bfloat16 autocast).

Projector and precision. Every device uses simattr's HashedProjector: a Rademacher (+-1) JL matrix whose entry
(row, column) is a hash of (projector_seed, checkpoint id, row, column) computed with integer arithmetic that is
the same on the CPU and on CUDA, generated block by block (never whole: ResNet-9's is 6.5M x proj_dim), so the
same projector_seed gives the same projection everywhere, and the CPU's and CUDA's scores agree up to float32
rounding (traker's own choice differs: Gaussian on the CPU, its fast_jl CUDA extension or a Rademacher
fallback on CUDA, drawn from device generators). Features, the kernel Phi^T Phi and the scores are float32 on
every device (traker's use_half_precision is off): float16 features sum 50,000 squared entries into the kernel
and lose most of its digits. float32 costs n_train x proj_dim x 4 bytes per checkpoint in save_dir (CIFAR-10
at proj_dim 2048: 400 MB). The cost of the projection is hashing grad_dim x proj_dim entries per batch of
batch_size images: larger batches are much cheaper, as long as a batch's per-example gradients (batch x
parameters floats) fit in memory.

The scores are TRAK's as TRAKer.finalize_scores returns them (transposed to targets x train): not sign-flipped,
not normalised. They can be negative (training images that pull the target's margin down); their scale depends
on proj_dim and the number of checkpoints, so compare them within a target's row.

proj_dim. Phi^T Phi is proj_dim x proj_dim of rank <= n_train, and traker inverts it unregularised: with
proj_dim >= n_train it is singular and the scores are noise (a warning is logged), and close below n_train they
are still noisy. On digits (1,437 training images, 5 MLPs) the top-scored training image has the target's
label for 64% of the test images at proj_dim 128, 36% at 1024 and 12% (chance) at 2048 (1.6, 2.4 and 4.7 s
on 2 CPU cores at batch_size 512).

Importing this module is cheap: torch and traker are imported by the calls.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import backbones, datasets, models, store
from .accel import default_device
from .accel import device as accel_device
from .errors import SimattrError

log = logging.getLogger(__name__)
EXPERIMENT = "targets"          # traker's experiment name for the scored targets (one per save_dir)
#: how the scores are computed beyond the config (a rule param: a new value reruns the trak rule)
PROJECTOR = "hashed-rademacher-float32"


def train_checkpoints(*, recipe: models.Recipe, X_train, y_train: np.ndarray, n_classes: int, seeds,
                      device=None, states: list | None = None) -> list[dict]:
    """One trained model per seed (models.train_state: a state_dict of CPU tensors for models.torch_module),
    trained on the whole (X_train, y_train) exactly as train_predict trains it. `states`: one
    models.TrainingState (or None) per seed, where a CNN training saves and resumes its state."""
    states = list(states) if states is not None else [None] * len(seeds)
    return [models.train_state(X_train, y_train, int(s), n_classes, recipe, device=device, state=st)
            for s, st in zip(seeds, states)]


def trak_scores(*, recipe: models.Recipe, X_train, y_train: np.ndarray, X_target, y_target: np.ndarray,
                checkpoints: list[dict], n_classes: int, proj_dim: int, projector_seed: int = 0,
                lambda_reg: float = 0.0, batch_size: int, device=None, save_dir, progress: bool = False) -> np.ndarray:
    """TRAK scores of every training image for every target, (n_target, n_train) float32; higher = the training
    image supports the target's correct prediction (label y_target) more.

    X_train / X_target: the recipe's prepared inputs (models.prepare_inputs: arrays for mlp and resnet9, dataset
    Splits for resnet18, normalised as in training by models.net_inputs). checkpoints: state_dicts of the
    recipe's model (train_checkpoints). save_dir: traker's working folder (memory-mapped gradients and features,
    about n_train x proj_dim x 4 bytes x 3 per checkpoint on CPU); it is emptied first, and a non-empty folder
    that is not a traker folder is refused."""
    if not checkpoints:
        raise SimattrError("trak needs at least one checkpoint")
    y_train = np.asarray(y_train, dtype=np.int64)
    y_target = np.asarray(y_target, dtype=np.int64)
    if len(X_train) != len(y_train) or len(X_target) != len(y_target):
        raise SimattrError(f"trak: {len(X_train)} training images with {len(y_train)} labels, "
                           f"{len(X_target)} targets with {len(y_target)} labels")
    if len(y_train) == 0 or len(y_target) == 0:
        return np.zeros((len(y_target), len(y_train)), np.float32)
    if proj_dim >= len(y_train):
        log.warning("trak: proj_dim %d >= %d training images: the features' Phi^T Phi (proj_dim x proj_dim, rank "
                    "<= n_train) is singular and the scores are dominated by its inverse's noise; use a proj_dim "
                    "well below the training set size", proj_dim, len(y_train))
    dev = accel_device(device)
    save = _fresh_dir(save_dir)
    model = models.torch_module(recipe, _input_shape(X_train), n_classes).to(dev).eval()

    from trak import TRAKer

    with _traker_progress(progress):
        grad_dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
        traker = TRAKer(model=model, task="image_classification", train_set_size=len(y_train), save_dir=str(save),
                        device=str(dev), proj_dim=int(proj_dim), projector_seed=int(projector_seed),
                        projector=HashedProjector(grad_dim, int(proj_dim), int(projector_seed), dev),
                        lambda_reg=float(lambda_reg), use_half_precision=False, load_from_save_dir=False,
                        logging_level=logging.WARNING)
        for k, state in enumerate(checkpoints):
            traker.load_checkpoint(state, model_id=k)
            for xb, yb in _bar(_batches(recipe, X_train, y_train, batch_size, dev), progress,
                               f"trak: train features, checkpoint {k + 1}/{len(checkpoints)}",
                               -(-len(y_train) // batch_size)):
                traker.featurize(batch=(xb, yb), num_samples=len(yb))
        traker.finalize_features()
        for k, state in enumerate(checkpoints):
            traker.start_scoring_checkpoint(exp_name=EXPERIMENT, checkpoint=state, model_id=k,
                                            num_targets=len(y_target))
            for xb, yb in _bar(_batches(recipe, X_target, y_target, batch_size, dev), progress,
                               f"trak: target gradients, checkpoint {k + 1}/{len(checkpoints)}",
                               -(-len(y_target) // batch_size)):
                traker.score(batch=(xb, yb), num_samples=len(yb))
        scores = traker.finalize_scores(exp_name=EXPERIMENT)
    return np.ascontiguousarray(np.asarray(scores, dtype=np.float32).T)


_MASK = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch and numpy compute with (two's complement)."""
    c &= _MASK
    return c - (1 << 64) if c >= 1 << 63 else c


_MIX = tuple(_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def rademacher_signs(key, xp):
    """+-1 from int64 keys by a splitmix64-style mix in wrapping int64 arithmetic: the same bits in numpy, on a
    CPU torch tensor and on a CUDA one (`xp`: the module whose ops the keys take: numpy or torch)."""
    z = key * _MIX[0]
    z = (z ^ (z >> 31)) * _MIX[1]
    z = (z ^ (z >> 29)) * _MIX[2]
    z = z ^ (z >> 32)
    return (z & 1) * 2 - 1


def projection_salt(seed: int, model_id: int) -> int:
    """The part of every key that names the projection: projector_seed and the checkpoint id."""
    return _signed(((int(seed) * 0x100000001B3) ^ (int(model_id) * 0xC2B2AE3D27D4EB4F)) << 41)


def _make_projector():
    from trak.projectors import AbstractProjector, ProjectionType, vectorize

    class HashedProjector(AbstractProjector):
        """traker projector: x -> x P with P (grad_dim, proj_dim), P[i, j] = rademacher_signs(salt + i *
        proj_dim + j), salt = projection_salt(seed, model_id): one matrix per (projector_seed, checkpoint), the
        same on every device, generated in column blocks of at most `budget` entries, float32."""

        def __init__(self, grad_dim: int, proj_dim: int, seed: int, device, budget: int | None = None):
            import torch

            super().__init__(grad_dim, proj_dim, seed, ProjectionType.rademacher, torch.device(device))
            big = self.device.type == "cuda"
            self.budget = budget or (1 << 27 if big else 1 << 22)
            self.block = max(1, min(proj_dim, self.budget // max(1, grad_dim)))

        def matrix(self, model_id: int, start: int, stop: int):
            """Columns start..stop-1 of checkpoint model_id's P, float32 on the device."""
            import torch

            rows = torch.arange(self.grad_dim, dtype=torch.int64, device=self.device)[:, None] * self.proj_dim
            cols = torch.arange(start, stop, dtype=torch.int64, device=self.device)[None, :]
            return rademacher_signs(rows + cols + projection_salt(self.seed, model_id), torch).float()

        def project(self, grads, model_id: int):
            import torch

            if isinstance(grads, dict):
                grads = vectorize(grads, device=self.device)
            g = grads.to(device=self.device, dtype=torch.float32)
            out = torch.empty(g.shape[0], self.proj_dim, dtype=torch.float32, device=self.device)
            for st in range(0, self.proj_dim, self.block):
                ed = min(st + self.block, self.proj_dim)
                out[:, st:ed] = g @ self.matrix(model_id, st, ed)
            return out

        def free_memory(self):
            pass                                    # nothing is kept between calls

    return HashedProjector


def HashedProjector(grad_dim: int, proj_dim: int, seed: int, device, budget: int | None = None):
    """A device-independent Rademacher JL projector for traker (see the module's docstring); traker is imported
    here, on first use."""
    global _PROJECTOR
    if _PROJECTOR is None:
        _PROJECTOR = _make_projector()
    return _PROJECTOR(grad_dim, proj_dim, seed, device, budget)


_PROJECTOR = None


def _input_shape(X) -> tuple[int, ...]:
    """One prepared input's shape: an array's row shape, or a Split's first image's."""
    return tuple(X.shape[1:]) if hasattr(X, "shape") else tuple(np.shape(X[0]))


def _batches(recipe: models.Recipe, X, y: np.ndarray, batch_size: int, dev):
    """(inputs, labels) tensor batches on `dev`, the inputs as the recipe's network takes them."""
    import torch

    yt = torch.as_tensor(y, dtype=torch.int64)
    for s, xb in zip(range(0, len(y), batch_size), models.net_inputs(recipe, X, dev, batch_size)):
        yield xb, yt[s:s + batch_size].to(dev)


def _fresh_dir(save_dir) -> Path:
    """save_dir emptied (or made). traker reads experiments.json when scoring starts but writes it only when it
    loads a save_dir (load_from_save_dir=True), so it is written here."""
    p = Path(save_dir)
    if p.exists():
        if not p.is_dir():
            raise SimattrError(f"trak save_dir {p} is a file")
        if any(p.iterdir()) and not (p / "scores").is_dir():
            raise SimattrError(f"refusing to empty trak save_dir {p}: it is not empty and not a traker folder")
        shutil.rmtree(p)
    p.mkdir(parents=True)
    (p / "experiments.json").write_text("{}")
    return p


def _bar(it, progress: bool, desc: str, total: int):
    if not progress:
        return it
    return tqdm(it, desc=desc, total=total, leave=False)


@contextlib.contextmanager
def _traker_progress(progress: bool):
    """traker's own progress bars (finalizing features and scores) shown only with `progress`."""
    import trak.traker as tt

    bar = tt.tqdm
    if not progress:
        tt.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        tt.tqdm = bar


# The stages (the trak_checkpoints and trak rules)


def trak_checkpoints(*, data: datasets.Spec, recipe, n_checkpoints: int, seed: int, out: str,
                     progress: bool = True) -> None:
    """Train the full-data models whose gradients TRAK uses (seeds from (dataset, seed, i)); save their states. A CNN
    checkpoint's training saves its state beside `out` ({stem}.c{i}.state.pt, models.TrainingState): a rerun resumes
    it mid-training."""
    import torch

    t0 = time.perf_counter()
    tr = datasets.load_split(data, "train")
    streamed = recipe.name in models.STREAMED_MODELS
    (X_train,) = models.prepare_inputs(recipe, tr if streamed else tr.images)
    seeds = [store.seed_from("trak-checkpoint", data.name, seed, i) for i in range(n_checkpoints)]
    where = Path(out)
    training = [models.TrainingState(path=where.with_name(f"{where.stem}.c{i}.state.pt"), name=f"TRAK checkpoint {i}",
                                     data=store.config_hash({**data.identity(), "purpose": "trak-checkpoints"}))
                for i in range(n_checkpoints)]
    states = train_checkpoints(recipe=recipe, X_train=X_train, y_train=tr.labels,
                               n_classes=len(tr.class_names), seeds=seeds, states=training)
    identity = {**data.identity(), "recipe": recipe.identity(), "n_checkpoints": n_checkpoints, "seed": seed}
    with store.atomic_path(out) as tmp:
        torch.save({"states": states, "seeds": seeds, "identity": json.dumps(identity, sort_keys=True),
                    "config_hash": store.config_hash(identity)}, tmp)
    log.info("TRAK: %d %s checkpoints trained in %.1f s -> %s", n_checkpoints, recipe.name,
             time.perf_counter() - t0, out)


def trak_attributions(*, data: datasets.Spec, recipe, checkpoints: str, proj_dim: int, projector_seed: int,
                      batch_size: int, out: str, lambda_reg: float, progress: bool = True) -> None:
    """TRAK scores of every test image against every training image (through the traker package)."""

    t0 = time.perf_counter()
    ck = backbones.torch_load(checkpoints, "TRAK checkpoints not found (rule trak_checkpoints makes them)",
                              "not a TRAK checkpoints file; rerun rule trak_checkpoints")
    identity = json.loads(ck["identity"])
    if {k: identity.get(k) for k in data.identity()} != data.identity() or identity["recipe"] != recipe.identity():
        raise SimattrError(f"{checkpoints}: made for other data or another model ({identity}); rerun its rule")
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    streamed = recipe.name in models.STREAMED_MODELS
    X_train, X_test = models.prepare_inputs(recipe, *((tr, te) if streamed else (tr.images, te.images)))
    device = default_device()
    with tempfile.TemporaryDirectory(prefix=".trak-", dir=Path(out).parent) as work:
        scores = trak_scores(recipe=recipe, X_train=X_train, y_train=tr.labels, X_target=X_test,
                                  y_target=te.labels, checkpoints=ck["states"], n_classes=len(tr.class_names),
                                  proj_dim=proj_dim, projector_seed=projector_seed, lambda_reg=lambda_reg,
                                  batch_size=batch_size, device=device, save_dir=work, progress=progress)
    if not np.isfinite(scores).all():
        raise SimattrError(f"TRAK produced NaN or inf scores (proj_dim {proj_dim}); see {checkpoints}")
    attrs = {"dataset": data.name, "ranker": "trak", "checkpoints_hash": ck["config_hash"],
             "n_checkpoints": len(ck["states"]), "proj_dim": proj_dim, "projector_seed": projector_seed,
             "lambda_reg": lambda_reg, "projector": PROJECTOR,
             "device": str(device), "wall_s": time.perf_counter() - t0}
    store.write_arrays(out, {"scores": scores.astype(np.float32), "test_labels": te.labels.astype(np.int64),
                             "train_labels": tr.labels.astype(np.int64)}, attrs)
    log.info("TRAK: %d test x %d train images scored with %d checkpoints, proj_dim %d, on %s in %.1f s -> %s",
             len(te), len(tr), len(ck["states"]), proj_dim, device, time.perf_counter() - t0, out)
