"""The digits default: an MLP (in -> hidden -> classes, ReLU) trained full-batch with Adam, in numpy (no torch import:
a support worker starts in a fraction of a second)."""
from __future__ import annotations

import numpy as np

from .recipe import Recipe


def _init(seed: int, d: int, h: int, c: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(np.float32)
    w2 = (rng.standard_normal((h, c)) * np.sqrt(1.0 / h)).astype(np.float32)
    return [w1, np.zeros((1, h), np.float32), w2, np.zeros((1, c), np.float32)]


def train_mlp(X: np.ndarray, y: np.ndarray, seeds: list[int], n_classes: int, *, hidden: int, steps: int,
              lr: float, weight_decay: float = 0.0) -> list[np.ndarray]:
    """Train len(seeds) MLPs at once; returns stacked parameters [W1 (S,d,h), b1, W2, b2]."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    params = [np.stack(p) for p in zip(*(_init(int(s), d, hidden, n_classes) for s in seeds))]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.zeros((n, n_classes), np.float32)
    onehot[np.arange(n), y] = 1.0
    b1m, b2m = 0.9, 0.999
    inv_n = np.float32(1.0 / max(n, 1))
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        h = X @ w1 + b1                              # (S, n, hidden)
        a = np.maximum(h, 0.0)
        z = a @ w2 + b2                              # (S, n, C)
        z -= z.max(-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(-1, keepdims=True)
        g = (p - onehot) * inv_n
        gw2 = a.transpose(0, 2, 1) @ g
        gb2 = g.sum(1, keepdims=True)
        ga = (g @ w2.transpose(0, 2, 1)) * (h > 0)
        gw1 = X.T @ ga
        gb1 = ga.sum(1, keepdims=True)
        grads = [gw1, gb1, gw2, gb2]
        if weight_decay:
            grads[0] = grads[0] + weight_decay * w1
            grads[2] = grads[2] + weight_decay * w2
        c1 = np.float32(lr / (1.0 - b1m ** t))
        c2 = np.float32(1.0 / (1.0 - b2m ** t))
        for i, gr in enumerate(grads):
            m[i] *= b1m
            m[i] += (1 - b1m) * gr
            v[i] *= b2m
            v[i] += (1 - b2m) * gr * gr
            params[i] -= c1 * m[i] / (np.sqrt(v[i] * c2) + 1e-8)
    return params


def predict_logits(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """The MLPs' raw logits on X: (S, n, C) for stacked parameters (train_mlp)."""
    w1, b1, w2, b2 = params
    return np.maximum(np.asarray(X, np.float32) @ w1 + b1, 0.0) @ w2 + b2


def predict_mlp(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """The MLPs' class probabilities on X: the softmax of predict_logits."""
    z = predict_logits(params, X)
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def train_one_mlp(X_train: np.ndarray, y_train: np.ndarray, seed: int, n_classes: int,
                   recipe: Recipe) -> list[np.ndarray]:
    """One recipe MLP from `seed` (stacked parameters, S = 1); the caller pins BLAS to one thread."""
    return train_mlp(X_train, y_train, [seed], n_classes, hidden=recipe.hidden, steps=recipe.steps, lr=recipe.lr,
                     weight_decay=recipe.weight_decay)
