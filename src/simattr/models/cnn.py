"""The CNNs (ResNet-9, ResNet-18) in torch: their networks, batches (resident or streamed), augmentation, training
with saved states, prediction, and the recipe's model as a torch nn.Module."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..accel import configure, release
from ..accel import device as accel_device
from ..augment import crop_resize
from ..backbones import NORMALIZE
from ..datasets import Stream
from ..errors import SimattrError
from ..images import tensor_to_unit
from .mlp import train_one_mlp
from .recipe import CNN_MODELS, STREAMED_MODELS, Recipe, one_blas_thread
from .state import TrainingState, drop_state, load_state, save_state, state_every_s, state_identity

log = logging.getLogger("simattr")


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
    drop_state(state)
    return out


def _train_cnn(X_train, y_train: np.ndarray, seed: int, n_classes: int, recipe: Recipe, dev,
               state: TrainingState | None = None):
    """The training half of train_predict_cnn: one `recipe` CNN from `seed`, on `dev`, in eval mode.

    With a `state`: a saved state of this very training (state_identity) is resumed from (network, optimiser
    momentum, step, epoch, the generators of batch order and augmentation: the remaining epochs are the bits an
    uninterrupted training computes); one of another training is ignored (logged) and overwritten. At an epoch
    boundary before the last, the state is saved when at least state.every_s (state_every_s()) seconds have passed
    since the training started or last saved. The caller deletes it when the model is done (drop_state). The
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
        saved = load_state(state, identity)
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
                save_state(state, identity, epoch=epoch + 1, step=t, net=net, opt=opt, gen=gen, dgen=dgen,
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
    resnet9: resnet9(input_shape[0], C); resnet18: _resnet18 (torchvision's resnet18(num_classes=C)). The global
    torch RNG is left as it was."""
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
        drop_state(state)
        return out
    with one_blas_thread():
        w1, b1, w2, b2 = (p[0] for p in train_one_mlp(X_train, y_train, int(seed), n_classes, recipe))
    return {k: torch.from_numpy(np.ascontiguousarray(v))
            for k, v in (("0.weight", w1.T), ("0.bias", b1[0]), ("2.weight", w2.T), ("2.bias", b2[0]))}
