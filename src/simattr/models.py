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
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .accel import configure, release
from .accel import device as accel_device
from .augment import crop_resize
from .backbones import NORMALIZE
from .config import defaults
from .datasets import Stream
from .errors import SimattrError
from .images import tensor_to_unit
from .store import CONTRACT_VERSION, atomic_path, config_hash
from .typed import Named

log = logging.getLogger("simattr")

MODELS = ("mlp", "resnet9", "resnet18")
CNN_MODELS = ("resnet9", "resnet18")
STREAMED_MODELS = ("resnet18",)       # trained from the dataset's files, never held in memory or in queries.h5
#: the fields each model reads (its identity; the others are None in its Recipe)
FIELDS = {"mlp": ("name", "hidden", "steps", "lr", "weight_decay"),
          "resnet9": ("name", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "deterministic"),
          "resnet18": ("name", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "deterministic")}


@dataclass(frozen=True)
class Recipe(Named):
    """The retrained model (the config's `model`). No defaults here: the schema has them (settings.defaults);
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


def _init(seed: int, d: int, h: int, c: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(np.float32)
    w2 = (rng.standard_normal((h, c)) * np.sqrt(1.0 / h)).astype(np.float32)
    return [w1, np.zeros((1, h), np.float32), w2, np.zeros((1, c), np.float32)]


def train_mlp(X: np.ndarray, y: np.ndarray, seeds: list[int], n_classes: int, *, hidden: int, steps: int,
              lr: float, weight_decay: float = 0.0) -> list[np.ndarray]:
    """Train len(seeds) MLPs at once; returns stacked parameters [W1 (S,d,h), b1, W2, b2]."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    params = [np.stack(p) for p in zip(*(_init(int(s), d, hidden, n_classes) for s in seeds))]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.zeros((n, n_classes), np.float32)
    onehot[np.arange(n), y] = 1.0
    b1m, b2m = 0.9, 0.999
    inv_n = np.float32(1.0 / max(n, 1))
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        h = X @ w1 + b1                              # (S, n, hidden)
        a = np.maximum(h, 0.0)
        z = a @ w2 + b2                              # (S, n, C)
        z -= z.max(-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(-1, keepdims=True)
        g = (p - onehot) * inv_n
        gw2 = a.transpose(0, 2, 1) @ g
        gb2 = g.sum(1, keepdims=True)
        ga = (g @ w2.transpose(0, 2, 1)) * (h > 0)
        gw1 = X.T @ ga
        gb1 = ga.sum(1, keepdims=True)
        grads = [gw1, gb1, gw2, gb2]
        if weight_decay:
            grads[0] = grads[0] + weight_decay * w1
            grads[2] = grads[2] + weight_decay * w2
        c1 = np.float32(lr / (1.0 - b1m ** t))
        c2 = np.float32(1.0 / (1.0 - b2m ** t))
        for i, gr in enumerate(grads):
            m[i] *= b1m
            m[i] += (1 - b1m) * gr
            v[i] *= b2m
            v[i] += (1 - b2m) * gr * gr
            params[i] -= c1 * m[i] / (np.sqrt(v[i] * c2) + 1e-8)
    return params


def predict_logits(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """The MLPs' raw logits on X: (S, n, C) for stacked parameters (train_mlp)."""
    w1, b1, w2, b2 = params
    return np.maximum(np.asarray(X, np.float32) @ w1 + b1, 0.0) @ w2 + b2


def predict_mlp(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """The MLPs' class probabilities on X: the softmax of predict_logits."""
    z = predict_logits(params, X)
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


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
        out = [predict(_train_one_mlp(X_train, y_train, int(s), n_classes, recipe), X_eval)[0] for s in seeds]
        return np.stack(out)


def _train_one_mlp(X_train: np.ndarray, y_train: np.ndarray, seed: int, n_classes: int,
                   recipe: Recipe) -> list[np.ndarray]:
    """One recipe MLP from `seed` (stacked parameters, S = 1); the caller pins BLAS to one thread."""
    return train_mlp(X_train, y_train, [seed], n_classes, hidden=recipe.hidden, steps=recipe.steps, lr=recipe.lr,
                     weight_decay=recipe.weight_decay)


# ------------------------------------------------------------------------------------------- ResNet-9
def resnet9(in_channels: int, n_classes: int):
    """The DAWNBench ResNet-9 (Page 2018): prep 64, [128, pool, res 128], [256, pool], [512, pool, res 512],
    global max-pool, linear, output scaled by 1/8."""
    from torch import nn

    def cbr(ci, co):
        return [nn.Conv2d(ci, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(*cbr(c, c), *cbr(c, c))

        def forward(self, x):
            return x + self.f(x)

    class Scale(nn.Module):
        def forward(self, x):
            return x * 0.125

    return nn.Sequential(*cbr(in_channels, 64), *cbr(64, 128), nn.MaxPool2d(2), Residual(128),
                         *cbr(128, 256), nn.MaxPool2d(2), *cbr(256, 512), nn.MaxPool2d(2), Residual(512),
                         GlobalPool("max"), nn.Flatten(), nn.Linear(512, n_classes, bias=False), Scale())


def _global_pool_class():
    from torch import nn

    class GlobalPool(nn.Module):
        """Global max / mean over H, W (keepdim): the same values as AdaptiveMaxPool2d(1) / AdaptiveAvgPool2d(1)
        (max exactly; mean up to summation order) with backward passes that have deterministic CUDA kernels
        (the adaptive pools' CUDA backward has none, so model.deterministic would refuse them)."""

        def __init__(self, kind: str):
            super().__init__()
            self.kind = kind

        def forward(self, x):
            return x.amax(dim=(2, 3), keepdim=True) if self.kind == "max" else x.mean(dim=(2, 3), keepdim=True)

    return GlobalPool


def GlobalPool(kind: str):
    """A GlobalPool module ('max' or 'mean'); see _global_pool_class (torch is imported on first use)."""
    global _GLOBAL_POOL
    if _GLOBAL_POOL is None:
        _GLOBAL_POOL = _global_pool_class()
    return _GLOBAL_POOL(kind)


_GLOBAL_POOL = None


def _resnet18(n_classes: int, deterministic: bool):
    """torchvision's ResNet-18; with model.deterministic its average pool is GlobalPool('mean') (deterministic
    CUDA backward; the same parameters and state_dict)."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=n_classes)
    if deterministic:
        net.avgpool = GlobalPool("mean")
    return net


def augment_batch(x, gen, shift: int = 4, cutout: int = 8):
    """Random horizontal flip, translation by up to `shift` pixels (reflect padding) and a cutout square, per
    image, on x's device; the random numbers come from `gen` on its own device (a generator on x's device: no
    copy from the host, so nothing waits for the GPU)."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    dev, gdev = x.device, gen.device
    flip = (torch.rand(b, generator=gen, device=gdev) < 0.5).to(dev)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if shift and h > 2 * shift and w > 2 * shift:
        p = F.pad(x, (shift,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen, device=gdev).to(dev)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen, device=gdev).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(b, c, h, w + 2 * shift)
        p = torch.gather(p, 2, rows)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(b, c, h, w)
        x = torch.gather(p, 3, cols)
    side = min(cutout, h, w)
    if side:
        y0 = torch.randint(0, h - side + 1, (b,), generator=gen, device=gdev).to(dev)
        x0 = torch.randint(0, w - side + 1, (b,), generator=gen, device=gdev).to(dev)
        ys, xs = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
        m = (((ys >= y0[:, None]) & (ys < (y0 + side)[:, None]))[:, :, None]
             & ((xs >= x0[:, None]) & (xs < (x0 + side)[:, None]))[:, None, :])
        x = x.masked_fill(m[:, None], 0.0)
    return x


def _workers() -> int:
    """Image-decoding processes for a streamed training set: the task's CPUs but one (SLURM's allocation, else
    this process's affinity), at most 16."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    return max(0, min(16, cpus - 1))


def _resident_batches(X, y, gen, bs: int, per_epoch: int, dev):
    """An epoch of (images, labels) batches from arrays kept on the device, augmented there (resnet9)."""
    import torch

    order = torch.randperm(len(y), generator=gen, device=gen.device).to(dev)
    for b in range(per_epoch):
        idx = order[b * bs:(b + 1) * bs]
        yield augment_batch(X[idx].float(), gen), y[idx]


def _streamed_batches(stream, n: int, gen, bs: int, per_epoch: int, dev, mean, std, aug_gen):
    """An epoch of batches of a streamed Split (datasets.Stream: uint8 tensors from persistent DataLoader workers,
    pinned on CUDA), scaled, randomly cropped, resized and flipped, and normalised on the device (resnet18)."""
    import torch


    order = torch.randperm(n, generator=gen)[:per_epoch * bs].numpy()
    for xb, yb in stream(order):
        xb = crop_resize(tensor_to_unit(xb, dev), aug_gen)
        yield (xb - mean) / std, yb.to(dev, non_blocking=True)


def _imagenet_stats(dev):
    """ImageNet's per-channel mean and std as (1, 3, 1, 1) tensors on `dev` (what resnet18's inputs are
    normalised with)."""
    import torch

    return tuple(torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in NORMALIZE["imagenet"])


def net_inputs(recipe: Recipe, X, device=None, batch_size: int = 256):
    """X batch by batch as the float32 tensors on `device` that the recipe's network takes: prepared arrays
    (prepare_inputs) as they are; resnet18's dataset Splits decoded (uint8 to the device, pinned on CUDA),
    scaled and normalised with ImageNet's mean/std there, as in training."""
    import torch


    dev = accel_device(device)
    streamed = recipe.name in STREAMED_MODELS
    mean, std = _imagenet_stats(dev) if streamed else (None, None)
    if hasattr(X, "stream"):
        batches = X.stream(batch_size, 0, pin=dev.type == "cuda")(np.arange(len(X)))
    else:
        batches = (torch.as_tensor(np.asarray(X[i:i + batch_size])) for i in range(0, len(X), batch_size))
    for xe in batches:
        xe = tensor_to_unit(xe, dev)
        yield (xe - mean) / std if streamed else xe


# ------------------------------------------------------------------------------------ training states
STATE_FORMAT = 1                            # the layout of a state file (part of every state's identity)
STATE_EVERY_ENV = "SIMATTR_STATE_EVERY_S"   # how launch.state_every_s reaches a training (launch.Task sets it)


@dataclass
class TrainingState:
    """Where one CNN training keeps its state, and what it must match to be resumed from.

    path: the state file ({...}.state.pt beside the journal or output of the job that trains the model). data: the
    caller's identity of the training images (which images, from which inputs: e.g. an answer's hash and k, a
    subset shard's hash and model id); the state's identity adds the recipe, seed, n_classes, the training labels,
    the device type and the versions. name: the model in log lines ("model k=3 seed=1"). every_s: the least
    seconds between two saves (None: state_every_s()). After training, resumed_at holds the epoch each resume of
    this model started at (empty when it trained in one go)."""
    path: Path
    data: str
    name: str
    every_s: float | None = None
    resumed_at: list[int] = field(default_factory=list)


def state_every_s() -> float:
    """The least seconds between two saves of a training state: SIMATTR_STATE_EVERY_S when set (launch.Task sets
    it from launch.state_every_s), else the schema's launch.state_every_s."""
    v = os.environ.get(STATE_EVERY_ENV, "").strip()
    if not v:
        return float(defaults()["launch"]["state_every_s"])
    try:
        every = float(v)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise SimattrError(f"{STATE_EVERY_ENV}={v!r}: expected a number of seconds >= 0")
    return every


def state_identity(recipe: Recipe, seed: int, n_classes: int, y_train, data: str, device_type: str) -> str:
    """The identity of one training's state: what must match for a state to be resumed from."""
    from . import __version__
    y = np.ascontiguousarray(np.asarray(y_train, dtype=np.int64))
    return config_hash({"recipe": recipe.identity(), "seed": int(seed), "n_classes": int(n_classes),
                        "n_train": len(y), "y_train": hashlib.sha256(y.tobytes()).hexdigest(), "data": str(data),
                        "device": device_type, "format": STATE_FORMAT, "simattr_version": __version__,
                        "contract_version": CONTRACT_VERSION})


def _load_state(state: TrainingState, identity: str) -> dict | None:
    """The saved state at state.path if it is this training's (else None, with a log line saying why)."""
    import torch

    path = Path(state.path)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is ignored, named in the log
        log.warning("%s: unreadable training state (%s: %s); ignored, %s starts afresh", path, type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "", state.name)
        return None
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        made = saved.get("identity") if isinstance(saved, dict) else None
        log.warning("%s: training state of another training (identity %s, expected %s: another recipe, seed or "
                    "training set); ignored and overwritten, %s starts afresh", path, made, identity, state.name)
        return None
    return saved


def _save_state(state: TrainingState, identity: str, *, epoch: int, step: int, net, opt, gen, dgen,
                resumed_at: list[int]) -> None:
    """Write the training's state atomically (a complete file or none: store.atomic_path)."""
    import torch


    blob = {"identity": identity, "format": STATE_FORMAT, "name": state.name, "epoch": int(epoch),
            "step": int(step), "net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
            "dgen": None if dgen is gen else dgen.get_state(), "resumed_at": list(resumed_at),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(state.path) as tmp:
        torch.save(blob, tmp)


def _drop_state(state: TrainingState | None) -> None:
    """The model is done: its state file goes, and any temporary file a killed save left beside it."""
    if state is None:
        return
    path = Path(state.path)
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def train_predict_cnn(X_train, y_train: np.ndarray, X_eval, seed: int, n_classes: int, recipe: Recipe,
                      device=None, logits: bool = False, state: TrainingState | None = None) -> np.ndarray:
    """Train one `recipe` CNN from `seed` on (X_train, y_train); class probabilities (n_eval, C) on X_eval, or
    the raw logits when `logits`. With a `state`, the training saves and resumes its state there (_train_cnn),
    deleted once the predictions are made.

    resnet9: X_train and X_eval are arrays (prepare_inputs), resident on the device. resnet18: they are
    dataset Splits (images in [0, 1]), streamed by DataLoader workers and normalised with ImageNet's mean/std."""
    dev = accel_device(device)
    net = _train_cnn(X_train, y_train, seed, n_classes, recipe, dev, state)
    out = _predict_cnn(net, X_eval, n_classes, recipe, dev, logits=logits)
    del net                                       # nothing else holds it (no optimiser / scheduler cycle) ...
    release(dev)                                  # ... so its memory goes back now
    _drop_state(state)
    return out


def _train_cnn(X_train, y_train: np.ndarray, seed: int, n_classes: int, recipe: Recipe, dev,
               state: TrainingState | None = None):
    """The training half of train_predict_cnn: one `recipe` CNN from `seed`, on `dev`, in eval mode.

    With a `state`: a saved state of this very training (state_identity) is resumed from (network, optimiser
    momentum, step, epoch, the generators of batch order and augmentation: the remaining epochs are the bits an
    uninterrupted training computes); one of another training is ignored (logged) and overwritten. At an epoch
    boundary before the last, the state is saved when at least state.every_s (state_every_s()) seconds have passed
    since the training started or last saved. The caller deletes it when the model is done (_drop_state). The
    learning rate is a function of the step (set by hand: no scheduler object), and the global torch RNG is used
    only to initialise the network from the seed, so nothing else needs saving."""
    import torch

    cuda = dev.type == "cuda"
    configure(recipe.deterministic, dev)
    streamed = recipe.name in STREAMED_MODELS
    # the batch order of a streamed set is drawn on the host (its decoders need it); everything else (the order
    # of a resident set, augmentation) from a generator on the device: no host round trip per step
    gen = torch.Generator().manual_seed(int(seed))
    dgen = gen if not cuda else torch.Generator(device=dev).manual_seed(int(seed))
    with torch.random.fork_rng(devices=[dev] if cuda else []):
        torch.manual_seed(int(seed))
        net = _resnet18(n_classes, recipe.deterministic) if streamed else resnet9(X_train.shape[1], n_classes)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    net = net.to(dev, memory_format=fmt)
    mean, std = _imagenet_stats(dev)
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=dev)
    X = None if streamed else torch.as_tensor(np.asarray(X_train), device=dev)     # resident; float16 halves it
    n = len(y)
    bs = min(recipe.batch_size, max(n, 1))
    per_epoch = max(1, n // bs) if n >= bs else 1                      # full batches (BatchNorm), at least one
    total = recipe.epochs * per_epoch
    peak = max(1, int(0.2 * total))
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, nesterov=True,
                          weight_decay=recipe.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    stream: Stream | None = None
    if streamed:        # decoders persist across epochs; a few batches decode faster than workers start
        stream = X_train.stream(bs, _workers() if n > 4 * bs else 0, labels=True, pin=cuda)
    start, identity, resumed_at = 0, None, []
    t = 0
    if state is not None:
        identity = state_identity(recipe, seed, n_classes, y_train, state.data, dev.type)
        saved = _load_state(state, identity)
        if saved is not None:
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            gen.set_state(saved["gen"])
            if dgen is not gen:
                dgen.set_state(saved["dgen"])
            start, t = int(saved["epoch"]), int(saved["step"])
            resumed_at = [*saved["resumed_at"], start]
            log.info("resumed %s at epoch %d of %d (%s)", state.name, start, recipe.epochs, state.path)
            del saved
        else:
            log.info("training %s from epoch 0 of %d (state: %s)", state.name, recipe.epochs, state.path)
        every = state.every_s if state.every_s is not None else state_every_s()
        last_save = time.monotonic()
    net.train()
    loss = torch.zeros(())
    try:
        for epoch in range(start, recipe.epochs):
            batches = _streamed_batches(stream, n, gen, bs, per_epoch, dev, mean, std, dgen) if streamed else \
                _resident_batches(X, y, dgen, bs, per_epoch, dev)
            for xb, yb in batches:
                # the triangular schedule, set by hand: an LR scheduler would hold the optimiser in a reference
                # cycle that keeps the parameters and momentum on the GPU until a full garbage collection
                opt.param_groups[0]["lr"] = recipe.lr * (t / peak if t < peak else
                                                         max(0.0, (total - t) / max(1, total - peak)))
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = loss_fn(net(xb.contiguous(memory_format=fmt)), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                t += 1
            if state is not None and epoch + 1 < recipe.epochs and time.monotonic() - last_save >= every:
                _save_state(state, identity, epoch=epoch + 1, step=t, net=net, opt=opt, gen=gen, dgen=dgen,
                            resumed_at=resumed_at)
                last_save = time.monotonic()
    finally:
        if stream is not None:
            stream.close()
    del opt
    if state is not None:
        state.resumed_at = resumed_at
    if n and not torch.isfinite(loss):
        raise SimattrError(f"{recipe.name} training diverged (loss {float(loss)}); lower model.lr (now {recipe.lr})")
    return net.eval()


def _predict_cnn(net, X_eval, n_classes: int, recipe: Recipe, dev, logits: bool = False) -> np.ndarray:
    """The prediction half of train_predict_cnn: class probabilities (or logits) (n_eval, C) of `net` on X_eval."""
    import torch

    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    out = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
        for xe in net_inputs(recipe, X_eval, dev):
            z = net(xe.contiguous(memory_format=fmt)).float()
            out.append(z if logits else torch.softmax(z, -1))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, n_classes), np.float32)


def torch_module(recipe: Recipe, input_shape: tuple[int, ...], n_classes: int):
    """The torch nn.Module whose forward is the recipe's model on the recipe's prepared inputs of shape
    `input_shape` (one example; prepare_inputs, net_inputs), randomly initialised (load a train_state into it):
    mlp: Linear(d, hidden), ReLU, Linear(hidden, C) on the flattened standardised pixels (d = prod(input_shape));
    resnet9: resnet9(input_shape[0], C); resnet18: _resnet18 (torchvision's resnet18(num_classes=C)). The global torch RNG is
    left as it was."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        if recipe.name == "mlp":
            d = int(np.prod(input_shape))
            return nn.Sequential(nn.Linear(d, recipe.hidden), nn.ReLU(), nn.Linear(recipe.hidden, n_classes))
        if recipe.name == "resnet9":
            return resnet9(int(input_shape[0]), n_classes)
        return _resnet18(n_classes, recipe.deterministic)


def train_state(X_train, y_train: np.ndarray, seed: int, n_classes: int, recipe: Recipe, *,
                device=None, state: TrainingState | None = None) -> dict:
    """Train one model from `seed` exactly as train_predict does (the same bits) and return its parameters as a
    state_dict of CPU tensors for torch_module. mlp: train_mlp's W1 (d, h), b1, W2 (h, C), b2 as the Linear
    layers' weight (h, d), bias, weight (C, h), bias. CNNs: the trained network's state_dict (BatchNorm running
    statistics included). `state`: where a CNN training saves and resumes its state (train_predict_cnn); deleted
    once the parameters are returned."""
    import torch

    if recipe.name in CNN_MODELS:
        dev = accel_device(device)
        net = _train_cnn(X_train, y_train, int(seed), n_classes, recipe, dev, state)
        out = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        _drop_state(state)
        return out
    with one_blas_thread():
        w1, b1, w2, b2 = (p[0] for p in _train_one_mlp(X_train, y_train, int(seed), n_classes, recipe))
    return {k: torch.from_numpy(np.ascontiguousarray(v))
            for k, v in (("0.weight", w1.T), ("0.bias", b1[0]), ("2.weight", w2.T), ("2.bias", b2[0]))}
