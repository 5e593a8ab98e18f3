"""The HDF5 formats of the data contract: embedding shards and their index, score files, array files; each read
checks its datasets and provenance attributes and names the file in a one-line error."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import SimattrError
from .files import atomic_path, read_json, write_json
from .paths import CONTRACT_VERSION, INDEX_NAME, SHARD_NAME


def _open_h5(path: Path, what: str):
    import h5py

    if not path.exists():
        raise SimattrError(f"{path}: {what} not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SimattrError(f"{path}: not a readable HDF5 file ({e})") from None


def _open_rows(path: Path, what: str):
    """An HDF5 file opened for reading a few rows: no data-sieve buffer, so a 4 KB row costs a 4 KB read, not the
    64 KB block HDF5 reads around a small read of a contiguous dataset by default (16x the bytes from disk)."""
    import h5py

    if not path.exists():
        raise SimattrError(f"{path}: {what} not found")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_sieve_buf_size(0)
    try:
        return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=fapl))
    except OSError as e:
        raise SimattrError(f"{path}: not a readable HDF5 file ({e})") from None


def _need(f, path: Path, key: str):
    if key not in f:
        raise SimattrError(f"{path}: missing dataset '{key}'")
    return f[key][()]


def _attrs(f) -> dict[str, Any]:
    out = {}
    for k, v in f.attrs.items():
        out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def provenance(**attrs: Any) -> dict[str, Any]:
    """Attributes every HDF5 output carries."""
    return {"simattr_version": __version__, "contract_version": CONTRACT_VERSION, **attrs}


# ----------------------------------------------------------------------------------------- shards
def write_shard(path: str | os.PathLike, features: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                *, dataset: str, split: str, encoder: str, config_hash: str, class_names=(),
                float16: bool = False) -> None:
    """One shard: features (float32, or float16 to halve the bytes; read back as float32), labels, indices."""
    import h5py

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(labels) or len(labels) != len(indices):
        raise ValueError("shard arrays disagree in length or features is not 2-d")
    if not np.isfinite(features).all():
        raise SimattrError(f"{path}: encoder '{encoder}' produced NaN or inf features")
    if float16:
        with np.errstate(over="ignore"):            # checked on the next line, with the file's name
            features = features.astype(np.float16)
        if not np.isfinite(features).all():
            raise SimattrError(f"{path}: features of encoder '{encoder}' overflow float16 (|x| > 65504); set "
                               "embed.float16: false")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
            for k, v in provenance(dataset=dataset, split=split, encoder=encoder,
                                   feature_dim=int(features.shape[1]), config_hash=config_hash,
                                   class_names=json.dumps(list(class_names))).items():
                f.attrs[k] = v


SHARD_ATTRS = ("dataset", "split", "encoder", "feature_dim", "config_hash")


def shard_meta(path: str | os.PathLike, *, indices: bool = True
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.dtype]:
    """A shard's labels, indices, attributes and features dtype, checked against its features' shape and dtype, without reading the
    features (the shapes come from the file's metadata). With indices=False only the first index is read (the
    indices were checked to run start..stop-1 when the manifest was written: write_index)."""
    path = Path(path)
    with _open_rows(path, "embedding shard") as f:
        for key in ("features", "labels", "indices"):
            if key not in f:
                raise SimattrError(f"{path}: missing dataset '{key}'")
        shape, dtype = f["features"].shape, f["features"].dtype
        labels = f["labels"][()]
        n_idx = f["indices"].shape[0] if f["indices"].ndim == 1 else -1
        idx = f["indices"][()] if indices else f["indices"][:1]
        attrs = _attrs(f)
    for key in SHARD_ATTRS:
        if key not in attrs:
            raise SimattrError(f"{path}: missing attribute '{key}'")
    if len(shape) != 2 or shape[1] != attrs["feature_dim"] or not (shape[0] == len(labels) == n_idx):
        raise SimattrError(f"{path}: features {shape}, labels {labels.shape}, indices ({n_idx},) "
                           f"disagree with feature_dim={attrs['feature_dim']}")
    if dtype not in (np.float16, np.float32):
        raise SimattrError(f"{path}: features are {dtype}, expected float16 or float32")
    return labels, idx, attrs, dtype


def read_shard(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    path = Path(path)
    with _open_h5(path, "embedding shard") as f:
        feats = _need(f, path, "features")
        labels = _need(f, path, "labels")
        idx = _need(f, path, "indices")
        attrs = _attrs(f)
    for key in ("dataset", "split", "encoder", "feature_dim", "config_hash"):
        if key not in attrs:
            raise SimattrError(f"{path}: missing attribute '{key}'")
    if feats.ndim != 2 or feats.shape[1] != attrs["feature_dim"] or not (len(feats) == len(labels) == len(idx)):
        raise SimattrError(f"{path}: features {feats.shape}, labels {labels.shape}, indices {idx.shape} "
                           f"disagree with feature_dim={attrs['feature_dim']}")
    if not np.isfinite(feats).all():
        raise SimattrError(f"{path}: features contain NaN or inf")
    return feats.astype(np.float32, copy=False), labels, idx, attrs


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of a split of n images (shard_size 0: one shard; an empty split: none)."""
    size = shard_size if shard_size > 0 else max(n, 1)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def write_index(out_dir: str | os.PathLike, shard_files: list, *, n: int, expect: dict[str, Any],
                skipped=()) -> dict:
    """Check the shards of one split and write their manifest index.json (the split's completion mark).

    Every shard must carry the attributes in `expect` (dataset, split, encoder, config_hash) and the same
    feature_dim and class_names as the others, and together they must cover indices 0..n-1 in order; a shard
    that does not (stale: written under other settings, or of another shard_size) is refused by name.
    Shard files in `out_dir` that the manifest does not list are removed.

    The features are not read: their shape and dtype come from the files' metadata (shard_meta), so the check
    reads labels and indices only (16 bytes an image) and its memory does not grow with feature_dim. NaN and inf
    are not scanned for here: write_shard refuses them before a shard exists, and every reader checks the rows
    it reads (read_shard, read_embeddings, EmbeddingRows.read)."""
    out_dir = Path(out_dir)
    shards, first, labels = [], None, []
    for p in sorted(Path(f) for f in shard_files):
        lab, idx, attrs, _ = shard_meta(p)
        for key, want in expect.items():
            if attrs.get(key) != want:
                raise SimattrError(f"{p}: {key}={attrs.get(key)!r} but the current settings give {want!r} (stale "
                                   "shard: delete it, or rerun the embed stage)")
        first = first or attrs
        for key in ("feature_dim", "class_names"):
            if attrs.get(key) != first.get(key):
                raise SimattrError(f"{p}: {key}={attrs.get(key)!r} differs from {shards[0]['file']}'s "
                                   f"{first.get(key)!r} (stale shard)")
        start = shards[-1]["stop"] if shards else 0
        if len(idx) and (idx[0] != start or not np.array_equal(idx, np.arange(start, start + len(idx)))):
            raise SimattrError(f"{p}: holds indices {idx[0]}..{idx[-1]}, expected to start at {start} (stale shard "
                               "of another shard_size?)")
        shards.append({"file": p.name, "start": start, "stop": start + len(idx)})
        labels.append(lab)
    covered = shards[-1]["stop"] if shards else 0
    if covered != n:
        raise SimattrError(f"{out_dir}: the shards cover {covered} images, the split has {n}")
    listed = {sh["file"] for sh in shards}
    for old in out_dir.glob("shard-*.h5"):        # shards of an earlier shard_size are not part of this set
        if old.name not in listed:
            old.unlink()
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    classes = {str(int(c)): int((labels == c).sum()) for c in np.unique(labels)}
    manifest = provenance(**expect, feature_dim=int(first["feature_dim"]) if first else 0, n=int(n), shards=shards,
                          class_counts=classes,
                          class_names=json.loads(first["class_names"]) if first and "class_names" in first else [],
                          skipped=list(skipped))
    write_json(out_dir / INDEX_NAME, manifest)
    return manifest


def write_embeddings(out_dir: str | os.PathLike, features: np.ndarray, labels: np.ndarray,
                     *, shard_size: int, dataset: str, split: str, encoder: str, config_hash: str,
                     class_names=(), skipped=()) -> dict:
    """Write one split's features (all in memory) as shards, then the manifest (see write_index)."""
    out_dir = Path(out_dir)
    files = []
    for s, (start, stop) in enumerate(shard_ranges(len(features), shard_size)):
        files.append(out_dir / SHARD_NAME.format(shard=s))
        write_shard(files[-1], features[start:stop], labels[start:stop], np.arange(start, stop),
                    dataset=dataset, split=split, encoder=encoder, config_hash=config_hash, class_names=class_names)
    return write_index(out_dir, files, n=len(features), skipped=skipped,
                       expect={"dataset": dataset, "split": split, "encoder": encoder, "config_hash": config_hash})


def read_embeddings(index_path: str | os.PathLike, *, expect_hash: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read every shard a manifest lists; check each shard's attributes against the manifest."""
    index_path = Path(index_path)
    manifest = read_json(index_path)
    if expect_hash is not None and manifest.get("config_hash") != expect_hash:
        raise SimattrError(f"{index_path}: config_hash {manifest.get('config_hash')} does not match the "
                           f"current settings ({expect_hash}); rerun the embed stage")
    feats, labels = [], []
    for sh in manifest["shards"]:
        f, l, idx, attrs = read_shard(index_path.parent / sh["file"])
        for key in ("dataset", "split", "encoder", "config_hash"):
            if attrs[key] != manifest[key]:
                raise SimattrError(f"{index_path.parent / sh['file']}: attribute {key}={attrs[key]!r} but the "
                                   f"manifest says {manifest[key]!r} (stale shard)")
        if attrs["feature_dim"] != manifest["feature_dim"]:
            raise SimattrError(f"{index_path.parent / sh['file']}: {attrs['feature_dim']}-d features but the manifest "
                               f"says {manifest['feature_dim']} (stale shard)")
        if (len(idx) and idx[0] != sh["start"]) or len(idx) != sh["stop"] - sh["start"]:
            raise SimattrError(f"{index_path.parent / sh['file']}: indices do not cover {sh['start']}..{sh['stop']}")
        feats.append(f)
        labels.append(l)
    return np.concatenate(feats), np.concatenate(labels), manifest


#: a shard's feature rows are read run by run (one contiguous slice each) up to this many runs; a selection with
#: more runs (scattered rows filling a large part of the shard) is read in blocks of READ_BLOCK_ROWS instead
MAX_RUN_READS = 512
READ_BLOCK_ROWS = 8192


class EmbeddingRows:
    """One split's embeddings, opened for reading only some rows (open_embeddings): the manifest, every label,
    and `read(rows)` for the features of the rows asked, as float32, in the order asked.

    Equal to the same rows of read_embeddings, bit for bit (float16 -> float32 is elementwise). `rows_read` and
    `bytes_read` count the feature rows and bytes read so far (the labels: `labels.nbytes`)."""

    def __init__(self, index_path: Path, manifest: dict, files: list[Path], bounds: np.ndarray, labels: np.ndarray,
                 itemsizes: list[int]):
        self.index_path, self.manifest, self.labels = index_path, manifest, labels
        self.feature_dim = int(manifest["feature_dim"])
        self.n = len(labels)
        self._files, self._bounds, self._itemsizes = files, bounds, itemsizes
        self.rows_read = 0
        self.bytes_read = 0

    def read(self, rows) -> np.ndarray:
        """Features (len(rows), feature_dim) float32 of the split's images `rows` (positions 0..n-1, any order,
        repeats allowed); only those rows are read from each shard, and they are checked for NaN and inf."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.feature_dim), dtype=np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise ValueError(f"rows outside 0..{self.n - 1}")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        for s, path in enumerate(self._files):
            lo, hi = np.searchsorted(srt, self._bounds[s:s + 2])
            if lo == hi:
                continue
            local, inverse = np.unique(srt[lo:hi] - self._bounds[s], return_inverse=True)
            with _open_rows(path, "embedding shard") as f:
                block = _read_rows(f["features"], local)
            block = block.astype(np.float32, copy=False)
            if not np.isfinite(block).all():
                raise SimattrError(f"{path}: features contain NaN or inf")
            out[order[lo:hi]] = block if len(local) == hi - lo else block[inverse]   # no repeats: no copy
            self.rows_read += len(local)
            self.bytes_read += len(local) * self.feature_dim * self._itemsizes[s]
        return out


def _read_rows(ds, local: np.ndarray) -> np.ndarray:
    """Rows `local` (sorted, unique) of an HDF5 dataset: one slice per run of consecutive rows, or, when there are
    more than MAX_RUN_READS runs, the blocks of READ_BLOCK_ROWS rows that hold some (bounded memory either way)."""
    out = np.empty((len(local), ds.shape[1]), dtype=ds.dtype)
    cuts = np.flatnonzero(np.diff(local) != 1) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(local)]])
    if len(starts) <= MAX_RUN_READS:
        for a, b in zip(starts, ends):
            out[a:b] = ds[int(local[a]):int(local[b - 1]) + 1]
        return out
    for b0 in range(int(local[0]) - int(local[0]) % READ_BLOCK_ROWS, int(local[-1]) + 1, READ_BLOCK_ROWS):
        lo, hi = np.searchsorted(local, [b0, b0 + READ_BLOCK_ROWS])
        if lo < hi:
            block = ds[int(local[lo]):int(local[hi - 1]) + 1]
            out[lo:hi] = block[local[lo:hi] - local[lo]]
    return out


def open_embeddings(index_path: str | os.PathLike, *, expect_hash: str | None = None) -> EmbeddingRows:
    """A split's manifest and labels, every shard checked as read_embeddings checks it (attributes against the
    manifest, feature_dim, the indices each covers) from the files' metadata, without reading any feature: those
    are read row by row when asked (EmbeddingRows.read), and checked for NaN and inf then."""
    index_path = Path(index_path)
    manifest = read_json(index_path)
    if expect_hash is not None and manifest.get("config_hash") != expect_hash:
        raise SimattrError(f"{index_path}: config_hash {manifest.get('config_hash')} does not match the "
                           f"current settings ({expect_hash}); rerun the embed stage")
    files, labels, bounds, itemsizes = [], [], [0], []
    for sh in manifest["shards"]:
        path = index_path.parent / sh["file"]
        lab, idx, attrs, dtype = shard_meta(path, indices=False)
        for key in ("dataset", "split", "encoder", "config_hash"):
            if attrs[key] != manifest[key]:
                raise SimattrError(f"{path}: attribute {key}={attrs[key]!r} but the manifest says {manifest[key]!r} "
                                   "(stale shard)")
        if attrs["feature_dim"] != manifest["feature_dim"]:
            raise SimattrError(f"{path}: {attrs['feature_dim']}-d features but the manifest says "
                               f"{manifest['feature_dim']} (stale shard)")
        if (len(idx) and idx[0] != sh["start"]) or len(lab) != sh["stop"] - sh["start"] or sh["start"] != bounds[-1]:
            raise SimattrError(f"{path}: indices do not cover {sh['start']}..{sh['stop']}")
        itemsizes.append(dtype.itemsize)
        files.append(path)
        labels.append(lab)
        bounds.append(sh["stop"])
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return EmbeddingRows(index_path, manifest, files, np.asarray(bounds, np.int64), labels, itemsizes)


# ----------------------------------------------------------------------------------------- scores
def write_scores(path: str | os.PathLike, *, test_indices: np.ndarray, train_indices: np.ndarray,
                 scores: np.ndarray, topk: np.ndarray, attrs: dict[str, Any],
                 extra: dict[str, np.ndarray] | None = None) -> None:
    """One class's score file. `extra`: optional datasets, e.g. full_scores (m, n_train): the ranker's signed
    score of every training image (rankers that score beyond their candidates: trak, datamodels, esvm_signed)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("test_indices", data=np.asarray(test_indices, dtype=np.int64))
            f.create_dataset("train_indices", data=np.asarray(train_indices, dtype=np.int64))
            f.create_dataset("scores", data=np.asarray(scores, dtype=np.float32))
            f.create_dataset("topk", data=np.asarray(topk, dtype=np.int64))
            for k, v in (extra or {}).items():
                f.create_dataset(k, data=v)
            for k, v in provenance(**attrs).items():
                f.attrs[k] = v


SCORE_EXTRAS = ("full_scores", "runner_up")


def read_scores(path: str | os.PathLike, extras: bool = False) -> dict[str, Any]:
    """A score file; with `extras`, also its full_scores / runner_up when it has them (m x n_train: large)."""
    path = Path(path)
    with _open_h5(path, "score file") as f:
        out = {k: _need(f, path, k) for k in ("test_indices", "train_indices", "scores", "topk")}
        out.update({k: f[k][()] for k in SCORE_EXTRAS if extras and k in f})
        out["attrs"] = _attrs(f)
    m, n = len(out["test_indices"]), len(out["train_indices"])
    if out["scores"].shape != (m, n):
        raise SimattrError(f"{path}: scores has shape {out['scores'].shape}, expected ({m}, {n})")
    if "full_scores" in out and (out["full_scores"].ndim != 2 or len(out["full_scores"]) != m):
        raise SimattrError(f"{path}: full_scores has shape {out['full_scores'].shape}, expected ({m}, n_train)")
    return out


# ----------------------------------------------------------------------------------------- queries
def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
            for k, v in provenance(**attrs).items():
                f.attrs[k] = v


def read_arrays(path: str | os.PathLike, keys: tuple[str, ...], optional: tuple[str, ...] = ()
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The datasets `keys` (each required: a missing one is an error naming the file) and those of `optional`
    that the file has, with the file's attributes."""
    path = Path(path)
    with _open_h5(path, "file") as f:
        arrays = {k: _need(f, path, k) for k in keys}
        arrays.update({k: _need(f, path, k) for k in optional if k in f})
        return arrays, _attrs(f)
