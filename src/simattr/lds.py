"""The LDS stage: the linear datamodeling score of one method's scores against the LDS subset models.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from . import store, subsets
from .errors import SimattrError

log = logging.getLogger("simattr")


def attribution_weights(sc: dict) -> np.ndarray:
    """A score file's rows as weights over every training image, for LDS: full_scores when the ranker gives them
    (trak, datamodels, esvm_signed: signed, as they are), else each row's candidate scores minus the row's
    lowest candidate score (>= 0: a similarity ranker's scores say more or less supportive, never harmful) and 0
    for the training images it does not rank."""
    if "full_scores" in sc:
        return np.asarray(sc["full_scores"], np.float32)
    n_train = int(sc["attrs"]["n_train"])
    w = np.zeros((len(sc["test_indices"]), n_train), np.float32)
    s = sc["scores"]
    w[:, sc["train_indices"]] = s - s.min(axis=1, keepdims=True) if s.size else s
    return w


def lds_stage(*, score_files: list[str], subset_shards: list[str], n_boot: int, seed: int, out: str) -> dict:
    """LDS of one method: for every test image the method scored, the Spearman correlation over the LDS subset
    models between the predicted margin (sum of its weights over the kept training images) and the actual one."""
    from . import datamodels as dm
    t0 = time.perf_counter()
    masks, margins, sattrs = subsets.read_shards(list(subset_shards), "lds")
    n_train = int(sattrs["n_train"])
    rows, tests, first, signed = [], [], None, False
    for f in sorted(score_files):
        sc = store.read_scores(f, extras=True)
        sc["attrs"].setdefault("n_train", n_train)
        signed = signed or "full_scores" in sc
        w = attribution_weights(sc)
        if w.shape[1] != n_train:
            raise SimattrError(f"{f}: scores {w.shape[1]} training images, the LDS models {n_train}")
        rows.append(w)
        tests.append(sc["test_indices"])
        first = first or sc["attrs"]
    weights, tests = np.concatenate(rows), np.concatenate(tests)
    if len(tests) and tests.max() >= margins.shape[1]:
        raise SimattrError(f"score files name test image {tests.max()}, the LDS models saw {margins.shape[1]}")
    rho = dm.lds(weights, masks, margins[:, tests])
    mean, low, high = dm.bootstrap_mean_ci(rho, n_boot, seed)
    fin = lambda x: None if not np.isfinite(x) else round(float(x), 6)  # noqa: E731
    result = {"dataset": first["dataset"], "encoder": first["encoder"], "ranker": first["ranker"],
              "weights": "full_scores" if signed else "shifted_candidates",
              "n_models": int(len(masks)), "alpha": float(sattrs["alpha"]), "n_test": int(len(tests)),
              "n_undefined": int(np.isnan(rho).sum()), "mean": fin(mean), "ci_low": fin(low), "ci_high": fin(high),
              "n_boot": n_boot, "seed": seed, "wall_s": round(time.perf_counter() - t0, 3),
              "per_test": [{"test_index": int(t), "spearman": fin(r)} for t, r in zip(tests, rho)]}
    store.write_json(out, result)
    log.info("LDS %s/%s: %.4f [%.4f, %.4f] over %d test images and %d models", result["encoder"],
             result["ranker"], mean, low, high, len(tests), len(masks))
    return result
