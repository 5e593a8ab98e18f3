"""Datamodels and the linear datamodeling score (LDS): the model-based baseline and its yardstick.

Conventions shared by every function here (see /work/shared/docs/method.md, "Datamodels" and "LDS"):

- A *mask* is a (models, n_train) bool matrix: row i marks the training images model i was trained on.
- A *margin* is one model's output on one test image (correct logit minus logsumexp of the others);
  margins are laid out (models, targets), a target being one test image.
- *Weights* / attribution scores are laid out (targets, n_train); a model's predicted margin on target t
  is the sum of the weights of the training images it kept, ``masks[i] @ weights[t]``.
- Orders are (targets, k) int arrays of training-image indices, best first.

Everything is pure numpy / scipy / scikit-learn: no torch, no file I/O.
"""
from __future__ import annotations

import operator
import warnings
from typing import Any, Iterable

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path
from threadpoolctl import threadpool_limits

from .store import seed_from

__all__ = ["subset_masks", "fit_datamodels", "lds", "bootstrap_mean_ci", "topk_overlap"]


# ------------------------------------------------------------------------------------------ masks
def subset_masks(n_train: int, model_ids: Iterable[int], alpha: float, key: tuple) -> np.ndarray:
    """Training subsets of the models `model_ids`: a (len(model_ids), n_train) bool matrix.

    Model i keeps exactly ``round(alpha * n_train)`` training images (Python's ``round``: halves go to
    the even integer, e.g. 0.5 * 1437 -> 718), chosen uniformly at random without replacement by
    ``np.random.default_rng(store.seed_from(*key, int(model_id)))``. A row therefore depends only on
    (n_train, alpha, key, model_id), never on which other ids are in the call or their order, so models
    can be trained in any sharding and their masks rebuilt later. `key` names the experiment (e.g.
    ``("digits", "datamodels", 0)``); different keys give unrelated subsets.
    """
    if not isinstance(key, tuple):
        raise TypeError(f"key must be a tuple, got {type(key).__name__}")
    n_train = operator.index(n_train)
    if n_train < 0:
        raise ValueError(f"n_train must be >= 0, got {n_train}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ids = [int(operator.index(i)) for i in model_ids]       # rejects 2.5 rather than truncating it
    n_keep = int(round(float(alpha) * n_train))
    masks = np.zeros((len(ids), n_train), dtype=bool)
    for row, model_id in enumerate(ids):
        rng = np.random.default_rng(seed_from(*key, model_id))
        masks[row, rng.permutation(n_train)[:n_keep]] = True
    return masks


# ------------------------------------------------------------------------------------- datamodels
def _centred(masks: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = masks.astype(np.float64)
    x_mean = x.mean(axis=0)
    y_mean = y.mean(axis=0)
    return x - x_mean, y - y_mean, x_mean, y_mean


def fit_datamodels(masks: np.ndarray, margins: np.ndarray, *, n_alphas: int, val_fraction: float,
                   seed: int = 0, patience: int | None = 2, tol: float = 1e-4,
                   max_iter: int = 1000) -> tuple[np.ndarray, dict[str, Any]]:
    """Datamodels (Ilyas et al. 2022): one sparse linear model per target, mask -> margin.

    masks (M, n) bool, margins (M, T) float. Returns ``coef`` (T, n) float32 and ``info``.

    Per target t this solves scikit-learn's Lasso problem on the 0/1 mask features, centred, with a fitted
    intercept (intercept = mean margin - mean mask @ coef; only ``coef`` is returned):

        min_w  1 / (2 M) * |y_c - X_c w|^2 + alpha_t * |w|_1        (M: the models in that fit)

    Choice of alpha_t, per target (not a shared grid):

    1. The models are split once, seeded by `seed` (``np.random.default_rng(seed).permutation(M)``), into a
       validation part of ``max(1, round(val_fraction * M))`` models and a training part (the rest).
       Centring uses the training part's means.
    2. On the training part, alpha_max_t = max_j |X_c^T y_c|_j / M_train (the smallest alpha whose solution
       is all zero); the grid is ``n_alphas`` values log-spaced from alpha_max_t down to alpha_max_t * 1e-3
       (alpha_max_t itself, i.e. "no effect", is a candidate). The path is solved with warm starts and a
       shared precomputed Gram matrix (``sklearn.linear_model.lasso_path``).
    3. alpha_t is the grid value with the smallest validation MSE (ties: the larger alpha). The path is
       walked from alpha_max down and stops early once the validation MSE has failed to beat its running
       minimum at `patience` consecutive grid values (``patience=None``: the whole grid). The small
       alphas are the slow end (n > M), so this is most of the speed; on 216 synthetic sparse targets
       (M=400, n=1437, noise 0.3-3) it picked the same alpha as the whole grid for every one.
    4. The final coefficients are a refit on ALL M models at alpha_t (warm-started from the training-part
       solution), with all-model centring.

    info (arrays of length T):
      ``alpha``   chosen alpha_t (NaN for a target whose training-part margins are constant),
      ``val_r2``  R^2 on the validation models of the training-part fit at alpha_t (1 - SSE / SS about the
                  validation mean; an honest held-out score, since the refit then sees those models too;
                  NaN when the validation margins are constant or the target is),
      ``nonzero`` number of nonzero coefficients of the final fit,
    plus ``n_train`` / ``n_val`` (model counts of the split) and ``alphas`` (T, n_alphas), the grids.

    A target whose margins are constant (over the training part or over all models) gets all-zero
    coefficients. Lasso runs that stop at `max_iter` before reaching `tol` are counted in
    ``info["unconverged"]`` (their warnings are silenced).
    Speed (M=400, n=1437, T=36, random 50% masks, sparse synthetic margins; one BLAS thread, which this
    function sets for its solves): 0.6-1.7 s per call on an idle core, 1-3 s on a loaded 2-core machine
    (the whole grid, ``patience=None``: 2-10 s).
    """
    masks = np.asarray(masks)
    margins = np.asarray(margins, dtype=np.float64)
    if masks.ndim != 2:
        raise ValueError(f"masks must be 2-D (models, n_train), got shape {masks.shape}")
    if margins.ndim != 2 or margins.shape[0] != masks.shape[0]:
        raise ValueError(f"margins must be (models, targets) with {masks.shape[0]} models, got {margins.shape}")
    if not np.all(np.isfinite(margins)):
        raise ValueError("margins must be finite")
    if n_alphas < 1:
        raise ValueError(f"n_alphas must be >= 1, got {n_alphas}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    masks = masks.astype(bool)
    M, n = masks.shape
    T = margins.shape[1]
    n_val = max(1, int(round(val_fraction * M)))
    if M - n_val < 2:
        raise ValueError(f"need at least 2 training models after holding out {n_val}, got M={M}")

    perm = np.random.default_rng(seed).permutation(M)
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    M_tr = len(tr_idx)

    # training part: centred features, Gram and X^T y shared by every target
    X_tr, Y_tr, x_mean_tr, y_mean_tr = _centred(masks[tr_idx], margins[tr_idx])
    G_tr = X_tr.T @ X_tr
    XY_tr = np.ascontiguousarray((X_tr.T @ Y_tr).T)                   # (T, n)
    X_val = masks[val_idx].astype(np.float64) - x_mean_tr
    Y_val = margins[val_idx]

    # all models: for the refit
    X_all, Y_all, _, _ = _centred(masks, margins)
    G_all = X_all.T @ X_all
    XY_all = np.ascontiguousarray((X_all.T @ Y_all).T)

    coef = np.zeros((T, n), dtype=np.float64)
    alpha_chosen = np.full(T, np.nan)
    val_r2 = np.full(T, np.nan)
    grids = np.full((T, n_alphas), np.nan)
    path_kw = dict(check_input=False, tol=tol, max_iter=max_iter)

    # one BLAS thread for the many small solves: OpenBLAS threads on a shared machine cost more than they gain
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        for t in range(T):
            y_tr = np.ascontiguousarray(Y_tr[:, t])
            if np.ptp(margins[tr_idx, t]) == 0 or np.ptp(margins[:, t]) == 0:
                continue                                                # constant target: zeros
            alpha_max = np.abs(XY_tr[t]).max() / M_tr if n else 0.0
            if not alpha_max > 0.0:
                continue                                                # no feature varies: zeros
            grid = np.geomspace(alpha_max, alpha_max * 1e-3, n_alphas)
            grids[t] = grid
            # walk the path from alpha_max down with warm starts; stop once the validation MSE has been
            # above its running minimum for `patience` grid values in a row (the small alphas, where n > M
            # makes coordinate descent slow, are the expensive end and rarely win)
            w = np.zeros(n)
            mse = np.full(n_alphas, np.inf)
            sols = {}
            best, since_best = 0, 0
            for i, a in enumerate(grid):
                if i > 0:                                               # grid[0] = alpha_max: w = 0
                    _, p, _ = lasso_path(X_tr, y_tr, alphas=[a], Xy=XY_tr[t], coef_init=w, precompute=G_tr,
                                         **path_kw)
                    w = p[:, 0].copy()
                pred = X_val @ w + y_mean_tr[t]
                mse[i] = ((pred - Y_val[:, t]) ** 2).mean()
                sols[i] = w
                if i == 0 or mse[i] < mse[best]:                        # strict: ties keep the larger alpha
                    best, since_best = i, 0
                else:
                    since_best += 1
                    if patience is not None and since_best >= patience:
                        break
            alpha_chosen[t] = grid[best]
            ss = ((Y_val[:, t] - Y_val[:, t].mean()) ** 2).sum()
            if ss > 0:
                val_r2[t] = 1.0 - mse[best] * n_val / ss
            _, refit, _ = lasso_path(X_all, np.ascontiguousarray(Y_all[:, t]), alphas=[grid[best]],
                                     Xy=XY_all[t], coef_init=sols[best], precompute=G_all, **path_kw)
            coef[t] = refit[:, 0]
    unconverged = sum(issubclass(c.category, ConvergenceWarning) for c in caught)
    for c in caught:                                                    # pass other warnings on
        if not issubclass(c.category, ConvergenceWarning):
            warnings.warn_explicit(c.message, c.category, c.filename, c.lineno)

    info = {"alpha": alpha_chosen, "val_r2": val_r2, "nonzero": np.count_nonzero(coef, axis=1),
            "alphas": grids, "n_train": M_tr, "n_val": n_val, "unconverged": unconverged}
    return coef.astype(np.float32), info


# -------------------------------------------------------------------------------------------- LDS
def lds(weights: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Linear datamodeling score per target: a (T,) float64 array.

    weights (T, n), masks (m, n) bool, margins (m, T). The predicted margin of model i on target t is
    ``masks[i] @ weights[t]`` (the sum of the weights of the images it kept, in float64); the score is the
    Spearman rank correlation over the m models of predicted against actual margins, with
    ``scipy.stats.spearmanr`` semantics (average ranks for ties, Pearson correlation of the ranks).
    NaN for a target whose predicted or actual margins are constant, or whose margins contain NaN.
    """
    weights = np.asarray(weights, dtype=np.float64)
    masks = np.asarray(masks)
    margins = np.asarray(margins, dtype=np.float64)
    if weights.ndim != 2 or masks.ndim != 2 or margins.ndim != 2:
        raise ValueError("weights (T, n), masks (m, n) and margins (m, T) must all be 2-D")
    if weights.shape[1] != masks.shape[1] or margins.shape != (masks.shape[0], weights.shape[0]):
        raise ValueError(f"shapes disagree: weights {weights.shape}, masks {masks.shape}, margins {margins.shape}")
    pred = masks.astype(np.float64) @ weights.T                         # (m, T)
    out = np.full(weights.shape[0], np.nan)
    if masks.shape[0] < 2:
        return out
    ok = (np.ptp(pred, axis=0) > 0) & (np.ptp(margins, axis=0) > 0) & np.all(np.isfinite(margins), axis=0)
    if not ok.any():
        return out
    rp = rankdata(pred[:, ok], axis=0)
    ra = rankdata(margins[:, ok], axis=0)
    rp -= rp.mean(axis=0)
    ra -= ra.mean(axis=0)
    r = (rp * ra).sum(axis=0) / np.sqrt((rp * rp).sum(axis=0) * (ra * ra).sum(axis=0))
    out[ok] = np.clip(r, -1.0, 1.0)
    return out


# -------------------------------------------------------------------------------------- summaries
def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` over targets and its percentile-bootstrap interval: (mean, low, high).

    Non-finite values (NaN: e.g. an LDS of a constant target) are dropped first. The k remaining values
    are resampled with replacement n_boot times by ``np.random.default_rng(seed).integers(0, k, (n_boot,
    k))``; low / high are the (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled means (lower /
    higher order statistic, as in `simattr.report`). All three are NaN when no finite value is left; with
    n_boot == 0, low and high are NaN.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    k = len(v)
    if k == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if n_boot == 0:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(n_boot, k))
    means = v[idx].mean(axis=1)
    low = float(np.quantile(means, (1.0 - level) / 2.0, method="lower"))
    high = float(np.quantile(means, (1.0 + level) / 2.0, method="higher"))
    return mean, low, high


def topk_overlap(order_a: np.ndarray, order_b: np.ndarray, k: int) -> np.ndarray:
    """Jaccard overlap of the top k per row: a (T,) float64 array, |A ∩ B| / |A ∪ B|.

    order_a, order_b (T, >= k) int: training-image indices, best first (row t of each ranks the training
    images for target t). A and B are the SETS of the first k entries of row t (all of a row when it is
    shorter than k; repeated indices count once). 1 for identical top sets, 0 for disjoint ones; NaN only
    when both sets are empty (zero-width rows).
    """
    a = np.asarray(order_a)
    b = np.asarray(order_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"orders must be 2-D with the same number of rows, got {a.shape} and {b.shape}")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = np.full(a.shape[0], np.nan)
    for t in range(a.shape[0]):
        sa, sb = set(a[t, :k].tolist()), set(b[t, :k].tolist())
        union = len(sa | sb)
        if union:
            out[t] = len(sa & sb) / union
    return out
