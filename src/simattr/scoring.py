"""The score stage: one class's test images scored against the training images by a feature ranker
(score_class) or a model-based one (score_model_class), with each test image's top-k.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from . import datasets, store
from .errors import SimattrError

log = logging.getLogger("simattr")


def score_class(*, data: datasets.Spec, encoder: str, ranker: str, cls: int, train_index: str, test_index: str,
                class_conditioned: bool, topk: int, ranker_settings: dict, out: str, progress: bool = True) -> None:
    """Score class `cls`'s test images against the training images (its own class's, or all) with a feature
    ranker; `ranker_settings` are its keywords (settings.ranker_settings)."""
    from . import rankers

    t0 = time.perf_counter()
    tr_f, tr_y, tr_m = store.read_embeddings(train_index)
    te_f, te_y, te_m = store.read_embeddings(test_index)
    if tr_f.shape[1] != te_f.shape[1]:
        raise SimattrError(f"{train_index} holds {tr_f.shape[1]}-d features but {test_index} {te_f.shape[1]}-d "
                           "(embedded by different encoders); rerun the embed stage")
    if tr_m["config_hash"] != te_m["config_hash"]:
        raise SimattrError(f"{train_index} and {test_index} come from different settings "
                           f"({tr_m['config_hash']} vs {te_m['config_hash']}); rerun the embed stage")
    q_idx = np.flatnonzero(te_y == cls)
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"{train_index}: class {cls} has no training images")
    settings = dict(ranker_settings)
    random_seed = settings.pop("random_seed", 0)
    extra = {}
    if ranker == "esvm_signed":         # every training image scored: its own class +, the runner-up's -
        full, runner_up = rankers.esvm_signed(te_f[q_idx], tr_f, tr_y, cls, progress=progress, **settings)
        scores, extra = full[:, c_idx], {"full_scores": full, "runner_up": runner_up}
    else:
        if ranker == "random":
            settings = {"query_seeds": np.array([store.seed_from("random", data.name, random_seed, int(i))
                                                 for i in q_idx])}
        scores = rankers.score(ranker, te_f[q_idx], tr_f[c_idx], progress=progress, **settings)
    attrs = {"dataset": data.name, "encoder": encoder, "ranker": ranker, "embedding_config_hash": tr_m["config_hash"],
             "n_train": len(tr_y),
             "settings": json.dumps({k: v for k, v in settings.items() if k != "query_seeds"}, sort_keys=True),
             "random_seed": int(random_seed)}
    _write_class_scores(out, cls, q_idx, c_idx, scores, topk, class_conditioned, attrs, extra, t0)
    log.info("%s/%s class %s: %d test x %d train scored in %.2f s", encoder, ranker, cls, len(q_idx), len(c_idx),
             time.perf_counter() - t0)


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
    from . import subsets

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
    computed (external.source): the file must still have that content."""
    from . import external

    t0 = time.perf_counter()
    sha = external.content_hash(scores_path)
    if sha != source["sha256"]:
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
