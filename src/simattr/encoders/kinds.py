"""The four kinds: Pixels, SimCLR, Supervised, ResNet (each joins base.KINDS with @register, in this order)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import augment
from ..accel import default_device
from ..backbones import Features, feature_width, load_checkpoint, resnet
from ..errors import SimattrError
from ..images import to_unit
from .base import (
    PIXEL_STD_FLOOR,
    SIMCLR_ARCHS,
    WEIGHT_DECAY,
    Encoder,
    Network,
    batches,
    epoch_log,
    made,
    n_batches,
    register,
    small_backbone,
    warmup_cosine,
)


@register
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


@register
class SimCLR(Network):
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
        return small_backbone(in_shape, params["feature_dim"])

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
        opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=WEIGHT_DECAY)
        steps = epochs * n_batches(len(x_all), params["batch_size"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
        bar = tqdm(range(1, epochs + 1), desc="simclr", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            total, count = 0.0, 0
            for idx in batches(len(x_all), params["batch_size"], gen):
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
            epoch_log(log, "simclr", epoch, epochs, mean)
        bar.close()
        return {"backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}}


@register
class Supervised(Network):
    """The small backbone trained as a classifier (cross-entropy, +-1 pixel shifts); the last layer is dropped."""

    name = "supervised"
    param_keys = ("epochs", "batch_size", "lr", "hidden")
    state_keys = ("backbone", "n_classes")

    @property
    def dim(self) -> int:
        return int(self.params["hidden"])

    def _new_net(self):
        return small_backbone(tuple(self.input_shape), self.dim)

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
        backbone = small_backbone(tuple(images.shape[1:]), params["hidden"])
        dev = default_device()
        model = nn.Sequential(backbone, nn.Linear(params["hidden"], n_classes)).train().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=WEIGHT_DECAY)
        bar = tqdm(range(1, epochs + 1), desc="supervised", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            total, correct, count = 0.0, 0, 0
            for idx in batches(len(x_all), params["batch_size"], gen):
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
            epoch_log(log, "supervised", epoch, epochs, mean, f" train acc {correct / count:.4f}")
        bar.close()
        return {"backbone": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
                "n_classes": n_classes}


@register
class ResNet(Network):
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
        return made(cls, state, params["checkpoint"], device)

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
