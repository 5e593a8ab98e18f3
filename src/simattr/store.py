"""The data contract: every path, file format and provenance attribute lives here.

Layout (relative to the results root, see docs/data-contract.md, CONTRACT_VERSION):

    {dataset}/encoders/{encoder}.pt                               trained encoder state (torch)
    {dataset}/embeddings/{encoder}/{split}/shard-{NNNNN}.h5      features, labels, indices
    {dataset}/embeddings/{encoder}/{split}/index.json            manifest of the shards (written last)
    {dataset}/scores/{encoder}/{ranker}/class-{c}.h5             test x train score matrix, topk
    {dataset}/support/queries.h5                                 sampled test images, flip classes, retrain data
    {dataset}/support/{encoder}/{ranker}/{metric}/{test_index}.json   one answer
    {dataset}/support/{encoder}/{ranker}/{metric}.json           gather of the answers (rule output)
    {dataset}/subsets/{purpose}/shard-{NNNNN}.h5                 models trained on random subsets: masks, margins
    {dataset}/attributions/trak-checkpoints.pt                   the full-data models TRAK attributes (torch)
    {dataset}/attributions/trak.h5                               TRAK scores, every test x train image
    {dataset}/lds/{encoder}/{ranker}.json                        linear datamodeling score of one method
    {dataset}/report/{support.csv, lds.csv, overlap.csv, cost.csv, report.md, support_cdf.png, topk_grid.png}
    {dataset}/report/inputs.json                                 the report's input lists (workflow manifest)
    {dataset}/export/                                            the evaluation problem for outside methods
                                                                 (simattr.export; the `export` target)

Every write is atomic: a temporary file in the same folder, renamed into place when complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import __version__
from .errors import SimattrError

CONTRACT_VERSION = 7   # 2: queries.h5 full_correct; answers carry checks and violations. 3: embeddings carry
                       # the label map (class_names) and the files a folder dataset left out (skipped).
                       # 4: subset-model shards, TRAK attributions, LDS files; score files may carry
                       # full_scores (every training image, signed). 5: answers carry their engine, seed set,
                       # fitted curve, both readings and intervals; replicate answers {t}.rep{r}.json; gathers
                       # carry seed_sets and replicates; the report adds wins.csv and retest.csv. 6: external
                       # methods (scores/external/NAME/, source_sha256 in their score files and answers), the
                       # export folder. 7: CNN training states ({...}.state.pt beside journals and outputs),
                       # plan/calibration.json, the report's plan.csv

# Path templates (relative to the results root). The workflow rules build their patterns from these.
ENCODERS_DIR = "{dataset}/encoders"
ENCODER_STATE = ENCODERS_DIR + "/{encoder}.pt"
EMBEDDINGS_DIR = "{dataset}/embeddings"
ENCODER_EMBED_DIR = EMBEDDINGS_DIR + "/{encoder}"
EMBED_DIR = ENCODER_EMBED_DIR + "/{split}"
INDEX_NAME = "index.json"
EMBED_INDEX = EMBED_DIR + "/" + INDEX_NAME
SHARD_NAME = "shard-{shard:05d}.h5"
EMBED_SHARD = EMBED_DIR + "/shard-{shard}.h5"     # the workflow's pattern: {shard} is SHARD_NAME's 5 digits
SCORES_ROOT = "{dataset}/scores"
SCORES_DIR = SCORES_ROOT + "/{encoder}/{ranker}"
SCORES = SCORES_DIR + "/class-{cls}.h5"
SUPPORT_ROOT = "{dataset}/support"
QUERIES = SUPPORT_ROOT + "/queries.h5"
SUPPORT_DIR = SUPPORT_ROOT + "/{encoder}/{ranker}/{metric}"
SUPPORT_ANSWER = SUPPORT_DIR + "/{test_index}.json"          # replicate r >= 1: {test_index}.rep{r}.json
SUPPORT_GATHER = SUPPORT_ROOT + "/{encoder}/{ranker}/{metric}.json"
SUBMITIT_DIR = "{dataset}/submitit/{encoder}-{ranker}-{metric}"   # submitit's own files of a support job
SUBSETS_DIR = "{dataset}/subsets/{purpose}"
SUBSET_SHARD = SUBSETS_DIR + "/shard-{shard}.h5"  # {shard}: SHARD_NAME's 5 digits
ATTRIBUTIONS_DIR = "{dataset}/attributions"
TRAK_CHECKPOINTS = ATTRIBUTIONS_DIR + "/trak-checkpoints.pt"
TRAK_SCORES = ATTRIBUTIONS_DIR + "/trak.h5"
LDS_DIR = "{dataset}/lds"
LDS = LDS_DIR + "/{encoder}/{ranker}.json"
EXPORT_DIR = "{dataset}/export"
REPORT_DIR = "{dataset}/report"
REPORT_MANIFEST = REPORT_DIR + "/inputs.json"
METHOD_FIGURES = REPORT_DIR + "/methods/{encoder}/{ranker}"   # the HTML report's pages of one method
#: the report's files in REPORT_DIR (overlap with two methods or more, lds when LDS is on, retest with replicates)
REPORT_FILES = {"support": "support.csv", "markdown": "report.md", "cdf": "support_cdf.png", "grid": "topk_grid.png",
                "cost": "cost.csv", "overlap": "overlap.csv", "lds": "lds.csv", "wins": "wins.csv",
                "retest": "retest.csv", "plan": "plan.csv"}
BENCHMARK = "{dataset}/benchmarks/{stage}/{name}.tsv"      # a job's Snakemake benchmark
LOG = "{dataset}/logs/{stage}/{name}.log"                   # a job's log (and its usage record: usage_path)
#: (stage, folder): what each stage keeps on disk (the report's bytes stored per stage)
STORED = (("embed", EMBEDDINGS_DIR), ("embed", ENCODERS_DIR), ("trak", ATTRIBUTIONS_DIR),
          ("datamodels", SUBSETS_DIR.replace("{purpose}", "datamodels")),
          ("lds", SUBSETS_DIR.replace("{purpose}", "lds")), ("lds", LDS_DIR), ("score", SCORES_ROOT),
          ("support", SUPPORT_ROOT))
REPORT_MANIFEST_KEYS = ("gathers", "scores", "benchmarks", "stored", "lds", "method_costs")  # lists of strings


def answer_path(answers_dir: str | os.PathLike, test_index: int, replicate: int = 0) -> Path:
    """One support answer in SUPPORT_DIR: {test_index}.json for the configured seed set (replicate 0),
    {test_index}.rep{r}.json for replicate r >= 1 (seed set support.seed_set + r)."""
    name = Path(SUPPORT_ANSWER).name.format(test_index=test_index)
    return Path(answers_dir) / (name if replicate == 0 else name.replace(".json", f".rep{replicate}.json"))


def config_hash(values: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine an output (sorted JSON, sha256)."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fill(template: str, **fields: Any) -> str:
    """`template` with the given fields filled in; the others stay as {wildcards}."""
    class Keep(dict):
        def __missing__(self, key):
            return f"{{{key}}}"

    return template.format_map(Keep(fields))


def usage_path(log_path: str | os.PathLike) -> Path:
    """Where a command run with --log LOG records what it used (wall, CPU and GPU seconds): LOG with the suffix
    .usage.json."""
    return Path(log_path).with_suffix(".usage.json")


def seed_from(*identity: Any) -> int:
    """A 31-bit seed derived from what a unit of work is (so reruns of one unit repeat exactly)."""
    blob = json.dumps([str(x) for x in identity]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------- atomic
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)     # mkstemp makes 0600; outputs are shared like any file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; if the block succeeds it replaces `path` whole (an old folder there is
    removed), else it is removed: a folder that exists is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)     # mkdtemp makes 0700; outputs are shared like any folder
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise SimattrError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SimattrError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


class Journal:
    """Units of work finished inside one job, one JSON line each, flushed and synced as each finishes.

    A job that dies (preempted, killed, out of time) and runs again reads its journal and redoes none of the
    units listed there. Lines written for other inputs (another `identity`) and lines cut by a crash are
    dropped when the journal is opened. `key` names the fields that identify a unit (e.g. ("k", "seed_index")).
    """

    def __init__(self, path: str | os.PathLike | None, identity: str, key: tuple[str, ...]):
        self.path = Path(path) if path else None
        self.identity = identity
        self.key = key
        self.entries: dict[tuple, dict] = {}
        if self.path is None:
            return
        lines = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:        # a line cut by a crash
                    continue
                if isinstance(entry, dict) and entry.get("identity") == identity:
                    self.entries[tuple(entry[k] for k in key)] = entry
                    lines.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:         # keep only this identity's complete lines
            tmp.write_text("".join(ln + "\n" for ln in lines))
        self._fh = self.path.open("a")

    def add(self, **entry: Any) -> dict:
        entry = {"identity": self.identity, **entry}
        self.entries[tuple(entry[k] for k in self.key)] = entry
        if self.path is not None:
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return entry

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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
