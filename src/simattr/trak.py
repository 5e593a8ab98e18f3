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

Projector. On CPU traker uses its BasicProjector with Gaussian entries, generated from projector_seed (and the
checkpoint's id, so every checkpoint has its own projection) in blocks of 100 columns, regenerated for every
batch when proj_dim > 100: larger batches are much cheaper (digits, 5 MLPs, proj_dim 1024: batch_size 128
took 22 CPU-seconds, 512 or more about 7), as long as a batch's per-example gradients (batch x parameters
floats) fit in memory. Features and scores are float32 and a call is deterministic. On CUDA traker tries its CudaProjector (the `fast_jl` CUDA extension,
Rademacher entries) and, when fast_jl is missing or fails, logs an error and falls back to the BasicProjector
with Rademacher entries; on CUDA features and scores are float16 (traker's use_half_precision). So the same
projector_seed gives different projections on CPU and on CUDA: scores agree in distribution, not in bits.

The scores are TRAK's as TRAKer.finalize_scores returns them (transposed to targets x train): not sign-flipped,
not normalised. They can be negative (training images that pull the target's margin down); their scale depends
on proj_dim and the number of checkpoints, so compare them within a target's row.

proj_dim. Phi^T Phi is proj_dim x proj_dim of rank <= n_train, and traker inverts it unregularised: with
proj_dim >= n_train it is singular and the scores are noise (a warning is logged), and close below n_train they
are still noisy. On digits (1,437 training images, 5 MLPs) the top-scored training image has the target's
label for 69% of the test images at proj_dim 128, 36% at 1024 and 12% (chance) at 2048.

Importing this module is cheap: torch and traker are imported by the calls.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import numpy as np

from . import models
from .accel import default_device
from .errors import SimattrError

log = logging.getLogger(__name__)
EXPERIMENT = "targets"          # traker's experiment name for the scored targets (one per save_dir)


def train_checkpoints(*, recipe: models.Recipe, X_train, y_train: np.ndarray, n_classes: int, seeds,
                      device=None) -> list[dict]:
    """One trained model per seed (models.train_state: a state_dict of CPU tensors for models.torch_module),
    trained on the whole (X_train, y_train) exactly as train_predict trains it."""
    return [models.train_state(X_train, y_train, int(s), n_classes, recipe, device=device) for s in seeds]


def trak_scores(*, recipe: models.Recipe, X_train, y_train: np.ndarray, X_target, y_target: np.ndarray,
                checkpoints: list[dict], n_classes: int, proj_dim: int, projector_seed: int = 0,
                lambda_reg: float = 0.0,
                batch_size: int = 128, device=None, save_dir, progress: bool = False) -> np.ndarray:
    """TRAK scores of every training image for every target, (n_target, n_train) float32; higher = the training
    image supports the target's correct prediction (label y_target) more.

    X_train / X_target: the recipe's prepared inputs (models.prepare_inputs: arrays for mlp and resnet9, dataset
    Splits for resnet18, normalised as in training by models.net_inputs). checkpoints: state_dicts of the
    recipe's model (train_checkpoints). save_dir: traker's working folder (memory-mapped gradients and features,
    about n_train x proj_dim x 4 bytes x 3 per checkpoint on CPU); it is emptied first, and a non-empty folder
    that is not a traker folder is refused."""
    import torch

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
    dev = torch.device(device) if device is not None else default_device()
    save = _fresh_dir(save_dir)
    model = models.torch_module(recipe, _input_shape(X_train), n_classes).to(dev).eval()

    from trak import TRAKer

    with _traker_progress(progress):
        traker = TRAKer(model=model, task="image_classification", train_set_size=len(y_train), save_dir=str(save),
                        device=str(dev), proj_dim=int(proj_dim), projector_seed=int(projector_seed),
                        lambda_reg=float(lambda_reg),
                        use_half_precision=dev.type == "cuda", load_from_save_dir=False,
                        logging_level=logging.WARNING)
        for k, state in enumerate(checkpoints):
            traker.load_checkpoint(state, model_id=k)
            for xb, yb in _bar(_batches(recipe, X_train, y_train, batch_size, dev), progress,
                               f"trak: train features, checkpoint {k + 1}/{len(checkpoints)}",
                               -(-len(y_train) // batch_size)):
                traker.featurize(batch=(xb, yb), num_samples=len(yb))
        traker.finalize_features()
        _rearm_projector(traker.projector)
        for k, state in enumerate(checkpoints):
            traker.start_scoring_checkpoint(exp_name=EXPERIMENT, checkpoint=state, model_id=k,
                                            num_targets=len(y_target))
            for xb, yb in _bar(_batches(recipe, X_target, y_target, batch_size, dev), progress,
                               f"trak: target gradients, checkpoint {k + 1}/{len(checkpoints)}",
                               -(-len(y_target) // batch_size)):
                traker.score(batch=(xb, yb), num_samples=len(yb))
        scores = traker.finalize_scores(exp_name=EXPERIMENT)
    return np.ascontiguousarray(np.asarray(scores, dtype=np.float32).T)


def _rearm_projector(projector) -> None:
    """traker 0.3.2: finalize_features frees the BasicProjector's matrix, and a one-block projector
    (proj_dim <= 100) that scores the checkpoint it featurized last never rebuilds it (AttributeError:
    'proj_matrix'; one checkpoint). Forgetting which checkpoint it was built for makes the next projection
    rebuild it from the same seeds."""
    from trak.projectors import BasicProjector

    if isinstance(projector, BasicProjector) and not projector.proj_matrix_available:
        projector.model_id = None


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
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, leave=False)


@contextlib.contextmanager
def _traker_progress(progress: bool):
    """traker's own progress bars (finalizing features and scores) shown only with `progress`."""
    import functools

    import trak.traker as tt

    bar = tt.tqdm
    if not progress:
        tt.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        tt.tqdm = bar
