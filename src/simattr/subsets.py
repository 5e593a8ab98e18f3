"""Models trained on random subsets of the training set: the data of Datamodels and of LDS.

A subset model of purpose p (`datamodels` or `lds`) with id i keeps round(alpha * n_train) training images
chosen by a generator seeded from (dataset, p, alpha, i) (datamodels.subset_masks), is trained with the
retraining recipe from the seed store.seed_from("subset-model", dataset, p, i), and records its margin
(correct logit minus logsumexp of the others, models.margins) on every test image of the split.

Models are trained in shards of `shard_size` ids, one job each (a cluster trains many shards at once). Inside a
shard every finished model is journaled (store.Journal, one JSON line with its margins), so a job that is
killed and started again trains none of them twice; the shard file is written atomically when all are done. A
CNN model saves its training state beside the shard ({shard stem}.m{model_id}.state.pt, models.TrainingState), so a
job killed mid-model resumes it mid-training.

Shard file (store.SUBSET_SHARD), datasets:
    model_ids (k,) int64, seeds (k,) int64, masks (k, ceil(n_train / 8)) uint8 (numpy.packbits of the kept
    training images, little bit order), margins (k, n_test) float32
attributes: purpose, dataset, alpha, n_train, n_test, shard, shard_size, recipe (JSON), config_hash, wall_s, cuda
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import datasets, models, store
from .accel import cuda_in_use
from .errors import SimattrError

PURPOSES = ("datamodels", "lds")
log = logging.getLogger("simattr")


def shard_ids(n_models: int, shard_size: int, shard: int) -> np.ndarray:
    ranges = store.shard_ranges(n_models, shard_size)
    if not 0 <= shard < len(ranges):
        raise SimattrError(f"subset shard {shard} does not exist: {n_models} models in {len(ranges)} shard(s)")
    return np.arange(*ranges[shard])


def _identity(data: datasets.Spec, purpose: str, alpha: float, n_models: int, shard_size: int, shard: int,
              recipe: models.Recipe) -> dict:
    return {**data.identity(), "purpose": purpose, "alpha": alpha, "n_models": n_models,
            "shard_size": shard_size, "shard": shard, "recipe": recipe.identity()}


def train_shard(*, data: datasets.Spec, purpose: str, alpha: float, n_models: int, shard_size: int, shard: int,
                recipe: models.Recipe, out: str, progress: bool = True) -> dict:
    """Train the subset models of one shard (resuming from its journal); write the shard file."""
    from .datamodels import subset_masks

    if purpose not in PURPOSES:
        raise SimattrError(f"unknown subset purpose '{purpose}'; valid: {', '.join(PURPOSES)}")
    if not 0.0 < alpha < 1.0:
        raise SimattrError(f"subset alpha must be in (0, 1), got {alpha}")
    t0 = time.perf_counter()
    ids = shard_ids(n_models, shard_size, shard)
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    streamed = recipe.name in models.STREAMED_MODELS
    X_train, X_test = models.prepare_inputs(recipe, *((tr, te) if streamed else (tr.images, te.images)))
    n_classes = len(tr.class_names)
    masks = subset_masks(len(tr), ids, alpha, ("subset", data.name, purpose, alpha))
    identity = _identity(data, purpose, alpha, n_models, shard_size, shard, recipe)
    h = store.config_hash(identity)
    journal = store.Journal(Path(out).with_suffix(".journal.jsonl"), h, key=("model_id",))
    done = len(journal.entries)
    if done:
        log.info("%s shard %d: %d of %d models already trained (journal)", purpose, shard, done, len(ids))
    try:
        with tqdm(total=len(ids), initial=done, desc=f"{purpose} shard {shard}", unit="model",
                  disable=not progress, leave=False) as bar:
            for i, mask in zip(ids, masks):
                if (int(i),) in journal.entries:
                    continue
                seed = store.seed_from("subset-model", data.name, purpose, int(i))
                state = models.TrainingState(path=Path(out).with_name(f"{Path(out).stem}.m{int(i)}.state.pt"),
                                             data=f"{h}/model {int(i)}", name=f"{purpose} model {int(i)}")
                logits = models.train_predict(X_train[mask], tr.labels[mask], X_test, seeds=[seed],
                                              n_classes=n_classes, recipe=recipe, logits=True, states=[state])[0]
                margins = models.margins(logits, te.labels).astype(np.float32)
                journal.add(model_id=int(i), seed=seed, margins=[float(m) for m in margins])
                bar.update(1)
    finally:
        journal.close()
    entries = [journal.entries[(int(i),)] for i in ids]
    margins = np.array([e["margins"] for e in entries], dtype=np.float32).reshape(len(ids), len(te))
    arrays = {"model_ids": ids.astype(np.int64), "seeds": np.array([e["seed"] for e in entries], np.int64),
              "masks": np.packbits(masks, axis=1, bitorder="little"), "margins": margins}
    attrs = {"purpose": purpose, "dataset": data.name, "alpha": float(alpha), "n_train": len(tr), "n_test": len(te),
             "shard": shard, "shard_size": shard_size, "recipe": json.dumps(recipe.identity(), sort_keys=True),
             "config_hash": h, "wall_s": time.perf_counter() - t0, "cuda": cuda_in_use()}
    store.write_arrays(out, arrays, attrs)
    Path(out).with_suffix(".journal.jsonl").unlink(missing_ok=True)
    log.info("%s shard %d: %d models (%d from the journal), mean test margin %.3f, %.1f s -> %s", purpose, shard,
             len(ids), done, float(margins.mean()) if margins.size else float("nan"), time.perf_counter() - t0, out)
    return attrs


def read_shards(paths: list[str], purpose: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(masks (M, n_train) bool, margins (M, n_test) float32, attrs of the first shard) of a purpose's shards,
    checked to be one set (same purpose, dataset, alpha, recipe, sizes; model ids 0..M-1 once each)."""
    masks, margins, ids, first = [], [], [], None
    for p in sorted(paths):
        arrays, attrs = store.read_arrays(p, ("model_ids", "masks", "margins"))
        if attrs.get("purpose") != purpose:
            raise SimattrError(f"{p}: a subset shard of purpose {attrs.get('purpose')!r}, expected {purpose!r}")
        first = first or attrs
        for k in ("dataset", "alpha", "n_train", "n_test", "recipe", "shard_size"):
            if attrs.get(k) != first.get(k):
                raise SimattrError(f"{p}: {k}={attrs.get(k)!r} differs from the other shards' {first.get(k)!r} "
                                   "(stale shard: rerun the subsets rule)")
        n = int(attrs["n_train"])
        masks.append(np.unpackbits(arrays["masks"], axis=1, count=n, bitorder="little").astype(bool))
        margins.append(arrays["margins"])
        ids.append(arrays["model_ids"])
    if first is None:
        raise SimattrError(f"no {purpose} subset shards given")
    ids = np.concatenate(ids)
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise SimattrError(f"{purpose} subset shards hold model ids {ids.min()}..{ids.max()} ({len(ids)} models), "
                           "expected each of 0..M-1 once")
    order = np.argsort(ids)
    return np.concatenate(masks)[order], np.concatenate(margins)[order], first
