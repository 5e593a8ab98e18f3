"""Small dataset files in the real on-disk formats, made by the tests (nothing is downloaded)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """n images as CIFAR stores them: uint8 rows of 3072 (R plane, G plane, B plane), and labels 0..9 with
    every class present when n >= 10. Each class has its own mean colour, so classes are learnable."""
    rng = np.random.default_rng(seed)
    labels = [i % 10 for i in range(n)]
    rng.shuffle(labels)
    base = np.linspace(20, 235, 10)
    imgs = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        colour = np.array([base[y], base[(y * 3) % 10], base[(y * 7) % 10]])
        imgs[i] = np.clip(colour[:, None, None] + rng.normal(0, 25, (3, 32, 32)), 0, 255).astype(np.uint8)
    return imgs.reshape(n, 3072), labels


def blank_images(n: int) -> tuple[np.ndarray, list[int]]:
    """n black images with labels 0..9 in turn (a full-size root made in a second, for dry runs)."""
    return np.zeros((n, 3072), np.uint8), [i % 10 for i in range(n)]


def make_cifar_root(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0, blank: bool = False) -> Path:
    """ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as pickled dicts (torchvision's
    format: 'data' uint8 (N, 3072), 'labels' list of int; the meta holds 'label_names')."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images = (lambda n, s: blank_images(n)) if blank else cifar_images
    for b in range(1, 6):
        data, labels = images(per_batch, seed + b)
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {b} of 5", "data": data, "labels": labels}, f)
    data, labels = images(n_test, seed + 100)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return Path(root)


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: dict | int = 6, val_per_class: int = 3,
                      size=(20, 14), seed: int = 0) -> Path:
    """ROOT/train/<class>/<n>.png and ROOT/val/<class>/<n>.png: small RGB PNGs (odd sizes, some grayscale and
    RGBA, so decoding converts and resizes), each class its own colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            d = Path(root) / split / name
            d.mkdir(parents=True, exist_ok=True)
            k = count[name] if isinstance(count, dict) else count
            for i in range(k):
                w, h = size
                colour = np.array([40 + 80 * c, 200 - 60 * c, 30 + 100 * (c % 2)], dtype=float)
                arr = np.clip(colour + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr)
                if i % 5 == 3:
                    im = im.convert("L")
                elif i % 5 == 4:
                    im = im.convert("RGBA")
                im.save(d / f"{i:03d}.png")
    return Path(root)


def make_empty_image_folder(root: Path, n_classes: int, per_class: int, val_per_class: int) -> Path:
    """An ImageFolder tree of empty .JPEG files: enough for listing (a dry run), not for decoding."""
    for split, k in (("train", per_class), ("val", val_per_class)):
        for c in range(n_classes):
            d = Path(root) / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                (d / f"{c}_{i}.JPEG").touch()
    return Path(root)
