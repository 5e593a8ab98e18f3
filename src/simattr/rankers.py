"""Rankers: one call shape for every attribution-by-similarity method.

    score(name, queries (m, d), candidates (n, d), **settings) -> (m, n) float32, higher = more supportive

`esvm` is the exemplar SVM of the method notes: per query, a LinearSVC with the query as the only positive
and the candidates as negatives (C=0.1, balanced class weights, squared hinge, tol 1e-6, max_iter 10000);
each candidate's score is the fitted decision_function on it.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from tqdm import tqdm

from .errors import SimattrError

RankerFn = Callable[..., np.ndarray]


def esvm(queries: np.ndarray, candidates: np.ndarray, *, C: float = 0.1, tol: float = 1e-6,
         max_iter: int = 10000, progress: bool = False, **_) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    m, n = len(queries), len(candidates)
    out = np.empty((m, n), dtype=np.float32)
    if n == 0:
        return out
    y = np.zeros(n + 1, dtype=np.int64)
    y[0] = 1
    for i in tqdm(range(m), desc="esvm", unit="query", disable=not progress, leave=False):
        X = np.vstack([queries[i:i + 1], candidates]).astype(np.float64)
        svm = LinearSVC(C=C, class_weight="balanced", loss="squared_hinge", tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(X, y)
        out[i] = svm.decision_function(candidates.astype(np.float64))
    return out


def knn_l2(queries: np.ndarray, candidates: np.ndarray, **_) -> np.ndarray:
    q = queries.astype(np.float64)
    c = candidates.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ c.T + (c * c).sum(1)[None, :]
    return (-np.sqrt(np.maximum(d2, 0.0))).astype(np.float32)


def knn_cos(queries: np.ndarray, candidates: np.ndarray, **_) -> np.ndarray:
    q = queries.astype(np.float64)
    c = candidates.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return (q @ c.T).astype(np.float32)


def random(queries: np.ndarray, candidates: np.ndarray, *, query_seeds: np.ndarray | None = None, **_
           ) -> np.ndarray:
    """A uniform random score per (query, candidate); each query's row is drawn from its own seed."""
    if query_seeds is None or len(query_seeds) != len(queries):
        raise ValueError("random ranker needs one seed per query (query_seeds)")
    return np.stack([np.random.default_rng(int(s)).random(len(candidates)) for s in query_seeds]
                    ).astype(np.float32).reshape(len(queries), len(candidates))


RANKERS: dict[str, RankerFn] = {"esvm": esvm, "knn_l2": knn_l2, "knn_cos": knn_cos, "random": random}


def score(name: str, queries: np.ndarray, candidates: np.ndarray, **settings) -> np.ndarray:
    if name not in RANKERS:
        raise SimattrError(f"unknown ranker '{name}'; valid: {', '.join(RANKERS)}")
    return RANKERS[name](np.asarray(queries), np.asarray(candidates), **settings)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k highest scores of each row, best first (ties broken by position)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]
