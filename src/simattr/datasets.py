"""Datasets: images, labels and a seeded stratified train/test split.

Images are float32 arrays (N, C, H, W) scaled to [0, 1]; labels int64. The position of an image in its
split (0..N-1) is its index everywhere in the data contract.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SimattrError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    images: np.ndarray        # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray        # (N,) int64
    source_index: np.ndarray  # (N,) int64, position in the dataset before splitting
    class_names: tuple[str, ...]


# name -> number of classes; known without loading anything (the workflow expands class files from it)
N_CLASSES = {"digits": 10}


def n_classes(name: str) -> int:
    if name not in N_CLASSES:
        raise SimattrError(f"unknown dataset '{name}'; valid: {', '.join(sorted(N_CLASSES))}")
    return N_CLASSES[name]


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return images, d.target.astype(np.int64), tuple(str(c) for c in d.target_names)


def load_split(name: str, split: str, *, test_fraction: float, seed: int) -> Split:
    """The `split` part of dataset `name`, split by a stratified shuffle seeded by `seed`."""
    if split not in SPLITS:
        raise SimattrError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    n_classes(name)
    if not 0.0 < test_fraction < 1.0:
        raise SimattrError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    images, labels, class_names = _digits()
    from sklearn.model_selection import train_test_split

    order = np.arange(len(labels))
    tr, te = train_test_split(order, test_size=test_fraction, random_state=seed, stratify=labels)
    idx = np.sort(tr if split == "train" else te)
    return Split(images=images[idx], labels=labels[idx], source_index=idx.astype(np.int64),
                 class_names=class_names)
