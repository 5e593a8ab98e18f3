"""Datamodels, LDS and their summaries (simattr.datamodels) on planted and hand-computed cases."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from simattr import config
from simattr.datamodels import bootstrap_mean_ci, fit_datamodels, lds, subset_masks, topk_overlap

DM = config.ranker_settings(config.defaults(), "datamodels")     # the schema's n_alphas and val_fraction


# ------------------------------------------------------------------------------------------ masks
def test_subset_masks_keep_exact_count_and_depend_only_on_key_and_id():
    key = ("digits", "datamodels", 0)
    m = subset_masks(1437, range(10), 0.5, key)
    assert m.shape == (10, 1437) and m.dtype == bool
    assert (m.sum(axis=1) == round(0.5 * 1437)).all()              # 718: Python round, half to even
    assert (subset_masks(101, [0, 1], 0.3, key).sum(axis=1) == 30).all()
    # deterministic per id, and independent of the other ids in the call and their order
    again = subset_masks(1437, [7, 3, 99], 0.5, key)
    assert np.array_equal(again[0], m[7]) and np.array_equal(again[1], m[3])
    assert np.array_equal(subset_masks(1437, [np.int64(3)], 0.5, key)[0], m[3])
    # different ids and different keys give different subsets
    assert len({r.tobytes() for r in m}) == 10
    other = subset_masks(1437, range(10), 0.5, ("digits", "datamodels", 1))
    assert not any(np.array_equal(a, b) for a, b in zip(m, other))
    # the kept images look uniform: each image is kept in about half of many models
    freq = subset_masks(50, range(2000), 0.5, key).mean(axis=0)
    assert np.abs(freq - 0.5).max() < 0.06


def test_subset_masks_edge_cases():
    assert subset_masks(10, [], 0.5, ("k",)).shape == (0, 10)
    assert not subset_masks(10, [1], 0.0, ("k",)).any() and subset_masks(10, [1], 1.0, ("k",)).all()
    with pytest.raises(ValueError):
        subset_masks(10, [1], 1.5, ("k",))
    with pytest.raises(TypeError):
        subset_masks(10, [2.5], 0.5, ("k",))
    with pytest.raises(TypeError):
        subset_masks(10, [1], 0.5, "k")


# ------------------------------------------------------------------------------------- datamodels
def planted(n=200, n_targets=5, seed=0):
    """Sparse weights (n_targets, n): 3..8 planted effects per target, about half of them negative."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_targets, n))
    for t in range(n_targets):
        k = 3 + t % 6
        idx = rng.choice(n, k, replace=False)
        sign = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
        w[t, idx] = sign * rng.uniform(0.6, 1.2, k)
    return w


def margins_of(w, masks, noise, seed):
    rng = np.random.default_rng(seed)
    return masks.astype(float) @ w.T + 0.3 + rng.normal(0.0, noise, (masks.shape[0], w.shape[0]))


@pytest.fixture(scope="module")
def planted_fit():
    n, M = 200, 600
    w = planted(n)
    masks = subset_masks(n, range(M), 0.5, ("test", "planted"))
    y = margins_of(w, masks, 0.5, seed=1)
    y = np.column_stack([y, np.full(M, 0.1)])     # a constant sixth target (its mean rounds off: 0.1 * 540 / 540)
    coef, info = fit_datamodels(masks, y, **DM, seed=0)
    return w, coef, info


def test_fit_datamodels_recovers_planted_effects_and_signs(planted_fit):
    w, coef, info = planted_fit
    assert coef.shape == (6, 200) and coef.dtype == np.float32
    for t in range(w.shape[0]):
        true = set(np.flatnonzero(w[t]).tolist())
        top = set(np.argsort(-np.abs(coef[t]))[: len(true)].tolist())
        assert top == true, t
        idx = sorted(true)
        assert np.array_equal(np.sign(coef[t, idx]), np.sign(w[t, idx])), t
        assert np.allclose(coef[t, idx], w[t, idx], atol=0.3), t     # shrunk a little, not much
        # the planted effects dominate what else was selected
        rest = np.delete(np.abs(coef[t]), idx)
        assert rest.max() < 0.5 * np.abs(coef[t, idx]).min(), t
    assert np.all(info["val_r2"][:5] > 0.5)
    assert np.all(np.isfinite(info["alpha"][:5]))
    assert np.all(info["nonzero"][:5] >= [3, 4, 5, 6, 7])


def test_fit_datamodels_constant_target_gives_zeros(planted_fit):
    _, coef, info = planted_fit
    assert not coef[5].any()
    assert info["nonzero"][5] == 0 and np.isnan(info["alpha"][5]) and np.isnan(info["val_r2"][5])


def test_fit_datamodels_chooses_alpha_per_target_and_is_seeded():
    n, M = 120, 300
    masks = subset_masks(n, range(M), 0.5, ("test", "alpha"))
    w = planted(n, 2, seed=3)
    rng = np.random.default_rng(5)
    y = np.column_stack([margins_of(w[:1], masks, 0.1, seed=2)[:, 0],   # strong signal: small alpha
                         rng.normal(0.0, 1.0, M)])                       # pure noise: large alpha
    coef, info = fit_datamodels(masks, y, **DM, seed=0)
    ratio = info["alpha"] / info["alphas"][:, 0]                    # chosen alpha / alpha_max
    assert ratio[0] < 0.05 and ratio[1] > 0.3
    assert info["n_train"] + info["n_val"] == M and info["n_val"] == 30
    coef2, info2 = fit_datamodels(masks, y, **DM, seed=0)
    assert np.array_equal(coef, coef2) and np.array_equal(info["alpha"], info2["alpha"])
    # the whole grid (no early stop) picks the same alpha on the planted target
    _, info3 = fit_datamodels(masks, y, **DM, seed=0, patience=None)
    assert info3["alpha"][0] == info["alpha"][0]


def test_fit_datamodels_rejects_bad_shapes():
    masks = subset_masks(10, range(20), 0.5, ("k",))
    with pytest.raises(ValueError):
        fit_datamodels(masks, np.zeros((19, 2)), **DM)
    with pytest.raises(ValueError):
        fit_datamodels(masks[:2], np.zeros((2, 1)), **DM)                 # too few models to split
    y = np.zeros((20, 1))
    y[0, 0] = np.nan
    with pytest.raises(ValueError):
        fit_datamodels(masks, y, **DM)


# -------------------------------------------------------------------------------------------- LDS
def test_lds_hand_computed_tiny_case():
    masks = np.array([[1, 1, 0],
                      [1, 0, 1],
                      [0, 1, 1],
                      [1, 0, 0]], dtype=bool)
    weights = np.array([[1.0, 2.0, -0.5],        # predicted [3.0, 0.5, 1.5, 1.0] -> ranks [4, 1, 3, 2]
                        [1.0, 1.0, 0.0],         # predicted [2, 1, 1, 1] -> ranks [4, 2, 2, 2] (ties)
                        [1.0, 2.0, -0.5],        # actual margins constant -> NaN
                        [0.0, 0.0, 0.0]])        # predicted constant -> NaN
    margins = np.array([[2.0, 3.0, 5.0, 1.0],    # target 0 actual ranks [4, 1, 2, 3]
                        [0.1, 1.0, 5.0, 2.0],    # target 1 actual ranks [4, 2, 3, 1]
                        [0.5, 2.0, 5.0, 3.0],
                        [0.7, 0.0, 5.0, 4.0]])
    got = lds(weights, masks, margins)
    # target 0: no ties, d = [0, 0, 1, -1]: 1 - 6 * 2 / (4 * 15) = 0.8
    # target 1: centred ranks [1.5, -.5, -.5, -.5] . [1.5, -.5, .5, -1.5] = 3; norms^2 3 and 5: 3 / sqrt(15)
    assert got[0] == pytest.approx(0.8, abs=1e-12)
    assert got[1] == pytest.approx(3.0 / np.sqrt(15.0), abs=1e-12)
    assert np.isnan(got[2]) and np.isnan(got[3])
    pred = masks.astype(float) @ weights.T
    for t in (0, 1):
        assert got[t] == pytest.approx(spearmanr(pred[:, t], margins[:, t])[0], abs=1e-12)


def test_lds_matches_scipy_on_random_cases_with_ties():
    rng = np.random.default_rng(0)
    masks = rng.random((50, 30)) < 0.5
    weights = rng.integers(-2, 3, (7, 30)).astype(float)            # integer weights: tied predictions
    margins = rng.integers(0, 6, (50, 7)).astype(float)             # and tied margins
    got = lds(weights, masks, margins)
    pred = masks.astype(float) @ weights.T
    want = [spearmanr(pred[:, t], margins[:, t])[0] for t in range(7)]
    assert np.allclose(got, want, atol=1e-12)


def test_lds_of_planted_weights_is_high_and_of_random_weights_near_zero(planted_fit):
    w, coef, _ = planted_fit
    fresh = subset_masks(200, range(1000, 1300), 0.5, ("test", "planted"))   # models not used to fit
    y = margins_of(w, fresh, 0.2, seed=9)                           # less noise than the fit saw
    assert np.all(lds(w, fresh, y) > 0.9)
    assert np.all(lds(coef[:5], fresh, y) > 0.9)
    rand = np.random.default_rng(4).normal(size=(200, 200))
    y_many = margins_of(np.tile(w, (40, 1)), fresh, 0.2, seed=10)   # 200 targets
    r = lds(rand, fresh, y_many)
    assert abs(np.mean(r)) < 0.05 and np.abs(r).max() < 0.4


# -------------------------------------------------------------------------------------- summaries
def test_bootstrap_mean_ci():
    v = np.array([0.1, 0.4, np.nan, 0.3, 0.9, 0.2, np.nan, 0.5])
    mean, low, high = bootstrap_mean_ci(v, 2000, seed=1)
    finite = v[np.isfinite(v)]
    assert mean == pytest.approx(finite.mean(), abs=1e-15)
    assert low < mean < high and finite.min() <= low and high <= finite.max()
    assert bootstrap_mean_ci(v, 2000, seed=1) == (mean, low, high)
    assert bootstrap_mean_ci(v, 2000, seed=2) != (mean, low, high)
    assert bootstrap_mean_ci(finite, 2000, seed=1) == (mean, low, high)     # NaNs are simply dropped
    # a wider level gives a wider interval
    _, low99, high99 = bootstrap_mean_ci(v, 2000, seed=1, level=0.99)
    assert low99 <= low and high <= high99
    assert all(np.isnan(bootstrap_mean_ci(np.array([np.nan, np.nan]), 100, seed=0)))
    assert all(np.isnan(bootstrap_mean_ci(np.array([]), 100, seed=0)))
    assert bootstrap_mean_ci(np.array([0.25]), 100, seed=0) == (0.25, 0.25, 0.25)


def test_topk_overlap():
    rng = np.random.default_rng(0)
    order = np.array([rng.permutation(20) for _ in range(4)])
    assert np.array_equal(topk_overlap(order, order, 5), np.ones(4))
    assert np.array_equal(topk_overlap(order[:, :5], order[:, 10:15], 5), np.zeros(4))
    a = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    b = np.array([[1, 0, 5, 6], [7, 6, 5, 4]])
    # row 0, k=3: {0,1,2} vs {1,0,5}: 2 / 4; row 1: {4,5,6} vs {7,6,5}: 2 / 4
    assert np.allclose(topk_overlap(a, b, 3), [0.5, 0.5])
    assert np.allclose(topk_overlap(a, b, 1), [0.0, 0.0])
    # k beyond the rows' length uses whole rows
    assert np.allclose(topk_overlap(a, b, 10), [2 / 6, 1.0])     # {0,1,2,3} vs {1,0,5,6}
    with pytest.raises(ValueError):
        topk_overlap(a, b[:1], 3)
