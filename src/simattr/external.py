"""Scores of an outside attribution method (dattri, traker, Kronfluence, your own code), read for simattr's
counterfactual evaluation.

A method's scores are one matrix of test images against training images in simattr's index order, higher = more
supportive (sign -1 when the method's lower score means more supportive):

    read_scores("trak.pt", n_test=360, n_train=1437)                      # layout detected from the shape
    read_scores("if.npy", n_test=360, n_train=360, layout="train_by_test") # square: the layout must be given
    read_scores("s.h5", key="scores", n_test=360, n_train=1437, index="sampled.npy")   # rows of some test images

Files: `.npy` (no pickles), `.pt` (a tensor, as dattri and traker return them; loaded with weights_only, so a
pickle of other objects is refused) or `.h5` / `.hdf5` (the dataset named by `key`). Layouts: `test_by_train`
(n_test x n_train, simattr's and traker's orientation) or `train_by_test` (dattri's). Rows may cover only some
test images: then `index` (a `.npy` or a text file of test indices, one per row, each once) says which.

Every bad input is one line naming the file and what was expected (SimattrError): a missing file, a wrong shape
(both shapes named), a square matrix without a layout, NaN or inf values (counted), an integer, boolean or complex
dtype, an index with duplicates or out-of-range entries, a `.pt` that holds no tensor. `content_hash` is the
identity of a scores file: every output made from it hashes it, so replacing the file reruns what depends on it.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from .backbones import torch_load
from .errors import SimattrError
from .store import read_json

LAYOUTS = ("test_by_train", "train_by_test")
#: what an external method's scores depend on besides the file's path (settings.for_job: the score jobs' param)
SOURCE_KEYS = ("layout", "sign", "key", "sha256", "index_sha256", "command")
#: an optional NAME.cost.json beside the scores file: what the method cost its author (the report's cost row)
COST_FIELDS = {"wall_s": float, "gpu_s": float, "models_trained": int}
SUFFIXES = (".npy", ".pt", ".h5", ".hdf5")


def content_hash(path: str | Path) -> str:
    """sha256 of the file's bytes (read in blocks); a file not there is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise SimattrError(f"{path}: scores file not found")
    st = path.stat()
    return _content_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """content_hash, remembered per (file, size, mtime) within a process (the workflow asks once per job)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:                 # object arrays need a pickle
        raise SimattrError(f"{path}: not a plain numeric .npy array (pickled objects are not read: {e})") from None
    except Exception as e:  # noqa: BLE001 - numpy raises several types for a foreign or truncated file
        raise SimattrError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None


def _load_pt(path: Path) -> np.ndarray:
    import torch


    obj = torch_load(path, "scores file not found", "not loadable with torch.load(weights_only=True): save a "
                     "tensor (torch.save(scores, path))")
    if not isinstance(obj, torch.Tensor):
        raise SimattrError(f"{path}: expected a tensor (torch.save(scores, path)), got {type(obj).__name__}")
    if obj.is_complex():
        raise SimattrError(f"{path}: scores must be real floats, got dtype {obj.dtype}")
    return obj.detach().cpu().numpy()


def _load_h5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SimattrError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        names = [k for k in f if isinstance(f[k], h5py.Dataset)]
        if key is None:
            if len(names) != 1:
                raise SimattrError(f"{path}: holds {len(names)} datasets ({', '.join(names) or 'none'}); name the "
                                   "scores with `key`")
            key = names[0]
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise SimattrError(f"{path}: no dataset '{key}' (datasets: {', '.join(names) or 'none'})")
        return f[key][()]


def load_matrix(path: str | Path, key: str | None = None) -> np.ndarray:
    """The raw array of a scores file, by its suffix."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise SimattrError(f"{path}: unknown scores format '{path.suffix}'; expected {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise SimattrError(f"{path}: scores file not found")
    if path.suffix == ".npy":
        return _load_npy(path)
    if path.suffix == ".pt":
        return _load_pt(path)
    return _load_h5(path, key)


def read_index(path: str | Path, n_test: int) -> np.ndarray:
    """The test indices of a scores file's rows: a `.npy` array or a text file of integers (one per line or
    whitespace-separated), each in 0..n_test-1 and each once."""
    path = Path(path)
    if not path.is_file():
        raise SimattrError(f"{path}: index file not found")
    if path.suffix == ".npy":
        idx = _load_npy(path)
    else:
        try:
            idx = np.loadtxt(path, dtype=np.float64, ndmin=1)
        except ValueError as e:
            raise SimattrError(f"{path}: expected whole numbers, one test index per row ({e})") from None
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and (idx.dtype.kind not in "iuf" or not np.all(np.mod(idx, 1) == 0))):
        raise SimattrError(f"{path}: expected a list of whole numbers (test indices), got shape {idx.shape} of "
                           f"{idx.dtype}")
    idx = idx.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= n_test)]
    if bad.size:
        raise SimattrError(f"{path}: {bad.size} index entr{'y is' if bad.size == 1 else 'ies are'} outside the "
                           f"{n_test} test images (first: {int(bad[0])})")
    values, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise SimattrError(f"{path}: {dup.size} test index(es) appear more than once (first: {int(dup[0])})")
    return idx


def read_scores(path: str | Path, *, n_test: int, n_train: int, layout: str | None = None, sign: int = 1,
                key: str | None = None, index: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (rows, n_train) float64, higher = more supportive; test indices (rows,)) of an outside method's
    scores file; `sign` -1 flips a method whose lower score is the more supportive."""
    path = Path(path)
    if layout is not None and layout not in LAYOUTS:
        raise SimattrError(f"{path}: unknown layout '{layout}'; expected {' or '.join(LAYOUTS)}")
    if sign not in (1, -1):
        raise SimattrError(f"{path}: sign must be 1 or -1, got {sign!r}")
    a = np.asarray(load_matrix(path, key))
    if a.dtype.kind not in "f":
        raise SimattrError(f"{path}: scores must be real floats, got dtype {a.dtype}")
    tests = read_index(index, n_test) if index is not None else np.arange(n_test, dtype=np.int64)
    rows = len(tests)
    shapes = {"test_by_train": (rows, n_train), "train_by_test": (n_train, rows)}
    if layout is None:
        fits = [name for name, shape in shapes.items() if a.shape == shape]
        if len(fits) == 2:
            raise SimattrError(f"{path}: a square {a.shape[0]} x {a.shape[1]} matrix could be either layout; set "
                               "layout: test_by_train (rows = test images) or train_by_test (rows = training "
                               "images)")
        if not fits:
            raise SimattrError(f"{path}: shape {a.shape}, expected {shapes['test_by_train']} (test_by_train) or "
                               f"{shapes['train_by_test']} (train_by_test): {rows} test image(s) x {n_train} "
                               "training images")
        layout = fits[0]
    elif a.shape != shapes[layout]:
        raise SimattrError(f"{path}: shape {a.shape}, expected {shapes[layout]} for layout {layout}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise SimattrError(f"{path}: {bad} score(s) are NaN or infinite (of {a.size})")
    scores = (a.T if layout == "train_by_test" else a).astype(np.float64) * sign
    return np.ascontiguousarray(scores), tests


def source(entry: dict) -> dict:
    """The identity of an external method entry's scores (config `methods`): its layout, sign and key, and the
    content hashes of its scores file and index file (None without one). What the score jobs' settings hold:
    replacing either file reruns exactly what is made from it. A method the workflow makes from the export
    (`command`: rule outside_scores) is its command line instead: its file is not there yet when the workflow is
    read (sha256 None), and a new command remakes the file and so reruns what is made from it."""
    index = entry.get("index")
    made = entry.get("command")
    return {"layout": entry.get("layout"), "sign": int(entry.get("sign", 1)), "key": entry.get("key"),
            "sha256": None if made else content_hash(entry["path"]),
            "index_sha256": None if index is None else _index_hash(index), "command": made}


def _index_hash(path: str | Path) -> str:
    if not Path(path).is_file():
        raise SimattrError(f"{path}: index file not found")
    return content_hash(path)


def cost_path(entry: dict) -> Path:
    """Where an external method's cost sidecar sits: NAME.cost.json beside its scores file."""
    return Path(entry["path"]).parent / f"{entry['name']}.cost.json"


def read_cost(path: str | Path) -> dict:
    """A cost sidecar: {wall_s, gpu_s, models_trained} (each optional, none negative); anything else is one line
    naming the file."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise SimattrError(f"{path}: expected a JSON object with {', '.join(COST_FIELDS)}")
    unknown = sorted(set(d) - set(COST_FIELDS))
    if unknown:
        raise SimattrError(f"{path}: unknown keys {', '.join(unknown)}; expected {', '.join(COST_FIELDS)}")
    out = {}
    for k, kind in COST_FIELDS.items():
        v = d.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()) \
                or not v >= 0:
            raise SimattrError(f"{path}: '{k}' must be a {'whole ' if kind is int else ''}number >= 0, got "
                               f"{json.dumps(v)}")
        out[k] = kind(v)
    return out
