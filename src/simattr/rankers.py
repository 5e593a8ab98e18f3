"""Rankers: one call shape for every attribution-by-similarity method.

    score(name, queries (m, d), candidates (n, d), **settings) -> (m, n) float32, higher = more supportive

`esvm` is the exemplar SVM of the method notes (per query, a linear SVM with the query as the only positive
and the candidates as negatives: C (esvm.C), balanced class weights, squared hinge), solved for all queries of a
class at once by `simattr.esvm.exemplar_svm_scores`; `esvm_reference` is the released per-query
scikit-learn loop it is checked against. `knn_l2` / `knn_cos` run on the same batched matrix-product path
(torch, chunks of queries, CUDA when present).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from . import esvm as esvm_mod
from .accel import device as accel_device
from .config import ranker
from .errors import SimattrError
from .typed import check_keys

RankerFn = Callable[..., np.ndarray]
log = logging.getLogger(__name__)


def esvm(queries: np.ndarray, candidates: np.ndarray, *, C: float, chunk_size: int, device,
         progress: bool = False) -> np.ndarray:
    scores, info = esvm_mod.exemplar_svm_scores(queries, candidates, C, device=device,
                                                chunk_size=chunk_size, progress=progress, return_info=True)
    log.info("esvm: %s", info.summary())
    return scores


def esvm_reference(queries: np.ndarray, candidates: np.ndarray, *, C: float, tol: float, max_iter: int,
                   progress: bool = False) -> np.ndarray:
    return esvm_mod.esvm_reference(queries, candidates, C, tol=tol, max_iter=max_iter, progress=progress)


def _batched(kernel, queries: np.ndarray, candidates: np.ndarray, chunk_size: int, device) -> np.ndarray:
    """kernel(Q chunk, candidates) on torch tensors, chunk by chunk; float32 numpy out."""
    dev = accel_device(device)
    c = torch.as_tensor(np.asarray(candidates, dtype=np.float32), device=dev)
    q = np.asarray(queries, dtype=np.float32)
    out = np.empty((len(q), len(c)), dtype=np.float32)
    step = max(1, int(chunk_size))
    for s in range(0, len(q), step):
        out[s:s + step] = kernel(torch.as_tensor(q[s:s + step], device=dev), c).cpu().numpy()
    return out


def knn_l2(queries: np.ndarray, candidates: np.ndarray, *, chunk_size: int, device, progress: bool = False
           ) -> np.ndarray:
    """Minus the Euclidean distance (one matrix product per chunk of queries: no progress bar)."""
    return _batched(lambda q, c: -torch.cdist(q, c, compute_mode="use_mm_for_euclid_dist"),
                    queries, candidates, chunk_size, device)


def knn_cos(queries: np.ndarray, candidates: np.ndarray, *, chunk_size: int, device, progress: bool = False
            ) -> np.ndarray:
    """Cosine similarity (one matrix product per chunk of queries: no progress bar)."""
    unit = lambda x: x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    return _batched(lambda q, c: unit(q) @ unit(c).T, queries, candidates, chunk_size, device)


def random(queries: np.ndarray, candidates: np.ndarray, *, query_seeds: np.ndarray | None = None,
           progress: bool = False) -> np.ndarray:
    """A uniform random score per (query, candidate); each query's row is drawn from its own seed."""
    if query_seeds is None or len(query_seeds) != len(queries):
        raise ValueError("random ranker needs one seed per query (query_seeds)")
    return np.stack([np.random.default_rng(int(s)).random(len(candidates)) for s in query_seeds]
                    ).astype(np.float32).reshape(len(queries), len(candidates))


def runner_up_classes(queries: np.ndarray, features: np.ndarray, labels: np.ndarray, label: int, *,
                      neighbours: int, chunk_size: int, device) -> np.ndarray:
    """Each query's runner-up class by similarity (model-agnostic): the class other than `label` whose `neighbours`
    most cosine-similar training images are, on average, the most similar to the query."""
    sims = knn_cos(queries, features, chunk_size=chunk_size, device=device)
    best, out = np.full(len(queries), -np.inf), np.full(len(queries), -1, np.int64)
    for c in np.unique(labels):
        if c == label:
            continue
        s = sims[:, labels == c]
        k = min(neighbours, s.shape[1])
        mean_top = -np.sort(-s, axis=1)[:, :k].mean(axis=1)
        better = mean_top > best
        best[better], out[better] = mean_top[better], int(c)
    return out


def esvm_signed(queries: np.ndarray, features: np.ndarray, labels: np.ndarray, label: int, *, C: float,
                neighbours: int, chunk_size: int, device, progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Signed exemplar-SVM scores of every training image for queries of class `label`.

    Per query q, with r its runner-up class (runner_up_classes): one exemplar SVM of q against the training images
    of classes `label` and r together; with s their decision values and m the lowest of them, a training image
    of q's class scores s - m >= 0 (a positive influencer: like q and labelled like q), one of class r scores
    -(s - m) <= 0 (a negative influencer: like q but labelled as its rival), every other image 0.
    Returns (full scores (m, n_train) float32, runner-up class per query)."""
    r = runner_up_classes(queries, features, labels, label, neighbours=neighbours, chunk_size=chunk_size,
                          device=device)
    return signed_scores(queries, lambda cand: features[cand], labels, label, r, C=C, chunk_size=chunk_size,
                         device=device, progress=progress), r


def signed_scores(queries: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, label: int,
                  runner_up: np.ndarray, *, C: float, chunk_size: int, device,
                  progress: bool = False) -> np.ndarray:
    """esvm_signed's scores (m, n_train) given each query's runner-up class; `rows(idx)` gives the features of the
    training images idx (sorted): per runner-up class c, only the images of classes `label` and c are asked for."""
    full = np.zeros((len(queries), len(labels)), np.float32)
    for c in np.unique(runner_up):
        sel = np.flatnonzero(runner_up == c)
        cand = np.flatnonzero((labels == label) | (labels == c))
        s = esvm(queries[sel], rows(cand), C=C, chunk_size=chunk_size, device=device, progress=progress)
        s = s - s.min(axis=1, keepdims=True)
        full[np.ix_(sel, cand)] = np.where(labels[cand] == label, s, -s)
    return full


class RunnerUp:
    """runner_up_classes over the training images given chunk by chunk (bounded memory): add(sims, labels) with the
    queries' similarities to one chunk of training images, then classes(label). Keeps each class's `neighbours`
    highest similarities per query, so the answer equals runner_up_classes' whenever the similarities are equal."""

    def __init__(self, n_queries: int, neighbours: int):
        self.n_queries, self.neighbours = n_queries, neighbours
        self.top: dict[int, np.ndarray] = {}          # class -> (m, <= neighbours) highest similarities, best first

    def add(self, sims: np.ndarray, labels: np.ndarray) -> None:
        order = np.argsort(labels, kind="stable")
        classes, starts = np.unique(labels[order], return_index=True)
        for c, cols in zip(classes.tolist(), np.split(order, starts[1:])):
            s = sims[:, cols]
            if c in self.top:
                s = np.concatenate([self.top[c], s], axis=1)
            self.top[c] = -np.sort(-s, axis=1)[:, :self.neighbours]

    def classes(self, label: int) -> np.ndarray:
        best, out = np.full(self.n_queries, -np.inf), np.full(self.n_queries, -1, np.int64)
        for c in sorted(self.top):
            if c == label:
                continue
            mean_top = self.top[c].mean(axis=1)
            better = mean_top > best
            best[better], out[better] = mean_top[better], int(c)
        return out


RANKERS: dict[str, RankerFn] = {"esvm": esvm, "esvm_reference": esvm_reference, "knn_l2": knn_l2,
                                "knn_cos": knn_cos, "random": random}


def score(name: str, queries: np.ndarray, candidates: np.ndarray, *, progress: bool = False, **settings
          ) -> np.ndarray:
    """Ranker `name`'s scores; `settings` are exactly its keywords (config.ranker_settings; random: query_seeds),
    a missing or unknown one is one line naming it."""
    if name not in RANKERS:
        raise SimattrError(f"unknown ranker '{name}'; valid: {', '.join(RANKERS)}")
    expected = ("query_seeds",) if name == "random" else ranker(name).keywords
    check_keys(expected, settings, f"ranker {name}'s settings")
    return RANKERS[name](np.asarray(queries), np.asarray(candidates), progress=progress, **settings)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k highest scores of each row, best first (ties broken by position)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]
