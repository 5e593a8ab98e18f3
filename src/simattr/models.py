"""The models retrained under attribution, behind one call:

    train_predict(X_train, y_train, X_eval, seeds=[...], n_classes=C, **recipe) -> probs (S, n_eval, C)

The digits recipe is an MLP (in -> hidden -> classes, ReLU) trained full-batch with Adam on standardised
pixels. It is written in numpy and batched over seeds (one stacked matmul per layer), so a support worker
starts in a fraction of a second (no torch import) and the models of one probe train together. A model's
result depends only on its own seed, never on which other seeds share its batch, and BLAS runs on one
thread so that it does not depend on the cores a task was given either (tasks run side by side instead).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SimattrError

MODELS = ("mlp",)


@dataclass(frozen=True)
class Recipe:
    name: str = "mlp"
    hidden: int = 64
    steps: int = 100
    lr: float = 0.01
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.name not in MODELS:
            raise SimattrError(f"unknown model '{self.name}'; valid: {', '.join(MODELS)}")


_BLAS = None


def _one_blas_thread():
    """BLAS pinned to one thread: a model's bits then never depend on the cores its task was given."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def standardise(train_images: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Flatten images and standardise every array by the train set's per-pixel mean and std."""
    tr = train_images.reshape(len(train_images), -1).astype(np.float32)
    mean = tr.mean(0)
    std = np.maximum(tr.std(0), 1e-3)
    return [(a.reshape(len(a), -1).astype(np.float32) - mean) / std for a in (train_images, *others)]


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


def predict_mlp(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = params
    z = np.maximum(np.asarray(X, np.float32) @ w1 + b1, 0.0) @ w2 + b2
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def train_predict(X_train: np.ndarray, y_train: np.ndarray, X_eval: np.ndarray, *, seeds: list[int],
                  n_classes: int, recipe: Recipe) -> np.ndarray:
    """Train one model per seed on (X_train, y_train); class probabilities on X_eval, shape (S, n_eval, C).

    The models are trained one after the other: on CPU the stacked (batched) computation of train_mlp is
    bit-identical but slower per model here (measured on digits, 1 BLAS thread: about 80-98 ms per model one
    at a time against 95-123 ms in stacks of 2-5: its (S, n, hidden) arrays no longer fit in cache)."""
    if len(seeds) == 0:
        return np.zeros((0, len(X_eval), n_classes), np.float32)
    with _one_blas_thread():
        out = [predict_mlp(train_mlp(X_train, y_train, [int(s)], n_classes, hidden=recipe.hidden, steps=recipe.steps,
                                     lr=recipe.lr, weight_decay=recipe.weight_decay), X_eval)[0] for s in seeds]
        return np.stack(out)
