"""The retrained model's recipe (the config's `model`) and what every model shares: its inputs, one BLAS thread,
the correct-class margin."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from ..errors import SimattrError
from ..typed import Named

MODELS = ("mlp", "resnet9", "resnet18")
CNN_MODELS = ("resnet9", "resnet18")
STREAMED_MODELS = ("resnet18",)       # trained from the dataset's files, never held in memory or in queries.h5
#: the fields each model reads (its identity; the others are None in its Recipe)
FIELDS = {"mlp": ("name", "hidden", "steps", "lr", "weight_decay"),
          "resnet9": ("name", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "deterministic"),
          "resnet18": ("name", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "deterministic")}


@dataclass(frozen=True)
class Recipe(Named):
    """The retrained model (the config's `model`). No defaults here: the schema has them (config.defaults);
    the fields a model does not read (FIELDS) are None."""
    name: str
    hidden: int | None            # mlp
    steps: int | None             # mlp: full-batch Adam steps
    lr: float                     # mlp: Adam; resnet9: the triangular schedule's peak
    weight_decay: float
    epochs: int | None            # resnet9, resnet18
    batch_size: int | None        # resnet9, resnet18
    label_smoothing: float | None  # resnet9, resnet18
    deterministic: bool | None    # CNNs on CUDA: deterministic algorithms (same seed, same bits; slower)
    FIELDS = FIELDS               # the fields each model reads (a class attribute, not a field)
    WHAT = "model"                # its config section

    def __post_init__(self):
        if self.name not in MODELS:
            raise SimattrError(f"unknown model '{self.name}'; valid: {', '.join(MODELS)}")


_BLAS = None


def one_blas_thread():
    """BLAS pinned to one thread: a model's bits then never depend on the cores its task was given."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def prepare_inputs(recipe: Recipe, train_images: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """The model's inputs: flattened standardised pixels (mlp) or images normalised per channel by the train
    set's mean and std, stored as float16 (resnet9: half the bytes; trained in float32 / bfloat16). Streamed
    recipes (resnet18) take dataset Splits as they are: they normalise while training."""
    if recipe.name in STREAMED_MODELS:
        return [train_images, *others]
    if recipe.name not in CNN_MODELS:
        return standardise(train_images, *others)
    tr = np.asarray(train_images, dtype=np.float32)
    mean = tr.mean(axis=(0, 2, 3), keepdims=True)
    std = np.maximum(tr.std(axis=(0, 2, 3), keepdims=True), 1e-3)
    return [((np.asarray(a, np.float32) - mean) / std).astype(np.float16) for a in (train_images, *others)]


def standardise(train_images: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Flatten images and standardise every array by the train set's per-pixel mean and std."""
    tr = train_images.reshape(len(train_images), -1).astype(np.float32)
    mean = tr.mean(0)
    std = np.maximum(tr.std(0), 1e-3)
    return [(a.reshape(len(a), -1).astype(np.float32) - mean) / std for a in (train_images, *others)]


def margins(logits: np.ndarray, labels) -> np.ndarray:
    """The margin of datamodels, LDS and TRAK: the correct class's logit minus the logsumexp of the other logits
    (log p / (1 - p) of the correct class). logits (..., C) with C >= 2, labels broadcastable to (...); float64,
    shape (...). Computed stably (the others' logsumexp is shifted by their max)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] < 2:
        raise SimattrError(f"margins need logits (..., C) with C >= 2, got shape {z.shape}")
    y = np.broadcast_to(np.asarray(labels, dtype=np.int64), z.shape[:-1])[..., None]
    correct = np.take_along_axis(z, y, -1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y, -np.inf, -1)
    top = others.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    lse = np.log(np.exp(others - top).sum(-1)) + top[..., 0]
    return correct - lse
