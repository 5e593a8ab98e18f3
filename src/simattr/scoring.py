"""The score stage: one class's test images scored against the training images by a feature ranker
(score_class) or a model-based one (score_model_class), with each test image's top-k.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time

import numpy as np

from . import config as sconfig
from . import datasets, external, store, subsets
from .errors import SimattrError

log = logging.getLogger("simattr")


#: training rows read and scored at once where a ranker scores its candidates chunk by chunk (knn_l2, knn_cos, and
#: esvm_signed's runner-up similarities): 16,384 x 2,048 float32 is 128 MiB. A last, shorter chunk is padded with
#: zero rows to this length (and the padding's scores dropped), so every matrix product has the shape the
#: whole-candidate call had in the same BLAS regime: the scores equal those of one call with every candidate, bit
#: for bit (checked by tests/test_scoring_rows.py; a 1-column product can round differently from a wide one).
CHUNK_ROWS = 16384
#: feature rankers whose scores of a set of candidates are those of its parts side by side


def _class_rows(train_index: str, test_index: str, dims: tuple[int, int], manifests: tuple[dict, dict],
                tr_y: np.ndarray, te_y: np.ndarray, cls: int, class_conditioned: bool) -> tuple[np.ndarray, np.ndarray]:
    """The class's test rows and its candidate training rows, once the two splits are checked to be of one
    embedding (feature_dim and config_hash)."""
    if dims[0] != dims[1]:
        raise SimattrError(f"{train_index} holds {dims[0]}-d features but {test_index} {dims[1]}-d "
                           "(embedded by different encoders); rerun the embed stage")
    hashes = [m["config_hash"] for m in manifests]
    if hashes[0] != hashes[1]:
        raise SimattrError(f"{train_index} and {test_index} come from different settings "
                           f"({hashes[0]} vs {hashes[1]}); rerun the embed stage")
    q_idx = np.flatnonzero(te_y == cls)
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"{train_index}: class {cls} has no training images")
    return q_idx, c_idx


def score_class(*, data: datasets.Spec, encoder: str, ranker: str, cls: int, train_index: str, test_index: str,
                class_conditioned: bool, topk: int, ranker_settings: dict, out: str, progress: bool = True,
                chunk_rows: int = CHUNK_ROWS) -> dict:
    """Score class `cls`'s test images against the training images (its own class's, or all) with a feature
    ranker; `ranker_settings` are its keywords (config.ranker_settings).

    Reads the labels of both splits and only the feature rows the ranker uses (store.open_embeddings): the
    class's test images, and its candidates (esvm, knn_*: the class's training images, or all of them chunk by
    chunk for knn_* when not class-conditioned); random reads no feature; esvm_signed reads every training row
    once, chunk by chunk, for the runner-up classes, then the rows of the class and each runner-up class. Memory:
    peak_bytes. Returns what it read and how long reading and scoring took."""
    from . import rankers

    t0 = time.perf_counter()
    tr = store.open_embeddings(train_index)
    te = store.open_embeddings(test_index)
    reader = _Timed()
    reader.seconds = time.perf_counter() - t0          # the manifests, shard metadata and labels
    tr_m, te_m = tr.manifest, te.manifest
    tr_y, te_y = tr.labels, te.labels
    q_idx, c_idx = _class_rows(train_index, test_index, (tr.feature_dim, te.feature_dim), (tr_m, te_m), tr_y, te_y,
                               cls, class_conditioned)
    settings = dict(ranker_settings)
    random_seed = settings.pop("random_seed", 0)
    extra = {}
    spec = sconfig.ranker(ranker)
    if spec.reads == "none":            # random: one seeded draw per query and candidate, no feature read
        settings = {"query_seeds": _query_seeds(data.name, random_seed, q_idx)}
        scores = rankers.score(ranker, np.zeros((len(q_idx), 0), np.float32), np.zeros((len(c_idx), 0), np.float32),
                               progress=progress, **settings)
    else:
        queries = reader.read(te, q_idx)
        if spec.reads == "all":         # esvm_signed: every training image scored, its class +, the runner-up's -
            full, runner_up = _esvm_signed(queries, tr, reader, cls, chunk_rows, progress, settings)
            scores, extra = full[:, c_idx], {"full_scores": full, "runner_up": runner_up}
        elif spec.chunked and len(c_idx) > chunk_rows:
            scores = np.empty((len(q_idx), len(c_idx)), np.float32)
            for sl, feats in _chunks(tr, reader, c_idx, chunk_rows):
                scores[:, sl] = rankers.score(ranker, queries, feats, progress=progress, **settings)[
                    :, :sl.stop - sl.start]
        else:   # esvm's solve needs every candidate at once (peak_bytes counts them); knn_* within one chunk
            scores = rankers.score(ranker, queries, reader.read(tr, c_idx), progress=progress, **settings)
    attrs = {"dataset": data.name, "encoder": encoder, "ranker": ranker, "embedding_config_hash": tr_m["config_hash"],
             "n_train": len(tr_y),
             "settings": json.dumps({k: v for k, v in settings.items() if k != "query_seeds"}, sort_keys=True),
             "random_seed": int(random_seed)}
    _write_class_scores(out, cls, q_idx, c_idx, scores, topk, class_conditioned, attrs, extra, t0)
    wall = time.perf_counter() - t0
    stats = {"rows_read": tr.rows_read + te.rows_read, "bytes_read": tr.bytes_read + te.bytes_read,
             "label_bytes": tr.labels.nbytes + te.labels.nbytes, "read_s": reader.seconds, "wall_s": wall}
    log.info("%s/%s class %s: %d test x %d train scored in %.2f s (%d feature rows, %.1f MB read in %.2f s)", encoder,
             ranker, cls, len(q_idx), len(c_idx), wall, stats["rows_read"], stats["bytes_read"] / 1e6, reader.seconds)
    return stats


def _query_seeds(dataset: str, random_seed: int, q_idx: np.ndarray) -> np.ndarray:
    """The random ranker's seed of each query: from what it is (dataset, random_seed, test index), so a rerun of one
    class repeats its draws."""
    return np.array([store.seed_from("random", dataset, random_seed, int(i)) for i in q_idx])


class _Timed:
    """Reads rows of the open splits, adding up the seconds spent reading."""

    def __init__(self):
        self.seconds = 0.0

    def read(self, split: store.EmbeddingRows, rows: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return split.read(rows)
        finally:
            self.seconds += time.perf_counter() - t


def _chunks(split: store.EmbeddingRows, reader: _Timed, rows: np.ndarray, chunk_rows: int):
    """(slice of `rows`, their features) chunk by chunk; a last shorter chunk is padded with zero rows to chunk_rows
    (see CHUNK_ROWS) when there is more than one chunk."""
    step = max(1, int(chunk_rows))
    for a in range(0, len(rows), step):
        sel = rows[a:a + step]
        feats = reader.read(split, sel)
        if len(rows) > step and len(sel) < step:
            feats = np.concatenate([feats, np.zeros((step - len(sel), feats.shape[1]), np.float32)])
        yield slice(a, a + len(sel)), feats


def _esvm_signed(queries: np.ndarray, tr: store.EmbeddingRows, reader: _Timed, cls: int, chunk_rows: int,
                 progress: bool, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """rankers.esvm_signed, reading the training features chunk by chunk for the runner-up classes (every row, once:
    a query's runner-up is found among all classes), then only the rows of `cls` and each runner-up class."""
    from . import rankers

    kw = {k: settings[k] for k in ("chunk_size", "device")}
    runner = rankers.RunnerUp(len(queries), settings["neighbours"])
    for sl, feats in _chunks(tr, reader, np.arange(tr.n), chunk_rows):
        runner.add(rankers.knn_cos(queries, feats, **kw)[:, :sl.stop - sl.start], tr.labels[sl])
    r = runner.classes(cls)
    full = rankers.signed_scores(queries, lambda cand: reader.read(tr, cand), tr.labels, cls, r,
                                 C=settings["C"], progress=progress, **kw)
    return full, r


def score_class_full_read(*, data: datasets.Spec, encoder: str, ranker: str, cls: int, train_index: str,
                          test_index: str, class_conditioned: bool, topk: int, ranker_settings: dict, out: str,
                          progress: bool = True) -> dict:
    """score_class as it was before it read only the rows it uses: every shard of both splits read whole
    (store.read_embeddings), as float32. Kept as the reference score_class is checked against, bit for bit
    (tests/test_scoring_rows.py), and as the 'old' side of benchmarks/scale.py; the workflow never calls it."""
    from . import rankers

    t0 = time.perf_counter()
    tr_f, tr_y, tr_m = store.read_embeddings(train_index)
    te_f, te_y, te_m = store.read_embeddings(test_index)
    read_s = time.perf_counter() - t0
    q_idx, c_idx = _class_rows(train_index, test_index, (tr_f.shape[1], te_f.shape[1]), (tr_m, te_m), tr_y, te_y,
                               cls, class_conditioned)
    settings = dict(ranker_settings)
    random_seed = settings.pop("random_seed", 0)
    extra = {}
    if sconfig.ranker(ranker).reads == "all":      # every training image scored: its own class +, the runner-up's -
        full, runner_up = rankers.esvm_signed(te_f[q_idx], tr_f, tr_y, cls, progress=progress, **settings)
        scores, extra = full[:, c_idx], {"full_scores": full, "runner_up": runner_up}
    else:
        if sconfig.ranker(ranker).reads == "none":
            settings = {"query_seeds": _query_seeds(data.name, random_seed, q_idx)}
        scores = rankers.score(ranker, te_f[q_idx], tr_f[c_idx], progress=progress, **settings)
    attrs = {"dataset": data.name, "encoder": encoder, "ranker": ranker, "embedding_config_hash": tr_m["config_hash"],
             "n_train": len(tr_y),
             "settings": json.dumps({k: v for k, v in settings.items() if k != "query_seeds"}, sort_keys=True),
             "random_seed": int(random_seed)}
    _write_class_scores(out, cls, q_idx, c_idx, scores, topk, class_conditioned, attrs, extra, t0)
    return {"rows_read": len(tr_f) + len(te_f), "read_s": read_s, "wall_s": time.perf_counter() - t0}


def _write_class_scores(out: str, cls: int, q_idx: np.ndarray, c_idx: np.ndarray, scores: np.ndarray, topk: int,
                        class_conditioned: bool, attrs: dict, extra: dict, t0: float) -> None:
    from . import rankers

    top = c_idx[rankers.topk(scores, topk)] if len(q_idx) else np.zeros((0, min(topk, len(c_idx))), np.int64)
    attrs = {**attrs, "class": int(cls), "class_conditioned": bool(class_conditioned),
             "wall_s": time.perf_counter() - t0}
    store.write_scores(out, test_indices=q_idx, train_indices=c_idx, scores=scores, topk=top, attrs=attrs,
                       extra=extra)


def score_model_class(*, data: datasets.Spec, ranker: str, cls: int, class_conditioned: bool, topk: int, out: str,
                      trak_scores: str | None = None, subset_shards: list[str] = (), datamodels: dict | None = None,
                      progress: bool = True) -> None:
    """Scores of one class's test images by a model-based ranker (trak, datamodels): every training image is
    scored (full_scores, signed); the candidates ranked for the support stage are those of score_class."""
    from . import datamodels as dm
    t0 = time.perf_counter()
    tr_y = datasets.load_split(data, "train").labels
    te_y = datasets.load_split(data, "test").labels
    q_idx = np.flatnonzero(te_y == cls)
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"class {cls} has no training images")
    if ranker == "trak":
        if not trak_scores:
            raise SimattrError("ranker trak needs its attribution file (--trak-scores)")
        arrays, attrs = store.read_arrays(trak_scores, ("scores", "test_labels", "train_labels"))
        if not (np.array_equal(arrays["test_labels"], te_y) and np.array_equal(arrays["train_labels"], tr_y)):
            raise SimattrError(f"{trak_scores}: made for another split of the data; rerun the trak rule")
        full = arrays["scores"][q_idx]
        settings = {k: attrs.get(k) for k in ("checkpoints_hash", "n_checkpoints", "proj_dim", "projector_seed",
                                              "lambda_reg")}
    elif ranker == "datamodels":
        masks, margins, attrs = subsets.read_shards(list(subset_shards), "datamodels")
        if attrs["n_train"] != len(tr_y) or attrs["n_test"] != len(te_y):
            raise SimattrError(f"datamodels subset shards hold {attrs['n_train']} train / {attrs['n_test']} test "
                               f"images, the dataset {len(tr_y)} / {len(te_y)}; rerun the subsets rule")
        full, info = dm.fit_datamodels(masks, margins[:, q_idx], **(datamodels or {}))
        settings = {"n_models": len(masks), "alpha": attrs["alpha"], "recipe": attrs["recipe"], **(datamodels or {})}
        log.info("datamodels class %s: %d models, median nonzeros %s", cls, len(masks),
                 np.median(info["nonzero"]) if len(q_idx) else "-")
    else:
        raise SimattrError(f"'{ranker}' is not a model-based ranker (trak, datamodels)")
    full = np.asarray(full, np.float32).reshape(len(q_idx), len(tr_y))
    attrs = {"dataset": data.name, "encoder": "model", "ranker": ranker, "embedding_config_hash": "",
             "n_train": len(tr_y),
             "settings": json.dumps(settings, sort_keys=True, default=str), "random_seed": 0}
    _write_class_scores(out, cls, q_idx, c_idx, full[:, c_idx], topk, class_conditioned, attrs,
                        {"full_scores": full}, t0)
    log.info("model/%s class %s: %d test x %d train scored in %.2f s", ranker, cls, len(q_idx), len(tr_y),
             time.perf_counter() - t0)


def score_external_class(*, data: datasets.Spec, name: str, cls: int, scores_path: str, index_path: str | None,
                         class_conditioned: bool, topk: int, source: dict, out: str) -> None:
    """One class's score file from an outside method's scores (simattr.external.read_scores): its test images'
    rows in the file, their candidates' scores (class-conditioned as for every ranker, or all training images)
    and every training image's (full_scores, signed: LDS reads them). `source` is the identity the workflow
    computed (external.source): the file must still have that content (unless the workflow made it: `command`)."""
    t0 = time.perf_counter()
    sha = external.content_hash(scores_path)
    if source["sha256"] is not None and sha != source["sha256"]:
        raise SimattrError(f"{scores_path}: changed since the workflow read it (sha256 {sha[:12]}..., expected "
                           f"{source['sha256'][:12]}...); run snakemake again")
    if (index_path is None) != (source["index_sha256"] is None) or (
            index_path is not None and external.content_hash(index_path) != source["index_sha256"]):
        raise SimattrError(f"{index_path or scores_path}: the index file differs from the one the workflow read; "
                           "run snakemake again")
    tr_y = datasets.load_split(data, "train").labels
    te_y = datasets.load_split(data, "test").labels
    full, tests = external.read_scores(scores_path, n_test=len(te_y), n_train=len(tr_y), layout=source["layout"],
                                       sign=source["sign"], key=source["key"], index=index_path)
    rows = np.flatnonzero(te_y[tests] == cls)
    rows = rows[np.argsort(tests[rows], kind="stable")]             # the class's test images in index order
    q_idx = tests[rows]
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"class {cls} has no training images")
    full = full[rows].astype(np.float32)
    attrs = {"dataset": data.name, "encoder": "external", "ranker": name, "embedding_config_hash": "",
             "n_train": len(tr_y), "settings": json.dumps(source, sort_keys=True), "random_seed": 0,
             "source_sha256": sha}
    _write_class_scores(out, cls, q_idx, c_idx, full[:, c_idx], topk, class_conditioned, attrs,
                        {"full_scores": full}, t0)
    log.info("external/%s class %s: %d test x %d train from %s in %.2f s", name, cls, len(q_idx), len(c_idx),
             scores_path, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- resources
#: resident memory of a score job before it reads anything: Python, numpy, h5py and torch imported (measured with
#: benchmarks/scale.py: 0.50 GiB), rounded up
BASE_BYTES = 576 * 2**20
#: what the first exemplar-SVM solve adds whatever its size (torch's CPU thread pools and LAPACK workspaces;
#: measured: ~0.2 GiB for 15 queries x 13 negatives of 2,048-d)
ESVM_FIXED_BYTES = 256 * 2**20
#: the pessimistic speeds runtime_minutes assumes: bytes read per second, float32 flops per second of one shared core
#: (benchmarks/scale.py on a loaded 2-core VM: an ImageNet class's esvm, 50 x 1,318 x 2,048, ~1.2e9 flop/s counted
#: as below; knn_l2 ~1e9), and the seconds a job takes to start (imports: 5-20 s there, manifests)
READ_BYTES_PER_S = 50e6
FLOPS = 1e9
START_S = 30.0


#: simattr.esvm's PRIMAL_MAX_DIM and GRAM_MAX_ENTRIES, repeated so that sizing a job imports no torch (the workflow
#: calls peak_bytes while it schedules; tests/test_scoring_rows.py checks they agree)
PRIMAL_MAX_DIM = 512
GRAM_MAX_ENTRIES = 64 * 1024 * 1024


def _active_bound(n: int, d: int) -> int:
    """The active negatives (score > -1) of one exemplar SVM the dual's system is sized by: at most n, taken as at
    most 2 (d + 1) (they are mostly the margin's support vectors, at most d + 1 in general position, and the squared
    hinge's few inside; measured with simattr.synthetic.clustered_features: at most 290 of 1,318 at d = 2,048 and 356 of
    5,000 at d = 600)."""
    return min(n, 2 * (d + 1))


def _esvm_bytes(m: int, n: int, d: int, chunk_size: int, threads: int) -> int:
    """One exemplar-SVM solve of m queries against n negatives (simattr.esvm.exemplar_svm_scores): the negatives
    (float32, the augmented copies, the float64 covariance pass), the Gram matrix of the dual (d + 1 > 512), and per
    chunk of queries solved at once a few (B, n) arrays plus the system: B (d+1)^2 in the primal, B (k+1)^2 in the
    dual (_active_bound)."""
    D = d + 1
    b = 4 * n * d + 8 * n * D + 16 * n * d + 16 * d * d       # N, Na and Na_pad, N64 and Xc, S and its factor
    B = max(1, min(chunk_size, m))
    workers = max(1, min(threads, -(-m // B)))
    if D <= PRIMAL_MAX_DIM:
        system = 3 * 4 * B * D * D
    else:
        b += 4 * n * n if n * n <= GRAM_MAX_ENTRIES else 0
        system = 4 * 4 * B * (_active_bound(n, d) + 1) ** 2
    return ESVM_FIXED_BYTES + b + workers * (10 * 4 * B * n + system) + 8 * m * n   # + the (m, n) answer


def _knn_bytes(m: int, n: int, d: int, chunk_size: int) -> int:
    """knn_l2 / knn_cos of m queries against one chunk of n candidates: the candidates (float16 read, float32, the
    padded copy, cdist's augmented copy), the (m, n) answer and its copy into the scores, cdist's (B, n) products."""
    B = max(1, min(chunk_size, m))
    return 14 * n * (d + 2) + 8 * m * n + 12 * B * n


def peak_bytes(ranker: str, *, n_queries: int, n_candidates: int, n_train: int, n_test: int, dim: int,
               n_solve: int | None = None, n_classes: int | None = None, chunk_rows: int = CHUNK_ROWS,
               chunk_size: int, threads: int = 1) -> int:
    """An upper estimate of the peak resident memory (bytes) of one score job (score_class), from shapes alone.

    n_queries: the class's test images; n_candidates: the training images it ranks (the class's, or n_train when
    not class-conditioned); n_train, n_test: the splits' sizes (their labels are read whole); dim: feature_dim;
    n_solve: esvm_signed, the negatives of its largest solve (the class's training images and its runner-up
    class's; default: the class's twice, at most n_train); n_classes: esvm_signed, the classes its runner-up is
    chosen among (default: bounded by n_train); chunk_rows: CHUNK_ROWS; chunk_size, threads: the ranker's queries
    solved at once and the job's threads. Pure: no file is read (a planner may call it for jobs not yet run).

    Counted: BASE_BYTES (interpreter and libraries), labels and index arrays, the queries, the (m, n) scores with
    top-k's sort, and the ranker's working set: random none of the features; knn_* one chunk of candidates at a
    time; esvm every candidate at once (its solve needs them all: not class-conditioned on ImageNet that is the
    whole train split, tens of GB); esvm_signed one chunk for the runner-up similarities, then its largest solve,
    and the full (m, n_train) signed scores."""
    m, n, d = int(n_queries), int(n_candidates), int(dim)
    b = BASE_BYTES + 16 * (int(n_train) + int(n_test)) + 4 * m * d + 16 * m * n
    if ranker == "random":
        return b + 12 * m * n                                  # each row drawn in float64, then stacked
    if ranker in sconfig.RANKER_SPECS and sconfig.ranker(ranker).chunked:
        return b + _knn_bytes(m, min(n, chunk_rows), d, chunk_size)
    if ranker == "esvm":
        return b + 2 * n * d + _esvm_bytes(m, n, d, chunk_size, threads)   # + the float16 rows as read
    if ranker == "esvm_reference":        # scikit-learn per query: [query; negatives] in float64, liblinear's copy
        return b + 2 * n * d + 4 * n * d + 3 * 8 * (n + 1) * d
    if ranker == "esvm_signed":
        n_train = int(n_train)
        n_solve = min(n_train, 2 * n) if n_solve is None else int(n_solve)
        kept = n_train if n_classes is None else min(n_train, 10 * int(n_classes))   # 10: default neighbours
        runner_up = _knn_bytes(m, min(n_train, chunk_rows), d, chunk_size) + 4 * m * kept
        solve = 2 * n_solve * d + _esvm_bytes(m, n_solve, d, chunk_size, threads) + 8 * m * n_solve
        return b + 4 * m * n_train + max(runner_up, solve)
    raise SimattrError(f"'{ranker}' is not a feature ranker (esvm, esvm_reference, esvm_signed, knn_l2, knn_cos, "
                       "random)")


def _esvm_flops(m: int, n: int, d: int) -> float:
    """About 30 passes of (m, n, d) products (warm start, ~5 Newton steps with their margins and line searches), the
    Gram matrix of the dual when it is kept, else each step's products of the active rows."""
    k = _active_bound(n, d)
    gram = 2.0 * n * n * d if n * n <= GRAM_MAX_ENTRIES else 10 * 2.0 * m * k * k * d
    return 30 * 2.0 * m * n * (d + 1) + gram


def runtime_minutes(ranker: str, *, n_queries: int, n_candidates: int, n_train: int, n_test: int, dim: int,
                    n_solve: int | None = None, itemsize: int = 2, **_) -> int:
    """A generous estimate of one score job's wall time in whole minutes (at least 2), from the same shapes as
    peak_bytes: START_S, the feature and label bytes it reads at READ_BYTES_PER_S, and its arithmetic at FLOPS
    (knn: 2 m n d; esvm: _esvm_flops; esvm_signed: the runner-up similarities over every training image and its
    solve). Three times the estimate, rounded up: a SLURM
    job that groups many score jobs adds their runtimes."""
    m, n, d, n_train = int(n_queries), int(n_candidates), int(dim), int(n_train)
    read = 8 * (n_train + int(n_test)) + itemsize * d * m
    flops = 0.0
    if ranker in sconfig.RANKER_SPECS and sconfig.ranker(ranker).chunked:
        read += itemsize * d * n
        flops = 2.0 * m * n * d
    elif ranker == "esvm":
        read += itemsize * d * n
        flops = _esvm_flops(m, n, d)
    elif ranker == "esvm_reference":      # liblinear per query: a few hundred passes over the negatives
        read += itemsize * d * n
        flops = 300 * 2.0 * m * n * (d + 1)
    elif ranker == "esvm_signed":
        n_solve = min(n_train, 2 * n) if n_solve is None else int(n_solve)
        read += itemsize * d * (n_train + n_solve)
        flops = 2.0 * m * n_train * d + _esvm_flops(m, n_solve, d)
    seconds = START_S + read / READ_BYTES_PER_S + flops / FLOPS
    return max(2, int(np.ceil(3 * seconds / 60)))


def job_shapes(cls: int, train_index: str, test_index: str, *, class_conditioned: bool, chunk_size: int,
               guess=None) -> dict:
    """peak_bytes' keywords for the score job of class `cls`, from the splits' manifests (class_counts, n,
    feature_dim) when both exist; else from guess() -> (n_train, n_test, n_classes) with classes up to twice the mean
    size and 4,096-d features (a safe guess: before the embed stage has run, e.g. in a dry run)."""
    cls = int(cls)
    if os.path.exists(train_index) and os.path.exists(test_index):
        tr, te = (_manifest(p, os.path.getmtime(p)) for p in (str(train_index), str(test_index)))
        counts = {int(c): int(k) for c, k in tr["class_counts"].items()}
        n_train, n_test, dim = int(tr["n"]), int(te["n"]), int(tr["feature_dim"])
        n_queries, n_class = int(te["class_counts"].get(str(cls), 0)), counts.get(cls, 0)
        rival = max((k for c, k in counts.items() if c != cls), default=0)
        n_classes = len(counts)
    else:
        if guess is None:
            raise SimattrError(f"{train_index} or {test_index} not found, and no guess of the splits' sizes")
        n_train, n_test, n_classes = (int(x) for x in guess())
        n_classes, dim = max(1, n_classes), 4096
        n_queries, n_class = (min(n, 2 * -(-n // n_classes)) for n in (n_test, n_train))
        rival = n_class
    return dict(n_queries=n_queries, n_candidates=n_class if class_conditioned else n_train, n_train=n_train,
                n_test=n_test, dim=dim, n_solve=n_class + rival, n_classes=n_classes, chunk_size=int(chunk_size),
                threads=1)


@functools.lru_cache(maxsize=64)
def _manifest(path: str, mtime: float) -> dict:
    return store.read_json(path)


def job_mem_mb(ranker: str, shapes: dict) -> int:
    """The score job's memory request in MB: peak_bytes plus 10%."""
    return int(np.ceil(1.1 * peak_bytes(ranker, **shapes) / 2**20))
