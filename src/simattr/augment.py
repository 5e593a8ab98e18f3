"""Augmentations of image batches (torch, on the batch's device, drawn from the given generator) and SimCLR's
NT-Xent loss: the views the simclr and supervised encoders train on (encoders) and the random resized crops of
the streamed ResNet-18 retrains (models).

    digits (one channel):  translate, affine, erase, jitter, noise
    RGB (CIFAR-10, ...):   crop_resize, flips, colour (SimCLR's colour jitter and grayscale)

torch is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import math


def translate(x, gen, max_shift: int = 1):
    """Shift each image by up to `max_shift` pixels in each direction: zero-pad, then a random crop."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    p = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * max_shift)
    p = torch.gather(p, 2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
    return torch.gather(p, 3, cols)


def affine(x, gen, max_deg: float = 10.0, scale=(0.9, 1.1)):
    """A small random rotation and zoom about the centre (bilinear, zeros outside)."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_deg)
    s = scale[0] + torch.rand(b, generator=gen) * (scale[1] - scale[0])
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def erase(x, gen, p: float = 0.5, sizes=(2, 3)):
    """With probability p, zero a random square patch of side in `sizes` (inclusive) of each image."""
    import torch

    b, _, h, w = x.shape
    side = torch.randint(sizes[0], sizes[1] + 1, (b,), generator=gen)
    y0 = (torch.rand(b, generator=gen) * (h - side + 1)).long()
    x0 = (torch.rand(b, generator=gen) * (w - side + 1)).long()
    on = torch.rand(b, generator=gen) < p
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + side)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + side)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None])[:, None]
    return x.masked_fill(mask, 0.0)


def jitter(x, gen, p: float = 0.8, contrast=(0.7, 1.3), brightness: float = 0.1):
    """With probability p: ink intensity * contrast + brightness, per image."""
    import torch

    b = x.shape[0]
    on = (torch.rand(b, generator=gen) < p).float()[:, None, None, None]
    c = contrast[0] + torch.rand(b, generator=gen) * (contrast[1] - contrast[0])
    br = (torch.rand(b, generator=gen) * 2 - 1) * brightness
    y = x * c[:, None, None, None] + br[:, None, None, None]
    return on * y + (1 - on) * x


def noise(x, gen, max_sigma: float = 0.08):
    import torch

    sigma = torch.rand(x.shape[0], generator=gen)[:, None, None, None] * max_sigma
    return x + sigma * torch.randn(x.shape, generator=gen)


def crop_resize(x, gen, area=(0.25, 1.0)):
    """SimCLR's random resized crop: a square of a random fraction of the area at a random place, scaled back to
    the full size (bilinear), then a horizontal flip with probability 1/2."""
    import torch
    import torch.nn.functional as F

    b, g = x.shape[0], gen.device            # drawn where the generator lives (the device: no host copies)
    f = torch.sqrt(area[0] + torch.rand(b, generator=gen, device=g) * (area[1] - area[0]))     # side fraction
    tx = (torch.rand(b, generator=gen, device=g) * 2 - 1) * (1 - f)
    ty = (torch.rand(b, generator=gen, device=g) * 2 - 1) * (1 - f)
    flip = torch.where(torch.rand(b, generator=gen, device=g) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b, device=g)
    theta = torch.stack([torch.stack([f * flip, zero, tx], 1), torch.stack([zero, f, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)




def colour(x, gen, p: float = 0.8, strength: float = 0.4, p_gray: float = 0.2):
    """With probability p, brightness, contrast and saturation jitter (each by up to +-strength); then
    grayscale with probability p_gray. RGB batches only."""
    import torch

    b = x.shape[0]

    def factor():
        return 1 + (torch.rand(b, generator=gen) * 2 - 1)[:, None, None, None] * strength

    on = (torch.rand(b, generator=gen) < p).float()[:, None, None, None]
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    y = x * factor()                                                             # brightness
    y = (y - y.mean(dim=(1, 2, 3), keepdim=True)) * factor() + y.mean(dim=(1, 2, 3), keepdim=True)   # contrast
    yg = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    y = (y - yg) * factor() + yg                                                 # saturation
    x = on * y + (1 - on) * x
    to_gray = (torch.rand(b, generator=gen) < p_gray).float()[:, None, None, None]
    return to_gray * gray.expand_as(x) + (1 - to_gray) * x


def augment(x, gen):
    """One random view of a batch (B, C, H, W) in [0, 1]; all randomness from `gen`. RGB images (CIFAR-10,
    image folders) get SimCLR's views: random resized crop, flip, colour jitter, grayscale. Other images
    (digits) get small shifts, rotations, zooms, erasing, ink jitter and noise, and no flips: digits are not
    mirror-invariant."""
    if x.shape[1] == 3:
        return colour(crop_resize(x, gen), gen).clamp(0.0, 1.0)
    x = translate(x, gen)
    x = affine(x, gen)
    x = erase(x, gen)
    x = jitter(x, gen)
    x = noise(x, gen)
    return x.clamp(0.0, 1.0)


def nt_xent(z1, z2, temperature: float):
    """SimCLR's normalised-temperature cross-entropy: each view must pick out its partner among the 2B-1 others."""
    import torch
    import torch.nn.functional as F

    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)
