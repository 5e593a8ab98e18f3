"""Encoders: images -> feature vectors, the space in which training images are compared with test images.

    pixels      flattened pixels standardised with the train mean/std (no network, nothing learned but the scaling)
    simclr      a small conv net (arch small) or a CIFAR-stem ResNet-18 (arch resnet18, 512-d features) trained
                self-supervised (SimCLR, NT-Xent) on the train images only; labels unused
    supervised  the same conv net trained as a classifier with cross-entropy; features = penultimate layer
    resnet      a torchvision ResNet-18/50 from a local checkpoint (MoCo v2/v3, SimCLR/solo-learn, lightly or
                torchvision layout; see simattr.backbones), head dropped: nothing is trained

One class per kind (Pixels, SimCLR, Supervised, ResNet); KINDS, name -> class, is the one list of the kinds
(config.FEATURE_ENCODER_STATE names them without importing torch; the two must agree). An encoder is made by its class's `fit` on the train images (ResNet:
`from_checkpoint`, nothing is trained) or by `from_state` from a saved state; either way what it needs to encode
is made ready once (the network built, weights loaded, moved to the device: CUDA when there is one, see accel),
and `encode` then runs on batch after batch.

A state (`state_dict()`, written by `save`) is a plain dict of python values and torch tensors (loadable with
`torch.load(weights_only=True)`) holding "encoder", "params", "input_shape", "seed" and the kind's own entries
(Encoder.state_keys); entries of other names (the embed stage's "settings") are kept in `meta` and written back.
For the networks the SimCLR projection head / the classifier's last layer are dropped: only the backbone is
stored, and the features are the backbone's representation. Training runs on CUDA when present (its rule asks
for a GPU on a cluster), else on the CPU; augmentations are drawn and applied on the CPU (digits: shifts,
rotations, erasing, ink jitter; RGB images such as CIFAR-10: SimCLR's resized crops, flips, colour jitter,
grayscale). On the CPU the same seed and params give bit-identical features on the same machine and torch thread
count (a different thread count may change the last bits).

torch is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import augment
from .accel import default_device
from .accel import device as accel_device
from .backbones import Features, feature_width, load_checkpoint, one_line, resnet, torch_load
from .config import FEATURE_ENCODERS, STATE_ENCODERS
from .errors import SimattrError
from .images import tensor_to_unit, to_unit
from .store import atomic_path

# simclr's backbones: `small` (_small_backbone; feature_dim wide) or torchvision's ResNet-18 with the CIFAR stem
# (conv1 3x3 stride 1, no max-pool; 512-d features whatever feature_dim says)
SIMCLR_ARCHS = ("small", "resnet18")
# A pixel's std is floored at this before dividing: a pixel (almost) constant on the train images (the digits'
# borders) must not turn a stray faint stroke in a test image into a feature that dominates every similarity.
PIXEL_STD_FLOOR = 0.05
_WEIGHT_DECAY = 1e-4
_INT_PARAMS = {"epochs", "batch_size", "feature_dim", "proj_dim", "hidden"}
_TEXT_PARAMS = {"arch", "checkpoint", "layout", "feature", "normalize"}
_BASE_KEYS = ("encoder", "params", "input_shape", "seed")       # in every state, before the kind's own entries


# ------------------------------------------------------------------------------------------- checks
def _check_images(images: Any, what: str, shape: tuple | None = None):
    """Checked images: a (N, C, H, W) array (as float32; uint8 kept) or torch tensor (kept: uint8 batches are
    scaled on the device), of the encoder's shape, finite."""
    torch = sys.modules.get("torch")
    is_tensor = torch is not None and isinstance(images, torch.Tensor)
    if not is_tensor:
        images = np.asarray(images)
    dims = tuple(images.shape)
    if len(dims) != 4 or dims[0] == 0:
        raise SimattrError(f"{what}: expected a non-empty (N, C, H, W) image array, got shape {dims}")
    if shape is not None and dims[1:] != tuple(shape):
        raise SimattrError(f"{what}: images of shape {dims[1:]} but the encoder was fit on {tuple(shape)}")
    if is_tensor:
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            raise SimattrError(f"{what}: images contain NaN or inf")
        return images
    if images.dtype != np.uint8:
        images = images.astype(np.float32, copy=False)
        if not np.isfinite(images).all():
            raise SimattrError(f"{what}: images contain NaN or inf")
    return images


# ------------------------------------------------------------------------------------------- model
def _small_backbone(in_shape, feature_dim: int):
    """conv 32 -> conv 64 -> max-pool 2 -> flatten -> linear `feature_dim` (BN, ReLU): the representation."""
    from torch import nn

    c, h, w = in_shape
    flat = 64 * (h // 2) * (w // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True),
    )


def _n_batches(n: int, batch_size: int) -> int:
    bs = min(batch_size, n)
    full, rest = divmod(n, bs)
    return full + (1 if rest >= max(2, bs // 2) else 0)


def _batches(n: int, batch_size: int, gen):
    """A seeded shuffle of 0..n-1 cut into batches; a last batch smaller than half a batch is dropped
    (BatchNorm and the contrastive loss want full batches), unless it is the only one."""
    import torch

    perm = torch.randperm(n, generator=gen)
    bs = min(batch_size, n)
    out = [perm[i:i + bs] for i in range(0, n, bs)]
    if len(out) > 1 and len(out[-1]) < max(2, bs // 2):
        out.pop()
    return out


# ------------------------------------------------------------------------------------------ fitting
def _epoch_log(log, name: str, epoch: int, epochs: int, loss: float, extra: str = "") -> None:
    if log is None:
        return
    every = max(1, epochs // 10)
    level = 20 if (epoch % every == 0 or epoch == epochs or epoch == 1) else 10  # INFO ~10 times, else DEBUG
    log.log(level, "%s epoch %d/%d loss %.4f%s", name, epoch, epochs, loss, extra)


def _warmup_cosine(steps: int, warmup_frac: float = 0.1):
    """lr factor for step t of `steps`: a linear warm-up over the first 10%, then a cosine decay to 0."""
    warm = max(1, int(round(warmup_frac * steps)))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, steps - warm))))

    return factor


# ------------------------------------------------------------------------------------------ encoders
class Encoder:
    """An encoder of one kind (a subclass), made from its state: the state checked, what `encode` needs made ready
    once (a network built, weights loaded, moved to `device`: by default CUDA when there is one, see accel).
    `encode` maps images (N, C, H, W), float32 in [0, 1] or as a dataset stores them (uint8 numpy arrays or
    tensors from datasets.Split.stream, scaled on the device), to features (N, dim) float32 numpy:
    deterministic, eval mode, no gradients."""

    name = ""                               # the kind (its KINDS key; the state's "encoder")
    param_keys: tuple[str, ...] = ()        # the params it requires: exactly these keys (the caller fills defaults)
    state_keys: tuple[str, ...] = ()        # the state's entries of its own, after encoder, params, input_shape, seed
    trainable = True                        # its state comes from a workflow rule of its own (a .pt file)
    pretrained = False                      # that state is read from a checkpoint (from_checkpoint), not fitted

    def __init__(self, state: dict, device=None):
        """From a state as state_dict returns it (use from_state for one from a file or of an unknown kind)."""
        if not isinstance(state, dict) or state.get("encoder") != self.name:
            got = state.get("encoder") if isinstance(state, dict) else type(state).__name__
            raise SimattrError(f"holds encoder {got!r}, expected '{self.name}'")
        self.params = self.check_params(state["params"])
        shape = state["input_shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) and s > 0
                                                                               for s in shape)):
            raise SimattrError(f"bad input_shape {shape!r}")
        self.input_shape = shape
        self.seed = state["seed"]
        for k in self.state_keys:
            setattr(self, k, state[k])
        self.meta = {k: v for k, v in state.items() if k not in _BASE_KEYS + self.state_keys}
        self.device = None                  # where the network runs (None: no network)
        self._build()
        self.to(device)

    # --- made from a state
    @classmethod
    def from_state(cls, state, device=None) -> Encoder:
        """An encoder from its state: a dict (as state_dict returns it) or the path of a file written by `save`.
        Called on a kind (SimCLR.from_state) the state must hold that kind; on Encoder, any kind. A state that does
        not fit is one line naming the file."""
        where = "encoder state"
        if isinstance(state, (str, os.PathLike)):
            where, state = str(state), read_state(state, cls.name or None)
        return _made(_kind_of(state, where, cls.name or None), state, where, device)

    def state_dict(self) -> dict:
        """The state: what `save` writes and `from_state` reads (plain python values and torch tensors)."""
        return {"encoder": self.name, "params": self.params, "input_shape": self.input_shape, "seed": self.seed,
                **{k: getattr(self, k) for k in self.state_keys}, **self.meta}

    def save(self, path) -> None:
        """Write the state to `path` atomically (a temporary file in the same folder, renamed into place)."""
        import torch


        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    # --- fitted
    @classmethod
    def check_params(cls, params: Any) -> dict:
        """`params` checked against param_keys (all there, nothing else, of the right types); a copy."""
        name = cls.name
        if not isinstance(params, dict):
            raise SimattrError(f"encoder '{name}': params must be a mapping, got {type(params).__name__}")
        want = cls.param_keys
        missing = [k for k in want if k not in params]
        extra = sorted(k for k in params if k not in want)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(map(str, extra))}")
            expected = ", ".join(want) if want else "none"
            raise SimattrError(f"encoder '{name}' params: {'; '.join(parts)} (expected keys: {expected})")
        for k in want:
            v = params[k]
            if k in _TEXT_PARAMS:
                if not isinstance(v, str) or not v:
                    raise SimattrError(f"encoder '{name}' params: '{k}' must be a non-empty string, got {v!r}")
                continue
            ints = k in _INT_PARAMS
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (ints and not isinstance(v, int)):
                raise SimattrError(f"encoder '{name}' params: '{k}' must be {'an integer' if ints else 'a number'}, "
                                   f"got {v!r}")
            if not (v > 0 and math.isfinite(v)):
                raise SimattrError(f"encoder '{name}' params: '{k}' must be > 0, got {v!r}")
        if "batch_size" in params and params["batch_size"] < 2:
            raise SimattrError(f"encoder '{name}' params: 'batch_size' must be >= 2 (batch norm, contrastive pairs), "
                               f"got {params['batch_size']}")
        return dict(params)

    @classmethod
    def fit(cls, train_images, train_labels, params: dict, *, seed: int, progress: bool = True,
            log=None) -> Encoder:
        """Fit on the train images (supervised only: and their labels), on the default device; the encoder."""
        params = cls.check_params(params)
        images = _check_images(train_images, f"encoder '{cls.name}' train images")
        t0 = time.perf_counter()
        own = cls._train(images, train_labels, params, int(seed), progress, log)
        if log is not None:
            log.info("encoder %s fit on %d images in %.1f s", cls.name, len(images), time.perf_counter() - t0)
        return cls({"encoder": cls.name, "params": params, "input_shape": [int(s) for s in images.shape[1:]],
                    "seed": int(seed), **own})

    @classmethod
    def _train(cls, images: np.ndarray, labels, params: dict, seed: int, progress: bool, log) -> dict:
        """The kind's own state entries, learned from the train images."""
        raise NotImplementedError

    # --- encoding
    @property
    def dim(self) -> int:
        """The width of the features."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple | None:
        """The (C, H, W) the images must have (None: any)."""
        return tuple(self.input_shape)

    def _build(self) -> None:
        """Make what `encode` needs from the state's entries (on the CPU)."""

    def to(self, device=None) -> Encoder:
        """Move the network to `device` (default: accel.default_device()); an encoder without one stays put."""
        return self

    def encode(self, images, batch_size: int = 1024) -> np.ndarray:
        """Features (N, dim) float32 of `images` (N, C, H, W), `batch_size` images at a time."""
        if batch_size < 1:
            raise SimattrError(f"encode: batch_size must be >= 1, got {batch_size}")
        return self._encode(_check_images(images, f"encoder '{self.name}' input", self.image_shape), batch_size)

    def _encode(self, images, batch_size: int) -> np.ndarray:
        raise NotImplementedError


class Pixels(Encoder):
    """Flattened pixels, standardised with the train images' per-pixel mean and (floored) std."""

    name = "pixels"
    state_keys = ("mean", "std")
    trainable = False                       # fitted in the process that embeds: nothing to keep

    @classmethod
    def _train(cls, images, labels, params, seed, progress, log) -> dict:
        import torch

        flat = images.reshape(len(images), -1).astype(np.float64)
        return {"mean": torch.from_numpy(flat.mean(0).astype(np.float32)),
                "std": torch.from_numpy(np.maximum(flat.std(0), PIXEL_STD_FLOOR).astype(np.float32))}

    def _build(self) -> None:
        d = int(np.prod(self.input_shape))
        for k in ("mean", "std"):
            if tuple(getattr(self, k).shape) != (d,):
                raise SimattrError(f"'{k}' has shape {tuple(getattr(self, k).shape)}, expected ({d},)")
        if not bool((self.std > 0).all()):
            raise SimattrError("'std' is not positive")
        self._mean = self.mean.numpy().astype(np.float32)
        self._std = self.std.numpy().astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def _encode(self, images, batch_size: int) -> np.ndarray:

        x = to_unit(np.asarray(images))
        return ((x.reshape(len(x), -1) - self._mean) / self._std).astype(np.float32)


class _Network(Encoder):
    """An encoder whose features are a network's output ("backbone": its weights), run batch by batch."""

    state_keys = ("backbone",)

    def _new_net(self):
        """The network, randomly initialised, on the CPU."""
        raise NotImplementedError

    def _build(self) -> None:
        net = self._new_net()
        net.load_state_dict(self.backbone)
        self.net = net.eval()

    def to(self, device=None) -> Encoder:
        self.device = accel_device(device)
        self.net = self.net.to(self.device)
        return self

    def _forward(self, batch) -> np.ndarray:
        import torch


        with torch.inference_mode():
            return self.net(tensor_to_unit(batch, self.device)).cpu().numpy()

    def _encode(self, images, batch_size: int) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i in range(0, len(images), batch_size):
            out[i:i + batch_size] = self._forward(images[i:i + batch_size])
        return out

    @classmethod
    def _train(cls, images, labels, params, seed, progress, log) -> dict:
        if len(images) < 2:
            raise SimattrError(f"encoder '{cls.name}': need at least 2 train images, got {len(images)}")
        return cls._train_net(images, labels, params, seed, progress, log)

    @classmethod
    def _train_net(cls, images, labels, params, seed, progress, log) -> dict:
        raise NotImplementedError


class SimCLR(_Network):
    """A backbone (arch small or resnet18) trained with SimCLR's contrastive loss on two augmented views of each
    train image; the labels are never seen. The projection head is dropped."""

    name = "simclr"
    param_keys = ("arch", "epochs", "batch_size", "lr", "temperature", "feature_dim", "proj_dim")

    def __init__(self, state: dict, device=None):
        params = state.get("params") if isinstance(state, dict) else None
        if isinstance(params, dict) and "arch" not in params:           # a state saved before simclr had an arch
            state = {**state, "params": {"arch": "small", **params}}
        super().__init__(state, device)

    @classmethod
    def check_params(cls, params: Any) -> dict:
        params = super().check_params(params)
        if params["arch"] not in SIMCLR_ARCHS:
            raise SimattrError(f"encoder 'simclr' params: unknown arch '{params['arch']}'; "
                               f"valid: {', '.join(SIMCLR_ARCHS)}")
        return params

    @staticmethod
    def _width(params: dict) -> int:
        return 512 if params["arch"] == "resnet18" else int(params["feature_dim"])

    @staticmethod
    def _backbone(in_shape, params: dict):
        """The backbone for images of `in_shape` (C, H, W): arch small, or resnet18 (CIFAR stem, conv1 taking C
        channels, fc dropped)."""
        if params["arch"] == "resnet18":
            return resnet("resnet18", cifar_stem=True, in_channels=in_shape[0])
        return _small_backbone(in_shape, params["feature_dim"])

    @property
    def dim(self) -> int:
        return self._width(self.params)

    def _new_net(self):
        return self._backbone(tuple(self.input_shape), self.params)

    @classmethod
    def _train_net(cls, images, labels, params, seed, progress, log) -> dict:   # labels deliberately unused
        import torch
        from torch import nn
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_all = torch.from_numpy(np.ascontiguousarray(images))
        fd, epochs = cls._width(params), params["epochs"]
        backbone = cls._backbone(tuple(images.shape[1:]), params)
        head = nn.Sequential(nn.Linear(fd, fd), nn.ReLU(inplace=True), nn.Linear(fd, params["proj_dim"]))
        dev = default_device()     # augmentation is drawn and applied on the CPU either way
        model = nn.Sequential(backbone, head).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=_WEIGHT_DECAY)
        steps = epochs * _n_batches(len(x_all), params["batch_size"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
        bar = tqdm(range(1, epochs + 1), desc="simclr", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            total, count = 0.0, 0
            for idx in _batches(len(x_all), params["batch_size"], gen):
                x = x_all[idx]
                v = torch.cat([augment.augment(x, gen), augment.augment(x, gen)])  # one forward for both views: shared BN statistics
                z = model(v.to(dev))
                loss = augment.nt_xent(z[:len(idx)], z[len(idx):], params["temperature"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                count += len(idx)
            mean = total / count
            if not math.isfinite(mean):
                raise SimattrError(f"encoder 'simclr': training diverged (loss {mean}) at epoch {epoch}; "
                                   f"lower lr (now {params['lr']})")
            bar.set_postfix(loss=f"{mean:.4f}")
            _epoch_log(log, "simclr", epoch, epochs, mean)
        bar.close()
        return {"backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}}


class Supervised(_Network):
    """The small backbone trained as a classifier (cross-entropy, +-1 pixel shifts); the last layer is dropped."""

    name = "supervised"
    param_keys = ("epochs", "batch_size", "lr", "hidden")
    state_keys = ("backbone", "n_classes")

    @property
    def dim(self) -> int:
        return int(self.params["hidden"])

    def _new_net(self):
        return _small_backbone(tuple(self.input_shape), self.dim)

    @classmethod
    def _train_net(cls, images, labels, params, seed, progress, log) -> dict:
        import torch
        import torch.nn.functional as F
        from torch import nn
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise SimattrError(f"encoder 'supervised': {len(images)} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise SimattrError("encoder 'supervised': labels must be non-negative integers")
        n_classes = int(labels.max()) + 1
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_all = torch.from_numpy(np.ascontiguousarray(images))
        y_all = torch.from_numpy(labels.astype(np.int64))
        epochs = params["epochs"]
        backbone = _small_backbone(tuple(images.shape[1:]), params["hidden"])
        dev = default_device()
        model = nn.Sequential(backbone, nn.Linear(params["hidden"], n_classes)).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=_WEIGHT_DECAY)
        bar = tqdm(range(1, epochs + 1), desc="supervised", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            total, correct, count = 0.0, 0, 0
            for idx in _batches(len(x_all), params["batch_size"], gen):
                x, y = augment.translate(x_all[idx], gen).to(dev), y_all[idx].to(dev)  # mild augmentation: +-1 pixel shifts
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                count += len(idx)
            mean = total / count
            if not math.isfinite(mean):
                raise SimattrError(f"encoder 'supervised': training diverged (loss {mean}) at epoch {epoch}; "
                                   f"lower lr (now {params['lr']})")
            bar.set_postfix(loss=f"{mean:.4f}", acc=f"{correct / count:.3f}")
            _epoch_log(log, "supervised", epoch, epochs, mean, f" train acc {correct / count:.4f}")
        bar.close()
        return {"backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
                "n_classes": n_classes}


class ResNet(_Network):
    """A pretrained torchvision ResNet from a local checkpoint (backbones.Features: normalised as configured,
    grayscale repeated to 3 channels, any image size). Nothing is trained: see from_checkpoint."""

    name = "resnet"
    param_keys = ("arch", "checkpoint", "layout", "feature", "normalize")
    state_keys = ("backbone", "cifar_stem", "layout_found")
    pretrained = True

    @classmethod
    def from_checkpoint(cls, params: dict, *, log=None, device=None) -> ResNet:
        """The backbone weights found in params['checkpoint'] (see backbones.load_checkpoint)."""
        params = cls.check_params(params)
        backbone, found = load_checkpoint(params["checkpoint"], params["arch"], params["layout"])
        if log is not None:
            log.info("resnet: %s backbone from %s (layout %s, prefix '%s', %s stem)", params["arch"],
                     params["checkpoint"], found["layout"], found["prefix"],
                     "CIFAR" if found["cifar_stem"] else "ImageNet")
        state = {"encoder": "resnet", "params": params, "input_shape": [3, 1, 1], "seed": 0, "backbone": backbone,
                 "cifar_stem": found["cifar_stem"], "layout_found": found["layout"]}
        return _made(cls, state, params["checkpoint"], device)

    @classmethod
    def fit(cls, train_images, train_labels, params: dict, *, seed: int, progress: bool = True,
            log=None) -> Encoder:
        raise SimattrError("encoder 'resnet' is pretrained: it is made by encoders.ResNet.from_checkpoint")

    @property
    def dim(self) -> int:
        return feature_width(self.params["arch"], self.params["feature"])

    @property
    def image_shape(self) -> None:
        return None

    def _build(self) -> None:
        p = self.params
        self.net = Features(p["arch"], self.backbone, bool(self.cifar_stem), p["feature"], p["normalize"],
                            device="cpu")

    def to(self, device=None) -> Encoder:
        self.device = self.net.to(device).device
        return self

    def _forward(self, batch) -> np.ndarray:
        return self.net(batch)


# The kinds, by name: the one place they are listed.
KINDS: dict[str, type[Encoder]] = {kind.name: kind for kind in (Pixels, SimCLR, Supervised, ResNet)}
if tuple(KINDS) != FEATURE_ENCODERS or tuple(n for n, k in KINDS.items() if k.trainable) != STATE_ENCODERS:
    raise ImportError(f"encoders.KINDS ({', '.join(FEATURE_ENCODERS)}) disagrees with config.FEATURE_ENCODER_STATE")


def get(name: Any) -> type[Encoder]:
    """The class of encoder `name`."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise SimattrError(f"unknown encoder '{name}'; valid: {', '.join(FEATURE_ENCODERS)}")
    return kind


def _kind_of(state: Any, where: str, expect: str | None) -> type[Encoder]:
    if not isinstance(state, dict) or "encoder" not in state:
        raise SimattrError(f"{where}: not an encoder state (no 'encoder' entry)")
    name = state["encoder"]
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise SimattrError(f"{where}: unknown encoder '{name}' in the state; valid: {', '.join(FEATURE_ENCODERS)}")
    if expect is not None and name != expect:
        raise SimattrError(f"{where}: holds encoder '{name}', expected '{expect}'")
    return kind


def _made(kind: type[Encoder], state: dict, where: str, device) -> Encoder:
    """kind(state) checked, built and loaded on the CPU (a state that does not fit is one line naming `where`),
    then moved to `device`: one network."""
    try:
        enc = kind(state, device="cpu")
    except SimattrError as e:
        raise SimattrError(f"{where}: invalid encoder state ({e})") from None
    except Exception as e:  # noqa: BLE001 - any structural problem means a corrupt or foreign file
        raise SimattrError(f"{where}: invalid encoder state ({one_line(e)})") from None
    return enc.to(device)


def read_state(path, expect: str | None = None) -> dict:
    """The state saved at `path` by Encoder.save, as a dict, checked to hold an encoder (of kind `expect`) but not
    made ready (no network built): for reading what was stored beside it (the embed stage's "settings")."""
    if expect is not None:
        get(expect)
    state = torch_load(Path(path), f"encoder state not found (fit encoder '{expect}' first)" if expect else
                       "encoder state not found", "not a readable encoder state")
    _kind_of(state, str(path), expect)
    return state
