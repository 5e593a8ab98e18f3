"""What every encoder shares: the Encoder base class (fit, encode, state, save), the network base, the input checks
and the training loop's helpers (batches, warm-up cosine schedule, the small conv backbone)."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..accel import device as accel_device
from ..backbones import one_line, torch_load
from ..config import FEATURE_ENCODERS
from ..errors import SimattrError
from ..images import tensor_to_unit
from ..store import atomic_path

# simclr's backbones: `small` (small_backbone; feature_dim wide) or torchvision's ResNet-18 with the CIFAR stem
# (conv1 3x3 stride 1, no max-pool; 512-d features whatever feature_dim says)
SIMCLR_ARCHS = ("small", "resnet18")
# A pixel's std is floored at this before dividing: a pixel (almost) constant on the train images (the digits'
# borders) must not turn a stray faint stroke in a test image into a feature that dominates every similarity.
PIXEL_STD_FLOOR = 0.05
WEIGHT_DECAY = 1e-4
INT_PARAMS = {"epochs", "batch_size", "feature_dim", "proj_dim", "hidden"}
TEXT_PARAMS = {"arch", "checkpoint", "layout", "feature", "normalize"}
BASE_KEYS = ("encoder", "params", "input_shape", "seed")       # in every state, before the kind's own entries


# ------------------------------------------------------------------------------------------- checks
def check_images(images: Any, what: str, shape: tuple | None = None):
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
def small_backbone(in_shape, feature_dim: int):
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


def n_batches(n: int, batch_size: int) -> int:
    bs = min(batch_size, n)
    full, rest = divmod(n, bs)
    return full + (1 if rest >= max(2, bs // 2) else 0)


def batches(n: int, batch_size: int, gen):
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
def epoch_log(log, name: str, epoch: int, epochs: int, loss: float, extra: str = "") -> None:
    if log is None:
        return
    every = max(1, epochs // 10)
    level = 20 if (epoch % every == 0 or epoch == epochs or epoch == 1) else 10  # INFO ~10 times, else DEBUG
    log.log(level, "%s epoch %d/%d loss %.4f%s", name, epoch, epochs, loss, extra)


def warmup_cosine(steps: int, warmup_frac: float = 0.1):
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
        self.meta = {k: v for k, v in state.items() if k not in BASE_KEYS + self.state_keys}
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
        return made(_kind_of(state, where, cls.name or None), state, where, device)

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
            if k in TEXT_PARAMS:
                if not isinstance(v, str) or not v:
                    raise SimattrError(f"encoder '{name}' params: '{k}' must be a non-empty string, got {v!r}")
                continue
            ints = k in INT_PARAMS
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
        images = check_images(train_images, f"encoder '{cls.name}' train images")
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
        return self._encode(check_images(images, f"encoder '{self.name}' input", self.image_shape), batch_size)

    def _encode(self, images, batch_size: int) -> np.ndarray:
        raise NotImplementedError


class Network(Encoder):
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


#: The kinds, by name (each class of encoders/kinds.py registers itself, in the order they are defined).
KINDS: dict[str, type[Encoder]] = {}


def register(kind: type[Encoder]) -> type[Encoder]:
    """Class decorator: list `kind` in KINDS under its name."""
    KINDS[kind.name] = kind
    return kind


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


def made(kind: type[Encoder], state: dict, where: str, device) -> Encoder:
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
