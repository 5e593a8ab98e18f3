"""The models retrained under attribution, behind one call:

    train_predict(X_train, y_train, X_eval, seeds=[...], n_classes=C, recipe=Recipe(...)) -> probs (S, n_eval, C)

`mlp` (the digits default): in -> hidden -> classes, ReLU, trained full-batch with Adam on standardised
pixels. It is written in numpy, so a support worker starts in a fraction of a second (no torch import); BLAS
runs on one thread so that a model's bits do not depend on the cores its task was given.

`resnet9` (the CIFAR-10 protocol of method.md): the DAWNBench ResNet-9, SGD with Nesterov momentum, a
triangular learning rate (0 -> lr at 20% of the steps -> 0), label smoothing, random flip + translate (4 px)
+ cutout (8 x 8) drawn from the model's seed. The whole training set sits on the device and is augmented
there; on CUDA it trains in bfloat16 autocast with channels-last tensors. Inputs are images (N, C, H, W)
normalised per channel (`prepare_inputs`).

A model's randomness comes only from its own seed (initialisation, batch order, augmentation).

Training states (docs/data-contract.md, "Training states"): a CNN training given a `TrainingState` saves its
state (network, optimiser, step, epoch, generators) atomically at an epoch boundary once at least
`state_every_s()` seconds have passed since its last save, resumes from a state whose identity matches (recipe,
seed, training labels, the caller's training-set identity, device type, versions) and deletes it when the model
is done: a task killed mid-model (time limit, preemption) loses at most that interval and an epoch.

For model-based attribution (trak.py): `train_predict(..., logits=True)` gives raw logits, `margins` the
correct-class margin of datamodels / LDS / TRAK, and `train_state` the trained parameters of one seed's model
(the same bits as train_predict) as a state_dict for `torch_module`, the recipe's model as a torch nn.Module.

By role: recipe (the Recipe, inputs, margins), mlp (numpy), cnn (torch), state (training states); this module holds
the one call, train_predict, and gathers the rest so callers keep models.NAME.
"""
from __future__ import annotations

import numpy as np

from .cnn import GlobalPool, augment_batch, net_inputs, resnet9, torch_module, train_predict_cnn, train_state
from .mlp import predict_logits, predict_mlp, train_mlp, train_one_mlp
from .recipe import (
    CNN_MODELS,
    FIELDS,
    MODELS,
    STREAMED_MODELS,
    Recipe,
    margins,
    one_blas_thread,
    prepare_inputs,
    standardise,
)
from .state import (
    STATE_EVERY_ENV,
    STATE_FORMAT,
    TrainingState,
    drop_state,
    load_state,
    save_state,
    state_every_s,
    state_identity,
)


def train_predict(X_train: np.ndarray, y_train: np.ndarray, X_eval: np.ndarray, *, seeds: list[int],
                  n_classes: int, recipe: Recipe, logits: bool = False, device=None,
                  states: list[TrainingState | None] | None = None) -> np.ndarray:
    """Train one model per seed on (X_train, y_train); class probabilities on X_eval, shape (S, n_eval, C), or
    the raw logits when `logits` (the same models: only the last softmax is left out). CNNs train on `device`
    (default: accel.default_device); the MLP is numpy, on the CPU. `states`: one TrainingState (or None) per
    seed, where a CNN training saves and resumes its state (the MLP, sub-second, keeps none).

    The models are trained one after the other: on CPU the stacked (batched) computation of train_mlp is
    bit-identical but slower per model here (measured on digits, 1 BLAS thread: about 80-98 ms per model one
    at a time against 95-123 ms in stacks of 2-5: its (S, n, hidden) arrays no longer fit in cache)."""
    if len(seeds) == 0:
        return np.zeros((0, len(X_eval), n_classes), np.float32)
    if recipe.name in CNN_MODELS:
        states = list(states) if states is not None else [None] * len(seeds)
        if len(states) != len(seeds):
            raise ValueError(f"{len(states)} training states for {len(seeds)} seeds")
        return np.stack([train_predict_cnn(X_train, y_train, X_eval, int(s), n_classes, recipe, device=device,
                                           logits=logits, state=st) for s, st in zip(seeds, states)])
    predict = predict_logits if logits else predict_mlp
    with one_blas_thread():
        out = [predict(train_one_mlp(X_train, y_train, int(s), n_classes, recipe), X_eval)[0] for s in seeds]
        return np.stack(out)


__all__ = ["resnet9", "GlobalPool", "augment_batch", "net_inputs", "train_predict_cnn", "torch_module",
           "train_state", "train_mlp", "predict_logits", "predict_mlp", "train_one_mlp", "MODELS",
           "CNN_MODELS", "STREAMED_MODELS", "FIELDS", "Recipe", "one_blas_thread", "prepare_inputs",
           "standardise", "margins", "STATE_FORMAT", "STATE_EVERY_ENV", "TrainingState", "state_every_s",
           "state_identity", "load_state", "save_state", "drop_state", "train_predict"]
