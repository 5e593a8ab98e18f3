"""The report's statistics: support summaries, answer draws, the two-level bootstrap, win rates, test-retest
agreement, and the LDS and selection-overlap rows.

Inputs are the gathers of the support stage (store.SUPPORT_GATHER, one per encoder x ranker x metric):

    {"dataset", "encoder", "ranker", "metric": "removal"|"mislabel", "k_max", "settings", "seed_sets",
     "answers": [{"test_index", "label", "flip_class", "support": int|null, "k_max", "trainings", "engine",
                  "curve": [{"k", "n_models", "n_correct", ...}], "probes": [...], "checks": [...], ...}, ...],
     "replicates": [[answers of the next seed set], ...]}          # with support.replicates > 1

An answer's support is the smallest k whose removal (or relabelling) of the method's top-k training images
flips the test prediction; null means "not flipped even at k_max" (right-censored) and is treated as +inf
throughout. Smaller support = better attribution method.

Conventions
-----------
* median support: the empirical-CDF (lower) median, i.e. the smallest support s with
  fraction(support <= s) >= 1/2. It is always one of the observed supports, and it is +inf exactly when
  more than half of the answers are censored; a row then holds median_support=None, median_censored=True,
  and tables write it as ">{k_max}".
* model noise: each answer's support is drawn (answer_draws) from posterior predictive draws of its flip
  curve (simattr.flipcurve): the fitted crossing for adaptive answers, the released rule's reading for
  bisection answers; with replicate seed sets an image's draws are pooled over them.
* 95% CIs (median support, flipped fraction): two-level percentile bootstrap: test images resampled with
  replacement, then each sampled image's support drawn from its model noise (numpy.random.default_rng(seed),
  a fresh generator per row, so a row does not depend on the others); the median's 2.5% quantile is taken
  with method "lower" and the 97.5% one with "higher" (no interpolation, so the bounds are supports or
  +inf). An infinite bound is None with ci_*_censored=True.
* auc: mean over k = 1..k_max of the fraction of answers with support <= k (in [0, 1], higher = better);
  k_max is the gather's.
* monotonicity: `checked` counts answers with probes at k between their support and k_max (the bisection
  engine's check probes, the adaptive engine's probes); `violations` counts those where the image was not
  flipped at such a k by its own models.
* win rates: over the test images both methods answered, the fraction where A's support < B's
  (null = +inf, so null vs null is a tie), with a paired test (win_rates): the two-level bootstrap of wins
  minus losses (one per unordered pair, so B vs A mirrors A vs B) and an exact sign test; "within noise"
  unless both reject at 5%.
* test-retest (retest_rows): with replicate seed sets, Spearman over images, relative differences and
  flipped-or-not disagreements between the first seed set and each other.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import flipcurve
from ..config import METRICS
from ..errors import SimattrError
from ..store import read_json, seed_from

_GATHER_KEYS = ("dataset", "encoder", "ranker", "metric", "k_max", "answers")
_ANSWER_KEYS = ("test_index", "support", "trainings")


# ----------------------------------------------------------------------------------------- inputs
def load_gathers(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read gather files (store.read_json); validation happens in the functions that use them."""
    return [read_json(p) for p in paths]


def method_name(gather: Mapping[str, Any]) -> str:
    return f"{gather['encoder']}/{gather['ranker']}"


def _where(g: Mapping[str, Any]) -> str:
    return f"gather {g.get('encoder', '?')}/{g.get('ranker', '?')}/{g.get('metric', '?')}"


def check_gathers(gathers: Sequence[Mapping[str, Any]]) -> None:
    """Raise SimattrError (one line) on a malformed, duplicated or mixed-dataset set of gathers."""
    seen: set[tuple[str, str, str]] = set()
    datasets: set[str] = set()
    for g in gathers:
        if not isinstance(g, Mapping):
            raise SimattrError(f"a gather is a {type(g).__name__}, expected a JSON object")
        missing = [k for k in _GATHER_KEYS if k not in g]
        if missing:
            raise SimattrError(f"{_where(g)}: missing key(s) {', '.join(missing)}")
        if g["metric"] not in METRICS:
            raise SimattrError(f"{_where(g)}: metric {g['metric']!r} is not one of {', '.join(METRICS)}")
        if not isinstance(g["k_max"], int) or g["k_max"] < 1:
            raise SimattrError(f"{_where(g)}: k_max={g['k_max']!r} is not a positive integer")
        key = (str(g["encoder"]), str(g["ranker"]), str(g["metric"]))
        if key in seen:
            raise SimattrError(f"{_where(g)}: given twice")
        seen.add(key)
        datasets.add(str(g["dataset"]))
        test_seen: set[int] = set()
        for a in g["answers"]:
            missing = [k for k in _ANSWER_KEYS if k not in a]
            if missing:
                raise SimattrError(f"{_where(g)}: an answer lacks key(s) {', '.join(missing)}")
            s = a["support"]
            if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
                raise SimattrError(f"{_where(g)}: test {a['test_index']}: support {s!r} is neither null nor "
                                   f"a non-negative integer")
            t = int(a["test_index"])
            if t in test_seen:
                raise SimattrError(f"{_where(g)}: test image {t} answered twice")
            test_seen.add(t)
    if len(datasets) > 1:
        raise SimattrError(f"gathers from more than one dataset ({', '.join(sorted(datasets))}); "
                           f"a report covers one dataset")


def supports(g: Mapping[str, Any]) -> np.ndarray:
    """Supports as float64 with +inf for null (censored)."""
    return np.array([math.inf if a["support"] is None else float(a["support"]) for a in g["answers"]],
                    dtype=np.float64)


def metric_order(metric: str) -> int:
    return METRICS.index(metric) if metric in METRICS else len(METRICS)


def sorted_gathers(gathers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(gathers, key=lambda g: (metric_order(g["metric"]), method_name(g)))


def _lower_median(sorted_values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Smallest value v with fraction(values <= v) >= 1/2, for values already sorted along `axis`."""
    n = sorted_values.shape[axis]
    return np.take(sorted_values, (n - 1) // 2, axis=axis)


def _finite_or_none(x: float) -> int | float | None:
    if not math.isfinite(x):
        return None
    return int(x) if float(x).is_integer() else float(x)


# ----------------------------------------------------------------------------------------- model noise
DRAWS = 200          # draws of each answer's support from its models (flipcurve posterior) used by the report


def answer_draws(a: Mapping[str, Any], n_draws: int = DRAWS, *, seed: int = 0) -> np.ndarray:
    """n_draws plausible supports of one answer given its models' noise (+inf = censored): the crossings of
    posterior predictive draws of its flip curve (simattr.flipcurve), or for a bisection-engine answer the
    released rule's reading of the same draws (the smallest probed k they flip). An answer without a curve
    (contract < 5) has no model noise to draw from: its support repeated."""
    curve = a.get("curve")
    if not curve:
        return np.full(n_draws, math.inf if a["support"] is None else float(a["support"]))
    pts = flipcurve.Points.from_curve(curve)
    threshold = float(a.get("threshold", 0.5))
    if a.get("engine") == "bisection":      # the draws of the reading the answer reports: the released rule's
        return flipcurve.released_draws(pts, n_draws, seed, threshold)
    s, _, _ = flipcurve.crossings(pts.k, flipcurve.posterior_draws(pts, n_draws, seed), threshold)
    return s


def image_draws(g: Mapping[str, Any], n_draws: int = DRAWS) -> dict[int, np.ndarray]:
    """Per test image, draws of its support pooled over the gather's seed sets (answers, then each replicate):
    the model noise within each answer and the spread between independent seed sets."""
    sets = [g["answers"]] + list(g.get("replicates") or [])
    per = max(1, n_draws // len(sets))
    out: dict[int, list[np.ndarray]] = {}
    for r, answers in enumerate(sets):
        for a in answers:
            t = int(a["test_index"])
            seed = seed_from("report-draws", g["encoder"], g["ranker"], g["metric"], t, r)
            out.setdefault(t, []).append(answer_draws(a, per, seed=seed))
    return {t: np.concatenate(d) for t, d in out.items()}


def draw_matrix(g: Mapping[str, Any], tests: Sequence[int], n_draws: int = DRAWS) -> np.ndarray:
    d = image_draws(g, n_draws)
    return np.stack([d[t] for t in tests]) if tests else np.zeros((0, n_draws))


def two_level_samples(draws: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) supports: test images resampled with replacement, then one draw of each sampled image's
    support from its models' noise (the two levels: which images, which models)."""
    n, d = draws.shape
    idx = rng.integers(0, n, size=(n_boot, n))
    j = rng.integers(0, d, size=(n_boot, n))
    return draws[idx, j]


# ----------------------------------------------------------------------------------------- summaries
def summarize(gathers: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    """One row per (encoder, ranker, metric), ordered by metric (removal, mislabel) then method name.

    Intervals (95%) are two-level percentile bootstraps: test images resampled, and each sampled image's
    support drawn from its models' noise (answer_draws; pooled over replicate seed sets when present)."""
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    check_gathers(gathers)
    rows = []
    for g in sorted_gathers(gathers):
        s = supports(g)
        n = len(s)
        k_max = int(g["k_max"])
        flipped = np.isfinite(s)
        row: dict[str, Any] = {
            "dataset": str(g["dataset"]), "method": method_name(g), "encoder": str(g["encoder"]),
            "ranker": str(g["ranker"]), "metric": str(g["metric"]), "k_max": k_max,
            "engine": str((g.get("settings") or {}).get("engine", "bisection")),
            "seed_sets": len(g.get("replicates") or []) + 1,
            "n_test": n, "n_flipped": int(flipped.sum()),
            "frac_flipped": float(flipped.mean()) if n else None, "flipped_ci_low": None, "flipped_ci_high": None,
            "median_support": None, "median_censored": False,
            "ci_low": None, "ci_high": None, "ci_low_censored": False, "ci_high_censored": False,
            "auc": None, "mean_trainings": None, "mean_wall_s": None,
            # monotonicity: answers with at least one probe above their support (check probes, or the adaptive
            # engine's probes), and how many of those found the image not flipped at a larger k
            "checked": sum(bool(a.get("checks")) if a.get("engine", "bisection") == "bisection" else
                           any(a["support"] < p["k"] < a["k_max"] for p in a.get("curve", ())
                               if a["support"] is not None) for a in g["answers"]),
            "violations": sum(int(a.get("violations", 0)) > 0 for a in g["answers"]),
        }
        if n:
            med = float(_lower_median(np.sort(s)))
            row["median_support"] = _finite_or_none(med)
            row["median_censored"] = not math.isfinite(med)
            if n_boot > 0:
                rng = np.random.default_rng(seed)
                tests = [int(a["test_index"]) for a in g["answers"]]
                boot = two_level_samples(draw_matrix(g, tests), n_boot, rng)
                meds = _lower_median(np.sort(boot, axis=1), axis=1)
                lo = float(np.quantile(meds, 0.025, method="lower"))
                hi = float(np.quantile(meds, 0.975, method="higher"))
                row["ci_low"], row["ci_low_censored"] = _finite_or_none(lo), not math.isfinite(lo)
                row["ci_high"], row["ci_high_censored"] = _finite_or_none(hi), not math.isfinite(hi)
                fr = np.isfinite(boot).mean(axis=1)
                row["flipped_ci_low"] = float(np.quantile(fr, 0.025, method="lower"))
                row["flipped_ci_high"] = float(np.quantile(fr, 0.975, method="higher"))
            ks = np.arange(1, k_max + 1, dtype=np.float64)
            row["auc"] = float((s[None, :] <= ks[:, None]).mean())
            row["mean_trainings"] = float(np.mean([float(a["trainings"]) for a in g["answers"]]))
            walls = [float(a["wall_s"]) for a in g["answers"] if a.get("wall_s") is not None]
            row["mean_wall_s"] = float(np.mean(walls)) if walls else None
        rows.append(row)
    return rows


def win_rates(gathers: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    """Per metric, per ordered pair (A, B), A != B: win/tie/loss fractions of A against B, with a paired test.

    Over the n test images both answered: win = fraction with support_A < support_B, tie = equal supports
    (including both null), loss = 1 - win - tie. With n = 0 the fractions are None. The test: the difference
    win - loss under the two-level bootstrap (the same resampled images for A and B, each image's supports
    drawn from its models' noise); `diff_ci_low` / `diff_ci_high` its 95% interval. `p_value`: the larger of
    the bootstrap's two-sided p and an exact sign test of wins against losses over the images (the bootstrap
    alone is too sure with few images); `significant` when the interval excludes 0 and p < 0.05 (else the pair
    is "within noise")."""
    from scipy.stats import binomtest

    check_gathers(gathers)
    by_metric: dict[str, list[Mapping[str, Any]]] = {}
    for g in sorted_gathers(gathers):
        by_metric.setdefault(g["metric"], []).append(g)
    rows = []
    for metric, gs in by_metric.items():
        table = {method_name(g): {int(a["test_index"]): (math.inf if a["support"] is None else a["support"])
                                  for a in g["answers"]} for g in gs}
        draws = {method_name(g): image_draws(g) for g in gs} if n_boot > 0 else {}
        for a_name, a_sup in table.items():
            for b_name, b_sup in table.items():
                if a_name == b_name:
                    continue
                common = sorted(set(a_sup) & set(b_sup))
                n = len(common)
                wins = sum(1 for t in common if a_sup[t] < b_sup[t])
                ties = sum(1 for t in common if a_sup[t] == b_sup[t])
                row = {"metric": metric, "method_a": a_name, "method_b": b_name, "n": n,
                       "win": wins / n if n else None, "tie": ties / n if n else None,
                       "loss": (n - wins - ties) / n if n else None,
                       "diff_ci_low": None, "diff_ci_high": None, "p_value": None, "significant": None}
                if n and n_boot > 0:
                    # one bootstrap per unordered pair (seeded by the sorted names): B vs A mirrors A vs B
                    first, second = sorted((a_name, b_name))
                    rng = np.random.default_rng([seed, *map(ord, metric), *map(ord, first), 0, *map(ord, second)])
                    d1 = np.stack([draws[first][t] for t in common])
                    d2 = np.stack([draws[second][t] for t in common])
                    idx = rng.integers(0, n, size=(n_boot, n))
                    s1 = d1[idx, rng.integers(0, d1.shape[1], size=(n_boot, n))]
                    s2 = d2[idx, rng.integers(0, d2.shape[1], size=(n_boot, n))]
                    sa, sb = (s1, s2) if a_name == first else (s2, s1)
                    diff = (sa < sb).mean(axis=1) - (sa > sb).mean(axis=1)
                    lo, hi = float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))
                    p_boot = min(1.0, 2.0 * min(float((diff <= 0).mean()), float((diff >= 0).mean())))
                    losses = n - wins - ties
                    p_sign = float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
                    p = max(p_boot, p_sign)
                    row.update(diff_ci_low=lo, diff_ci_high=hi, p_value=p,
                               significant=bool((lo > 0 or hi < 0) and p < 0.05))
                rows.append(row)
    return rows


def retest_agreement(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], k_max: int) -> dict:
    """Agreement of two sets of answers for the same test images (two seed sets): Spearman over images
    (censored = k_max + 1), the median and 90th percentile of |s_a - s_b| / max(s_a, s_b, 1) over images both
    flipped, and how many images one set flipped and the other did not."""
    from scipy.stats import spearmanr

    sa = {int(x["test_index"]): x["support"] for x in a}
    sb = {int(x["test_index"]): x["support"] for x in b}
    common = sorted(set(sa) & set(sb))
    va = np.array([k_max + 1 if sa[t] is None else sa[t] for t in common], float)
    vb = np.array([k_max + 1 if sb[t] is None else sb[t] for t in common], float)
    both = [(sa[t], sb[t]) for t in common if sa[t] is not None and sb[t] is not None]
    rel = np.array([abs(x - y) / max(x, y, 1) for x, y in both], float)
    rho = float(spearmanr(va, vb).statistic) if len(common) > 2 and va.std() > 0 and vb.std() > 0 else None
    return {"n": len(common), "identical": int(sum(sa[t] == sb[t] for t in common)), "spearman": rho,
            "median_rel_diff": float(np.median(rel)) if len(rel) else None,
            "p90_rel_diff": float(np.quantile(rel, 0.9)) if len(rel) else None,
            "flip_disagreements": int(sum((sa[t] is None) != (sb[t] is None) for t in common)),
            "rel_diffs": [round(float(x), 6) for x in rel]}


def retest_rows(gathers: list[dict]) -> list[dict]:
    """Test-retest agreement of each method and metric between its first seed set and every replicate."""
    rows = []
    for g in sorted_gathers(gathers):
        sets = g.get("seed_sets") or list(range(1 + len(g.get("replicates") or [])))
        for r, other in enumerate(g.get("replicates") or [], start=1):
            rows.append({"method": method_name(g), "metric": g["metric"], "seed_set_a": sets[0],
                         "seed_set_b": sets[r] if r < len(sets) else r,
                         **retest_agreement(g["answers"], other, int(g["k_max"]))})
    return rows


# ----------------------------------------------------------------------------------------- LDS and overlap
def lds_rows(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per method from the LDS files (simattr.lds.lds_stage)."""
    return [{"method": f"{r['encoder']}/{r['ranker']}", "n_test": r["n_test"], "n_models": r["n_models"],
             "alpha": r["alpha"], "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "n_undefined": r["n_undefined"], "weights": r["weights"]} for r in results]


def overlap_rows(score_sets: Mapping[str, Sequence[Mapping[str, Any]]], ks: Sequence[int]) -> list[dict]:
    """Pairwise selection overlap: for methods A and B and each k, the mean over the test images both scored of
    the Jaccard overlap of their top-k training images (simattr.datamodels.topk_overlap). `score_sets`: method
    -> its class score files (store.read_scores dicts). Rows: method_a, method_b, k, n, jaccard (A = B: 1)."""
    from ..datamodels import topk_overlap

    tops: dict[str, dict[int, np.ndarray]] = {}
    kmax = max(ks)
    for method, files in score_sets.items():
        rows = tops.setdefault(method, {})
        for sc in files:
            s = np.asarray(sc["scores"])
            order = sc["train_indices"][np.argsort(-s, axis=1, kind="stable")[:, :kmax]]
            rows.update({int(t): order[i] for i, t in enumerate(sc["test_indices"])})
    names = sorted(tops)
    out = []
    for k in ks:
        for a in names:
            for b in names:
                shared = sorted(set(tops[a]) & set(tops[b]))
                vals = [float(topk_overlap(tops[a][t][None], tops[b][t][None], k)[0]) for t in shared]
                out.append({"method_a": a, "method_b": b, "k": int(k), "n": len(shared),
                            "jaccard": float(np.mean(vals)) if vals else None})
    return out
