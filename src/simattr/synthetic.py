"""Seeded synthetic features for the tests and benchmarks (numpy only): what the solvers and score jobs are
measured on where no real features are at hand."""
from __future__ import annotations

import numpy as np


def clustered_features(n: int, d: int, m: int, *, seed: int = 0, clusters: int = 10, alpha: float = 1.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic features shaped like self-supervised ones: `clusters` modes, a power-law spectrum
    (variance of the j-th principal direction ~ j^-alpha) and a random rotation. Returns (negatives (n, d),
    queries (m, d)) drawn from the same distribution, float32. Used by the tests and benchmarks/esvm.py, explain.py."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, d + 1) ** (-alpha / 2)
    R, _ = np.linalg.qr(rng.normal(size=(d, d)))
    centers = rng.normal(size=(clusters, d)) * s

    def draw(k):
        return ((centers[rng.integers(0, clusters, k)] + rng.normal(size=(k, d)) * s) @ R).astype(np.float32)

    return draw(n), draw(m)
