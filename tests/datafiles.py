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


def toy_blobs() -> tuple[np.ndarray, np.ndarray]:
    """120 training rows in 5-d around 3 class centres (40 each): a problem a small MLP learns in a few steps."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 5)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centers[y] + rng.normal(size=(120, 5))).astype(np.float32)
    return X, y


#: support settings of the toy problem (bisection; the adaptive engine's keys added where a test needs them)
SUPPORT_SETTINGS = {"dataset": "toy", "encoder": "toy", "ranker": "knn_l2", "k_max": 40, "bisection_steps": 6,
                    "seeds": 3, "threshold": 0.5, "early_stop": True, "monotone_checks": 0, "engine": "bisection",
                    "seed_set": 0,
                    "model": {"name": "mlp", "hidden": 8, "steps": 40, "lr": 0.05, "weight_decay": 0.0}}


def support_inputs(folder: Path) -> tuple[str, list[str]]:
    """The support stage's inputs for the toy problem in `folder`: queries.h5 (4 test images, classes 0 1 2 0)
    and one knn_l2 score file per class; (queries path, score file paths by class)."""
    from simattr import store

    X, y = toy_blobs()
    rng = np.random.default_rng(2)
    test_idx = np.array([0, 1, 2, 3])
    yq = np.array([0, 1, 2, 0])
    Xq = np.stack([X[y == c].mean(0) for c in yq]) + rng.normal(scale=0.3, size=(4, X.shape[1]))
    store.write_arrays(folder / "queries.h5", {
        "X_train": X, "y_train": y, "test_indices": test_idx, "X_query": Xq.astype(np.float32),
        "y_query": yq, "flip_class": (yq + 1) % 3, "full_correct": np.ones((5, 4), np.uint8)}, {"n_classes": 3})
    files = []
    for c in range(3):
        te = np.flatnonzero(yq == c)
        tr = np.flatnonzero(y == c)
        s = -((Xq[te][:, None] - X[tr][None]) ** 2).sum(-1)
        f = folder / f"class-{c}.h5"
        store.write_scores(f, test_indices=test_idx[te], train_indices=tr, scores=s, topk=tr[np.argsort(-s, 1)],
                           attrs={"class": c, "encoder": "toy", "ranker": "knn_l2"})
        files.append(str(f))
    return str(folder / "queries.h5"), files
