"""Pretrained ResNet backbones from local checkpoint files (nothing is downloaded).

A checkpoint is read with `torch.load(weights_only=True)` and its backbone weights are found under the prefix
of one of the common layouts, then loaded into a torchvision ResNet whose classifier / projection head is
dropped:

    torchvision  conv1.weight, layer1.0.conv1.weight, ... (fc.* ignored): torchvision's supervised weights
    moco_v2      state_dict / module.encoder_q.*            (MoCo v1/v2; encoder_k and the fc head ignored)
    moco_v3      state_dict / module.base_encoder.*         (MoCo v3; momentum_encoder, predictor, fc ignored)
    simclr       state_dict / backbone.*                    (SimCLR ports, solo-learn; projector ignored)
    lightly      backbone.0.*, backbone.1.*, backbone.4.0.* (nn.Sequential of the ResNet's children)

`layout: auto` tries each and takes the one whose keys cover the backbone exactly; a checkpoint that no layout
fits is refused with the keys it lacks and the keys it has. A 3x3 first convolution (the CIFAR variant used by
SimCLR/solo-learn on 32x32 images) gets the CIFAR stem: conv1 3x3 stride 1, no max-pool.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .accel import device as accel_device
from .errors import SimattrError
from .images import tensor_to_unit

ARCHS = ("resnet18", "resnet50")
LAYOUTS = ("auto", "torchvision", "moco_v2", "moco_v3", "simclr", "lightly")
PREFIXES = {"torchvision": ("", "module.", "model."),
            "moco_v2": ("module.encoder_q.", "encoder_q."),
            "moco_v3": ("module.base_encoder.", "base_encoder."),
            "simclr": ("backbone.", "model.backbone.", "module.backbone.", "encoder.", "module.encoder.")}
# nn.Sequential(*list(resnet.children())[:-1]) numbers the children: lightly's layout
_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
FEATURES = ("pool", "pool3")        # global average pool of layer4 (the usual) or of layer3
NORMALIZE = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
             "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
             "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


def feature_width(arch: str, feature: str) -> int:
    """The width of a ResNet's features: the layer4 pool (512 / 2048) or the layer3 pool (256 / 1024)."""
    return {"pool": 512 if arch == "resnet18" else 2048, "pool3": 256 if arch == "resnet18" else 1024}[feature]


def resnet(arch: str, cifar_stem: bool, in_channels: int = 3):
    """torchvision's `arch`, randomly initialised, fc dropped (features: the layer4 average pool); the CIFAR stem
    is conv1 3x3 stride 1 without max-pool. `in_channels` other than 3 replaces conv1 (e.g. 1 for grayscale)."""
    import torchvision
    from torch import nn

    if arch not in ARCHS:
        raise SimattrError(f"unknown ResNet arch '{arch}'; valid: {', '.join(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    return net


@functools.lru_cache(maxsize=8)
def _backbone_keys(arch: str, cifar_stem: bool) -> set[str]:
    return set(resnet(arch, cifar_stem).state_dict())


def _state_dict(obj: Any, where: str) -> dict:
    """The tensor mapping inside a checkpoint: the object itself, or under 'state_dict' / 'model' / 'net'."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net", "network", "backbone_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise SimattrError(f"{where}: no tensor mapping found (expected a state dict, or one under 'state_dict')")


def _strip(sd: dict, layout: str) -> dict[str, dict]:
    """For each prefix of `layout`: the backbone candidates (prefix removed, head keys dropped)."""
    out = {}
    if layout == "lightly":
        cand = {}
        for k, v in sd.items():
            parts = k.split(".")
            if len(parts) > 2 and parts[0] == "backbone" and parts[1].isdigit() and int(parts[1]) < len(_CHILDREN):
                cand[".".join([_CHILDREN[int(parts[1])], *parts[2:]])] = v
        out["backbone.<n>."] = cand
        return out
    for prefix in PREFIXES[layout]:
        cand = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        out[prefix] = {k: v for k, v in cand.items() if not k.startswith("fc.")}
    return out


def one_line(e: Exception) -> str:
    """An exception as 'Type: first line of its message' (at most 200 characters of it)."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def torch_load(path: Path, not_found: str, unreadable: str) -> Any:
    """torch.load(path, weights_only=True) on CPU; a missing or unreadable file is one line naming it."""
    import torch

    if not Path(path).is_file():
        raise SimattrError(f"{path}: {not_found}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign or truncated file
        raise SimattrError(f"{path}: {unreadable} ({one_line(e)})") from None


def load_checkpoint(path, arch: str, layout: str) -> tuple[dict, dict]:
    """(backbone state dict for torchvision's `arch` without fc, what was found: layout, prefix, cifar_stem)."""
    if layout not in LAYOUTS:
        raise SimattrError(f"unknown checkpoint layout '{layout}'; valid: {', '.join(LAYOUTS)}")
    if arch not in ARCHS:
        raise SimattrError(f"unknown ResNet arch '{arch}'; valid: {', '.join(ARCHS)}")
    path = Path(path)
    obj = torch_load(path, "checkpoint not found (give a local file; nothing is downloaded)",
                     "not loadable with torch.load(weights_only=True)")
    sd = _state_dict(obj, str(path))
    best = None                                       # (missing count, layout, prefix, candidate, missing, extra)
    for lay in ([layout] if layout != "auto" else [x for x in LAYOUTS if x != "auto"]):
        for prefix, cand in _strip(sd, lay).items():
            if not cand:
                continue
            conv1 = cand.get("conv1.weight")
            cifar = conv1 is not None and tuple(conv1.shape[-2:]) == (3, 3)
            want = _backbone_keys(arch, cifar)
            missing = sorted(want - set(cand))
            extra = sorted(set(cand) - want)
            key = (len(missing) + len(extra), lay, prefix, cand, missing, extra, cifar)
            if best is None or key[0] < best[0]:
                best = key
            if not missing and not extra:
                shapes = resnet(arch, cifar).state_dict()
                bad = [k for k in want if tuple(cand[k].shape) != tuple(shapes[k].shape)]
                if bad:
                    raise SimattrError(f"{path}: layout {lay} (prefix '{prefix}') fits {arch}'s keys but not its "
                                       f"shapes: {bad[0]} is {tuple(cand[bad[0]].shape)}, expected "
                                       f"{tuple(shapes[bad[0]].shape)} (another arch?)")
                return ({k: v.float() if v.is_floating_point() else v for k, v in cand.items()},
                        {"layout": lay, "prefix": prefix, "cifar_stem": cifar})
    tops = sorted({k.split(".")[0] + "." for k in sd})[:8]
    tried = f"layout {layout}" if layout != "auto" else f"any layout ({', '.join(LAYOUTS[1:])})"
    if best is None:
        raise SimattrError(f"{path}: no {arch} backbone under {tried}; its keys start with {', '.join(tops)}")
    _, lay, prefix, _, missing, extra, _ = best
    raise SimattrError(f"{path}: keys do not fit {arch} under {tried}; closest is {lay} (prefix '{prefix}'): "
                       f"missing {len(missing)} (e.g. {', '.join(missing[:3]) or '-'}), unexpected {len(extra)} "
                       f"(e.g. {', '.join(extra[:3]) or '-'}); the checkpoint's keys start with {', '.join(tops)}")


class Features:
    """A callable: images (N, C, H, W), float in [0, 1] or uint8 (numpy or torch) -> features (N, d), normalised as
    configured on the device; grayscale images are repeated to 3 channels. The network is built and moved to the
    device once, here (`to` moves it on)."""

    def __init__(self, arch: str, backbone: dict, cifar_stem: bool, feature: str,
                 normalize: str, device=None):
        import torch

        if feature not in FEATURES:
            raise SimattrError(f"unknown ResNet feature '{feature}'; valid: {', '.join(FEATURES)}")
        if normalize not in NORMALIZE:
            raise SimattrError(f"unknown normalisation '{normalize}'; valid: {', '.join(NORMALIZE)}")
        net = resnet(arch, cifar_stem)
        net.load_state_dict(backbone)
        if feature == "pool3":
            net.layer4 = torch.nn.Identity()
        self.net = net.eval()
        mean, std = NORMALIZE[normalize]
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.dim = feature_width(arch, feature)
        self.to(device)

    def to(self, device=None) -> "Features":
        """Move the network to `device` (default: accel.default_device())."""
        self.device = accel_device(device)
        self.net = self.net.to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    def __call__(self, images):
        import torch


        x = tensor_to_unit(images, self.device)        # uint8 batches travel as uint8 and are scaled here
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise SimattrError(f"ResNet encoder: images have {x.shape[1]} channels, expected 1 or 3")
        with torch.inference_mode():
            out = self.net((x - self.mean) / self.std)
        return out.float().cpu().numpy()
