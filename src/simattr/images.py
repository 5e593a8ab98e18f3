"""Pixels: image files decoded as the datasets store their images, and raw images scaled to [0, 1].

Raw images are uint8 (8-bit datasets) or float32 (digits, already on a 0-1 scale); `to_unit` and `tensor_to_unit`
make both float32 in [0, 1]. Decoding (PIL) turns any readable image file into the layout a dataset uses; a file
that is not a readable image is one line naming it. No simattr imports but errors; torch only where a tensor is
made.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import SimattrError


def to_unit(raw: np.ndarray) -> np.ndarray:
    """Raw images as float32 in [0, 1]: 8-bit images divided by 255 (the same float32 bits as on a device)."""
    raw = np.asarray(raw)
    return raw.astype(np.float32) / np.float32(255.0) if raw.dtype == np.uint8 else raw.astype(np.float32, copy=False)


def tensor_to_unit(x, device=None):
    """A raw image batch as a float32 torch tensor in [0, 1] on `device`: moved first (uint8: a quarter of the
    bytes, without blocking when pinned), then scaled there."""
    import torch  # kept out of start-up

    x = torch.as_tensor(x)
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def check_image(path: Path) -> str | None:
    """None when PIL can open and verify the file, else why not."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any failure to read means a bad image
        return f"{type(e).__name__}: {e}"
    return None


def decode(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (3, size, size): RGB, shorter side resized to `size`, centre crop."""
    with open_image(path, "remove or replace it") as im:
        return np.asarray(resize_crop(eight_bit(im).convert("RGB"), size), dtype=np.uint8).transpose(2, 0, 1)


def resize_crop(im, size: int):
    """A PIL image with its shorter side resized to `size` (bilinear) and centre-cropped square: the pixels of
    torchvision's F.center_crop(F.resize(im, size), [size, size]) on a PIL image, without importing torchvision
    (seconds: it pulls in torch._dynamo), so decoders and `simattr explain` start fast."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


@contextlib.contextmanager
def open_image(path: Path, fix: str):
    """A decoded PIL image; a file that is not a readable image is one line naming it (and `fix`)."""
    try:
        with Image.open(path) as im:
            im.load()
            yield im
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable, truncated or foreign files
        raise SimattrError(f"{path}: cannot decode the image ({type(e).__name__}: {e}); {fix}") from None


def eight_bit(im):
    """A 16-bit or 32-bit integer grey image (PNG's 16-bit modes) as 8-bit grey, scaled (PIL's convert would clip);
    any other mode as it is (convert("RGB") / ("L") handle palettes, alpha, CMYK)."""
    if im.mode.startswith("I"):
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), "L")
    return im


def read_image(path: str | Path, dataset: str, folder_size: int | None) -> np.ndarray:
    """An image file as dataset `dataset` stores its own images (datasets.Split.load_raw), for images from outside
    it (folder_size: a folder dataset's side, None for the others):
    digits, grey, resized to 8 x 8 if it is not, on the digits' 0-16 scale (float32 v / 16, (1, 8, 8));
    cifar10, RGB, shorter side resized to 32 and centre-cropped (uint8 (3, 32, 32)); imagenet / imagefolder, the
    dataset's own decoder (uint8 (3, size, size)). Palettes, alpha (dropped), CMYK and 16-bit images are
    converted; a file that is not an image is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise SimattrError(f"{path}: image file not found")
    if folder_size is not None:                   # imagenet, imagefolder: the folder datasets' decoder
        return decode(path, folder_size)
    with open_image(path, "expected a PNG, JPEG or other image file") as im:
        im = eight_bit(im)
        if dataset == "digits":
            im = im.convert("L")
            if im.size != (8, 8):
                im = im.resize((8, 8), Image.Resampling.BOX)
            grey = np.round(np.asarray(im, dtype=np.float64) * 16.0 / 255.0)
            return (grey.astype(np.float32) / np.float32(16.0))[None]
        im = im.convert("RGB")
        if im.size != (32, 32):
            im = resize_crop(im, 32)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
