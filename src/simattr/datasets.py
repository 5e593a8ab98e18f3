"""Datasets: images, labels and the train/test split, for every dataset simattr can read.

    digits       scikit-learn's bundled 8x8 digits (no download); a seeded stratified split (test_fraction)
    cifar10      torchvision's CIFAR10 from a local root (ROOT/cifar-10-batches-py/...); never downloads
    imagenet     ImageNet in ImageFolder layout: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG
    imagefolder  any ImageFolder: ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test/)

Images are float32 arrays (N, C, H, W) scaled to [0, 1] (`Split.load`); 8-bit datasets also give them as stored,
uint8 (`Split.load_raw`, `Split.stream`: what travels to a GPU); labels int64. The position of an image in its split
(0..N-1) is its index everywhere in the data contract. Folder datasets are listed without decoding (sorted
classes, sorted files within a class, as torchvision's ImageFolder) and decoded on demand: RGB, the shorter
side resized to `image_size`, then centre-cropped to image_size x image_size.

Importing this module is cheap (the workflow calls `n_classes` while building its DAG): torch, torchvision and
PIL are imported where they are used.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import images
from .errors import SimattrError
from .typed import Named

SPLITS = ("train", "test")
NAMES = ("digits", "cifar10", "imagenet", "imagefolder")
FOLDER_DATASETS = ("imagenet", "imagefolder")
#: the file endings torchvision's ImageFolder accepts as images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGES = ("error", "skip")
#: the fields that determine each dataset's images, labels and split (Spec.identity; the others are None)
IDENTITY_FIELDS = {"digits": ("name", "test_fraction", "split_seed"), "cifar10": ("name", "root"),
                   "imagenet": ("name", "root", "image_size", "bad_images"),
                   "imagefolder": ("name", "root", "image_size", "bad_images")}
DEFAULT_IMAGE_SIZE = 224
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass(frozen=True)
class Spec(Named):
    """What a dataset is: everything that changes its images, labels or split (the config's `dataset`). No
    defaults here: the schema has them (Spec.of, config.defaults); the fields a dataset does not read are None."""
    name: str
    root: str | None                    # cifar10, imagenet, imagefolder
    test_fraction: float | None         # digits: held-out fraction of the stratified split
    split_seed: int | None              # digits: seed of the split
    image_size: int | None              # folder datasets: decoded size (None: 224)
    bad_images: str | None              # folder datasets: 'error' names the first bad file; 'skip' drops them
    FIELDS = IDENTITY_FIELDS            # the fields each dataset reads (a class attribute, not a field)
    WHAT = "dataset"                    # its config section

    @classmethod
    def from_config(cls, section: dict) -> "Spec":
        """From the config's `dataset` section; an image_size set for a dataset of fixed-size images is an
        error (one line), not silently ignored."""
        if section.get("image_size") is not None and section.get("name") in NAMES and \
                section["name"] not in FOLDER_DATASETS:
            raise SimattrError(f"dataset.image_size applies to {', '.join(FOLDER_DATASETS)} only "
                               f"({section['name']} images have a fixed size)")
        return super().from_config(section)

    def __post_init__(self):
        if self.name not in NAMES:
            raise SimattrError(f"unknown dataset '{self.name}'; valid: {', '.join(NAMES)}")
        if self.name == "digits":
            if not 0.0 < self.test_fraction < 1.0:
                raise SimattrError(f"dataset.test_fraction must be in (0, 1), got {self.test_fraction}")
        elif not self.root:
            raise SimattrError(f"dataset '{self.name}' needs dataset.root (a local folder; nothing is downloaded)")
        if self.image_size is not None and self.name not in FOLDER_DATASETS:
            raise SimattrError(f"dataset.image_size applies to {', '.join(FOLDER_DATASETS)} only "
                               f"({self.name} images have a fixed size)")
        if self.image_size is not None and self.image_size < 1:
            raise SimattrError(f"dataset.image_size must be >= 1, got {self.image_size}")
        if self.name in FOLDER_DATASETS and self.bad_images not in BAD_IMAGES:
            raise SimattrError(f"dataset.bad_images must be one of {', '.join(BAD_IMAGES)}, got {self.bad_images!r}")


class Source:
    """Picklable images of a split (DataLoader workers unpickle it under the forkserver and spawn start methods):
    raw(index) -> (n, C, H, W) uint8 for 8-bit datasets, float32 in [0, 1] otherwise."""

    def raw(self, index: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, index: np.ndarray) -> np.ndarray:
        return images.to_unit(self.raw(index))


class ArraySource(Source):
    """Images held in memory: (N, C, H, W), or (N, H, W, C) when `channels_last` (CIFAR-10's batch files)."""

    def __init__(self, images: np.ndarray, channels_last: bool = False):
        self.images, self.channels_last = images, channels_last

    def raw(self, index):
        x = self.images[index]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_last else x


class FolderSource(Source):
    """Image files under `root`, decoded on demand to uint8 (3, size, size)."""

    def __init__(self, root: Path, files: tuple[str, ...], size: int):
        self.root, self.files, self.size = Path(root), files, size

    def raw(self, index):
        out = np.empty((len(index), 3, self.size, self.size), dtype=np.uint8)
        for j, k in enumerate(index):
            out[j] = images.decode(self.root / self.files[k], self.size)
        return out


class TakenSource(Source):
    """The images at `index` of another source."""

    def __init__(self, outer, index: np.ndarray):
        self.outer, self.index = outer, index

    def raw(self, index):
        return _raw(self.outer, self.index[np.asarray(index, dtype=np.int64)])


def _raw(loader, index: np.ndarray) -> np.ndarray:
    """A loader's raw images: a Source's own, or a plain callable's float32 images."""
    return loader.raw(index) if isinstance(loader, Source) else loader(index)


class Split:
    """One split of a dataset: labels known up front, images decoded on demand (`load`) or all at once
    (`images`, cached; for datasets that fit in memory)."""

    def __init__(self, labels: np.ndarray, source_index: np.ndarray, class_names: tuple[str, ...],
                 loader: Callable[[np.ndarray], np.ndarray], sources: tuple[str, ...] | None = None,
                 skipped: tuple[str, ...] = ()):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_index = np.asarray(source_index, dtype=np.int64)   # position in the dataset before splitting
        self.class_names = tuple(class_names)
        self.sources = sources              # folder datasets: file paths relative to the root, per image
        self.skipped = skipped              # folder datasets with bad_images: skip: the files left out
        self._loader = loader               # a Source (picklable), or any callable index -> float32 images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        """An int: one image (C, H, W), decoded on demand. An index array or boolean mask: the Split of those
        images (nothing decoded). So a Split stands in for an image array where images are looked up one at a
        time or rows are selected (a training set with images removed)."""
        if np.ndim(i) == 0:
            return self.load(np.asarray([i]))[0]
        return self.take(i)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("images", None)           # the cached decoded images: workers decode what they need
        return state

    def take(self, index) -> "Split":
        """The Split of the images at `index` (positions or a boolean mask), in that order."""
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        return Split(self.labels[index], self.source_index[index], self.class_names,
                     TakenSource(self._loader, index),
                     tuple(self.sources[j] for j in index) if self.sources is not None else None, self.skipped)

    def load(self, index) -> np.ndarray:
        """Images at positions `index` of this split: float32 (n, C, H, W) in [0, 1]."""
        return images.to_unit(self.load_raw(index))

    def load_raw(self, index) -> np.ndarray:
        """Images at positions `index` as stored: uint8 (n, C, H, W) for 8-bit datasets (CIFAR-10, image
        folders), float32 in [0, 1] otherwise (digits)."""
        return _raw(self._loader, np.asarray(index, dtype=np.int64))

    @functools.cached_property
    def images(self) -> np.ndarray:
        return self.load(np.arange(len(self)))

    def stream(self, batch_size: int, workers: int = 0, *, labels: bool = False, pin: bool = False,
               context: str | None = None) -> "Stream":
        """A Stream of this split's images (see Stream)."""
        return Stream(self, batch_size, workers, labels=labels, pin=pin, context=context)


class _Order:
    """The sampler of a Stream: the current epoch's positions, cut into batches (set before each epoch)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.index = batch_size, np.zeros(0, np.int64)

    def __iter__(self):
        for s in range(0, len(self.index), self.batch_size):
            yield self.index[s:s + self.batch_size]

    def __len__(self):
        return -(-len(self.index) // self.batch_size)


class _Batches:
    """DataLoader dataset of a Stream: one item is a whole batch (its positions in, raw tensors out)."""

    def __init__(self, split: Split, labels: bool):
        self.split, self.labels = split, labels

    def __getitem__(self, index):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.split.load_raw(index)))
        return (x, torch.from_numpy(self.split.labels[index])) if self.labels else x


class Stream:
    """Batches of a split's images as raw torch tensors (uint8 for 8-bit datasets: a quarter of float32's bytes
    through the workers' pipes and to the device; `images.tensor_to_unit` scales them there), decoded by `workers`
    DataLoader processes that persist from one call to the next (an epoch each), into pinned memory when `pin`
    (copies to CUDA then do not block). Picklable for every start method (`context`: forkserver, spawn, fork;
    None: the platform's default). Call it with an epoch's positions; `close()` (or garbage collection) stops
    the workers."""

    def __init__(self, split: Split, batch_size: int, workers: int = 0, *, labels: bool = False, pin: bool = False,
                 context: str | None = None):
        self.split, self.labels, self.workers = split, labels, max(0, int(workers))
        self.order = _Order(batch_size)
        self._loader = None
        if self.workers:
            import torch.utils.data as tud

            self._loader = tud.DataLoader(
                _Batches(split, labels), batch_size=None, sampler=self.order, num_workers=self.workers,
                pin_memory=pin, persistent_workers=True, prefetch_factor=2,
                multiprocessing_context=multiprocessing.get_context(context) if context else None)
        self._direct = None if self._loader is not None else _Batches(split, labels)
        self.pin = pin

    def __call__(self, index):
        self.order.index = np.asarray(index, dtype=np.int64)
        if self._loader is not None:
            yield from self._loader
            return
        for idx in self.order:
            item = self._direct[idx]
            if self.pin:
                item = tuple(t.pin_memory() for t in item) if self.labels else item.pin_memory()
            yield item

    def close(self) -> None:
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None


def _spec(data, test_fraction: float | None, seed: int | None) -> Spec:
    if isinstance(data, Spec):
        return data
    kw = {"name": data}
    if test_fraction is not None:
        kw["test_fraction"] = test_fraction
    if seed is not None:
        kw["split_seed"] = seed
    return Spec.of(**kw)


def load_split(data: Spec | str, split: str, *, test_fraction: float | None = None, seed: int | None = None
               ) -> Split:
    """The `split` ('train' or 'test') of a dataset, given as a Spec or (digits) a name plus split settings."""
    spec = _spec(data, test_fraction, seed)
    if split not in SPLITS:
        raise SimattrError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if spec.name == "digits":
        return _digits_split(spec, split)
    if spec.name == "cifar10":
        return _cifar_split(spec, split)
    return _folder_split(spec, split)


def n_classes(data: Spec | str) -> int:
    """How many classes (known without decoding any image: the workflow expands per-class jobs from it)."""
    spec = _spec(data, None, None)
    if spec.name in ("digits", "cifar10"):
        return 10
    return len(_folder_classes(spec))


def split_size(data: Spec | str, split: str) -> int:
    """How many images a split has (folder datasets: listed, not decoded; CIFAR-10: its batch files read)."""
    return len(load_split(data, split))


# ------------------------------------------------------------------------------------------------ digits
def _digits_split(spec: Spec, split: str) -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=spec.test_fraction, random_state=spec.split_seed,
                              stratify=labels)
    idx = np.sort(tr if split == "train" else te)
    return Split(labels[idx], idx, tuple(str(c) for c in d.target_names), ArraySource(pixels[idx]))


# ----------------------------------------------------------------------------------------------- CIFAR-10
def _cifar_split(spec: Spec, split: str) -> Split:
    """torchvision's CIFAR10 reader on ROOT/cifar-10-batches-py. The files' presence is checked here (with an
    error that says what to put where); their md5 sums are not, so subsets and test fixtures load too."""
    from torchvision.datasets import CIFAR10

    folder = Path(spec.root) / CIFAR_FOLDER
    need = CIFAR_FILES["train"] + CIFAR_FILES["test"] + ["batches.meta"]
    missing = [f for f in need if not (folder / f).is_file()]
    if missing:
        raise SimattrError(f"dataset.root={spec.root}: expected {folder}/ holding {', '.join(need)} (extract "
                           f"{CIFAR_URL} into {spec.root}); missing: {', '.join(missing)}")

    class LocalCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(folder / "batches.meta", "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")["label_names"]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        ds = LocalCIFAR10(spec.root, train=split == "train", download=False)
    except Exception as e:  # noqa: BLE001 - find the file it was, and say so in one line
        for name in CIFAR_FILES[split] + ["batches.meta"]:
            try:
                with open(folder / name, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                if name != "batches.meta" and (np.asarray(entry["data"]).shape[-1] != 3 * 32 * 32
                                               or len(entry["data"]) != len(entry["labels"])):
                    raise ValueError("'data' is not (N, 3072) or 'labels' differs in length")
            except Exception as inner:  # noqa: BLE001
                raise SimattrError(f"{folder / name}: not a CIFAR-10 batch file ({type(inner).__name__}: "
                                   f"{inner})") from None
        raise SimattrError(f"{folder}: could not read CIFAR-10 ({type(e).__name__}: {e})") from None
    data = np.ascontiguousarray(ds.data)                     # (N, 32, 32, 3) uint8
    labels = np.asarray(ds.targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(ds.classes)):
        raise SimattrError(f"{folder}: labels outside 0..{len(ds.classes) - 1}")

    return Split(labels, np.arange(len(labels)), tuple(ds.classes), ArraySource(data, channels_last=True))


# --------------------------------------------------------------------------------------- image folders
def _folder_dir(spec: Spec, split: str) -> Path:
    root = Path(spec.root)
    if not root.is_dir():
        raise SimattrError(f"dataset.root={spec.root}: not a folder (expected {spec.root}/train/<class>/<image> "
                           f"and {spec.root}/val/<class>/<image>)")
    if split == "train":
        d = root / "train"
    else:
        d = next((root / s for s in ("val", "test") if (root / s).is_dir()), root / "val")
    if not d.is_dir():
        raise SimattrError(f"dataset.root={spec.root}: no {d.name}/ folder (expected the ImageFolder layout "
                           f"{spec.root}/train/<class>/<image> and {spec.root}/val/<class>/<image>)")
    return d


def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


@functools.lru_cache(maxsize=8)
def _folder_classes(spec: Spec) -> tuple[str, ...]:
    d = _folder_dir(spec, "train")
    with os.scandir(d) as it:
        entries = _visible(it)
    stray = [e.name for e in entries if not e.is_dir()]
    if stray:
        raise SimattrError(f"{d / stray[0]}: a file directly in {d.name}/ (expected one folder per class, "
                           f"{d}/<class>/<image>)")
    if not entries:
        raise SimattrError(f"{d}: no class folders (expected {d}/<class>/<image>)")
    return tuple(e.name for e in entries)


@functools.lru_cache(maxsize=8)
def _folder_listing(spec: Spec, split: str) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    """(files relative to the root, labels, skipped files) of one split, sorted by class then file name."""
    classes = _folder_classes(spec)
    d = _folder_dir(spec, split)
    root = Path(spec.root)
    with os.scandir(d) as it:
        present = _visible(it)
    foreign = [e.name for e in present if e.is_dir() and e.name not in classes]
    if foreign:
        raise SimattrError(f"{d / foreign[0]}: class folder not in {root / 'train'} (test classes must be train "
                           "classes)")
    stray = [e.name for e in present if not e.is_dir()]
    if stray:
        raise SimattrError(f"{d / stray[0]}: a file directly in {d.name}/ (expected {d}/<class>/<image>)")
    files, labels, skipped = [], [], []
    for c, name in enumerate(classes):
        cdir = d / name
        if not cdir.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            for fn in sorted(f for f in filenames if not f.startswith(".")):
                p = Path(dirpath) / fn
                why = None if fn.lower().endswith(IMAGE_EXTENSIONS) else \
                    f"not an image file (endings read: {' '.join(IMAGE_EXTENSIONS)})"
                if why is None and spec.bad_images == "skip":
                    why = images.check_image(p)
                if why is not None:
                    if spec.bad_images == "error":
                        raise SimattrError(f"{p}: {why}; remove it, or set dataset.bad_images: skip to leave out "
                                           "files that cannot be read")
                    skipped.append(str(p.relative_to(root)))
                    continue
                files.append(str(p.relative_to(root)))
                labels.append(c)
    if not files:
        raise SimattrError(f"{d}: no images in any class folder (expected {d}/<class>/<image>)")
    return tuple(files), np.asarray(labels, dtype=np.int64), tuple(skipped)


def read_image(spec: Spec, path: str | Path) -> np.ndarray:
    """An image file from outside dataset `spec`, as the dataset stores its own images (images.read_image)."""
    return images.read_image(path, spec.name,
                             (spec.image_size or DEFAULT_IMAGE_SIZE) if spec.name in FOLDER_DATASETS else None)


def _folder_split(spec: Spec, split: str) -> Split:
    files, labels, skipped = _folder_listing(spec, split)
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    return Split(labels, np.arange(len(labels)), _folder_classes(spec), FolderSource(Path(spec.root), files, size),
                 sources=files, skipped=skipped)
