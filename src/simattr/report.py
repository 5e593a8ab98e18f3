"""The report stage: support-size summaries, pairwise win rates, stage costs, figures and tables.

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

Every file is written atomically (store.atomic_path) and the CSV/Markdown bytes depend only on the inputs.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import datasets, store
from .config import METRICS
from .errors import SimattrError
from .store import atomic_path, read_json, write_text

log = logging.getLogger("simattr")


SUPPORT_COLUMNS = (
    "dataset", "method", "encoder", "ranker", "metric", "k_max", "engine", "seed_sets", "n_test", "n_flipped",
    "frac_flipped", "flipped_ci_low", "flipped_ci_high",
    "median_support", "median_censored", "ci_low", "ci_high", "ci_low_censored", "ci_high_censored",
    "auc", "mean_trainings", "mean_wall_s", "checked", "violations",
)

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


def _check_gathers(gathers: Sequence[Mapping[str, Any]]) -> None:
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


def _supports(g: Mapping[str, Any]) -> np.ndarray:
    """Supports as float64 with +inf for null (censored)."""
    return np.array([math.inf if a["support"] is None else float(a["support"]) for a in g["answers"]],
                    dtype=np.float64)


def _metric_order(metric: str) -> int:
    return METRICS.index(metric) if metric in METRICS else len(METRICS)


def _sorted_gathers(gathers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(gathers, key=lambda g: (_metric_order(g["metric"]), method_name(g)))


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
    from . import flipcurve

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
    from .store import seed_from

    sets = [g["answers"]] + list(g.get("replicates") or [])
    per = max(1, n_draws // len(sets))
    out: dict[int, list[np.ndarray]] = {}
    for r, answers in enumerate(sets):
        for a in answers:
            t = int(a["test_index"])
            seed = seed_from("report-draws", g["encoder"], g["ranker"], g["metric"], t, r)
            out.setdefault(t, []).append(answer_draws(a, per, seed=seed))
    return {t: np.concatenate(d) for t, d in out.items()}


def _draw_matrix(g: Mapping[str, Any], tests: Sequence[int], n_draws: int = DRAWS) -> np.ndarray:
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
    _check_gathers(gathers)
    rows = []
    for g in _sorted_gathers(gathers):
        s = _supports(g)
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
                boot = two_level_samples(_draw_matrix(g, tests), n_boot, rng)
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


def win_rates(gathers: list[dict], *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per metric, per ordered pair (A, B), A != B: win/tie/loss fractions of A against B, with a paired test.

    Over the n test images both answered: win = fraction with support_A < support_B, tie = equal supports
    (including both null), loss = 1 - win - tie. With n = 0 the fractions are None. The test: the difference
    win - loss under the two-level bootstrap (the same resampled images for A and B, each image's supports
    drawn from its models' noise); `diff_ci_low` / `diff_ci_high` its 95% interval. `p_value`: the larger of
    the bootstrap's two-sided p and an exact sign test of wins against losses over the images (the bootstrap
    alone is too sure with few images); `significant` when the interval excludes 0 and p < 0.05 (else the pair
    is "within noise")."""
    from scipy.stats import binomtest

    _check_gathers(gathers)
    by_metric: dict[str, list[Mapping[str, Any]]] = {}
    for g in _sorted_gathers(gathers):
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
    for g in _sorted_gathers(gathers):
        sets = g.get("seed_sets") or list(range(1 + len(g.get("replicates") or [])))
        for r, other in enumerate(g.get("replicates") or [], start=1):
            rows.append({"method": method_name(g), "metric": g["metric"], "seed_set_a": sets[0],
                         "seed_set_b": sets[r] if r < len(sets) else r,
                         **retest_agreement(g["answers"], other, int(g["k_max"]))})
    return rows


# ----------------------------------------------------------------------------------------- costs
def read_benchmark(path: str | os.PathLike) -> dict[str, float | None]:
    """One Snakemake benchmark TSV -> {"s": wall seconds, "max_rss": MB or None} (mean over its rows)."""
    path = Path(path)
    if not path.exists():
        raise SimattrError(f"{path}: benchmark file not found")
    with path.open(newline="") as f:
        data = list(csv.DictReader(f, delimiter="\t"))
    if not data or "s" not in data[0]:
        raise SimattrError(f"{path}: not a Snakemake benchmark file (no data row or no 's' column)")

    def num(row: dict, key: str) -> float | None:
        v = (row.get(key) or "").strip()
        if v in ("", "NA", "-"):
            return None
        try:
            return float(v)
        except ValueError:
            raise SimattrError(f"{path}: column {key!r} holds {v!r}, not a number") from None

    walls = [num(r, "s") for r in data]
    if any(w is None for w in walls):
        raise SimattrError(f"{path}: a row has no wall time in column 's'")
    rss = [x for x in (num(r, "max_rss") for r in data) if x is not None]
    cpu = [x for x in (num(r, "cpu_time") for r in data) if x is not None]
    return {"s": float(np.mean(walls)), "max_rss": max(rss) if rss else None,
            "cpu_s": float(np.mean(cpu)) if cpu else None}


def _bytes_under(paths: Iterable[str | os.PathLike]) -> int:
    """Total size of the files at/under `paths` (each file counted once; missing paths count 0)."""
    files: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_file():
            files.add(p.resolve())
        elif p.is_dir():
            for root, _, names in os.walk(p):
                for name in names:
                    fp = Path(root) / name
                    if fp.is_file():
                        files.add(fp.resolve())
    return sum(f.stat().st_size for f in files)


def stage_costs(benchmarks: dict[str, list], stored: dict[str, list]) -> list[dict]:
    """One row per stage (benchmark stages in their given order, then stages only in `stored`):
    stage, jobs (benchmark files), wall_s (sum over jobs), max_rss_mb (max over jobs, None if unknown),
    bytes (stored under the stage's paths)."""
    rows = []
    for stage in list(benchmarks) + [s for s in stored if s not in benchmarks]:
        bench = [read_benchmark(p) for p in benchmarks.get(stage, [])]
        rss = [b["max_rss"] for b in bench if b["max_rss"] is not None]
        rows.append({
            "stage": stage, "jobs": len(bench), "wall_s": float(sum(b["s"] for b in bench)),
            "max_rss_mb": max(rss) if rss else None, "bytes": _bytes_under(stored.get(stage, [])),
        })
    return rows


def method_costs(entries: Sequence[tuple[str, str, str]]) -> list[dict]:
    """What each method cost to produce its scores, from (method, kind, value) entries: kind `bench` (a Snakemake
    benchmark of one of its jobs: the encoder's training, embedding, scoring, the models a model-based ranker
    trains), `usage` (the job's usage record, simattr.cli.usage_path: whether it had a GPU), `stored` (a file
    or folder it wrote) and `models` (retrained models it needed). A job shared by several methods (an encoder)
    counts for each. Rows: method, jobs, wall_s, cpu_s, gpu_s (wall seconds of jobs that had a CUDA device),
    models_trained, bytes."""
    import json

    by: dict[str, dict[str, list[str]]] = {}
    for method, kind, value in entries:
        if kind not in ("bench", "usage", "stored", "models"):
            raise SimattrError(f"method cost entry {method}|{kind}|{value}: unknown kind {kind!r}")
        by.setdefault(method, {}).setdefault(kind, []).append(value)
    rows = []
    for method, kinds in by.items():
        bench = {b: read_benchmark(b) for b in kinds.get("bench", [])}
        gpu = 0.0
        for u in kinds.get("usage", []):
            usage = json.loads(Path(u).read_text()) if Path(u).exists() else {}
            if usage.get("cuda"):
                gpu += float(usage.get("wall_s", 0.0))
        cpus = [b["cpu_s"] for b in bench.values() if b["cpu_s"] is not None]
        rows.append({"method": method, "jobs": len(bench), "wall_s": float(sum(b["s"] for b in bench.values())),
                     "cpu_s": float(sum(cpus)) if cpus else None, "gpu_s": gpu,
                     "models_trained": int(sum(int(m) for m in kinds.get("models", []))),
                     "bytes": _bytes_under(kinds.get("stored", []))})
    return rows


def lds_rows(results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One row per method from the LDS files (simattr.lds.lds_stage)."""
    return [{"method": f"{r['encoder']}/{r['ranker']}", "n_test": r["n_test"], "n_models": r["n_models"],
             "alpha": r["alpha"], "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "n_undefined": r["n_undefined"], "weights": r["weights"]} for r in results]


def overlap_rows(score_sets: Mapping[str, Sequence[Mapping[str, Any]]], ks: Sequence[int]) -> list[dict]:
    """Pairwise selection overlap: for methods A and B and each k, the mean over the test images both scored of
    the Jaccard overlap of their top-k training images (simattr.datamodels.topk_overlap). `score_sets`: method
    -> its class score files (store.read_scores dicts). Rows: method_a, method_b, k, n, jaccard (A = B: 1)."""
    from .datamodels import topk_overlap

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


# ----------------------------------------------------------------------------------------- figures
def _new_figure(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def _save_png(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def plot_cdf(gathers: list[dict], path: str | os.PathLike, *, n_boot: int = 200, seed: int = 0) -> None:
    """One PNG, one subplot per metric, one step curve per method: fraction of test images with
    support <= k for k = 0..k_max (censored answers never count as flipped), in a band: the 95% interval of
    that fraction at each k under the two-level bootstrap (images and models), when n_boot > 0."""
    _check_gathers(gathers)
    gs = _sorted_gathers(gathers)
    metrics = sorted({g["metric"] for g in gs}, key=_metric_order) or list(METRICS[:1])
    methods = sorted({method_name(g) for g in gs})
    fig = _new_figure((5.2 * len(metrics), 4.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    import matplotlib as mpl

    colors = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    for ax, metric in zip(axes, metrics):
        mine = [g for g in gs if g["metric"] == metric]
        k_top = max((int(g["k_max"]) for g in mine), default=1)
        for g in mine:
            s = _supports(g)
            k_max = int(g["k_max"])
            ks = np.arange(0, k_max + 1)
            frac = (s[None, :] <= ks[:, None]).mean(axis=1) if len(s) else np.zeros(len(ks))
            # one extra step past k_max so that answers of exactly k_max show as a jump
            ks, frac = np.append(ks, k_max + 1), np.append(frac, frac[-1])
            color = colors(methods.index(method_name(g)) % colors.N)
            ax.step(ks, frac, where="post", color=color, label=f"{method_name(g)} (n={len(s)})", linewidth=1.6)
            if n_boot > 0 and len(s):
                boot = np.sort(two_level_samples(_draw_matrix(g, [int(a["test_index"]) for a in g["answers"]]),
                                                 n_boot, np.random.default_rng(seed)), axis=1)
                at = np.stack([np.searchsorted(b, ks, side="right") for b in boot]) / boot.shape[1]
                ax.fill_between(ks, np.quantile(at, 0.025, axis=0), np.quantile(at, 0.975, axis=0), step="post",
                                color=color, alpha=0.15, linewidth=0)
        ax.set_xlim(0, k_top + 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{metric} support")
        verb = "removed" if metric == "removal" else "relabelled"
        ax.set_xlabel(f"k (top-k training images {verb})")
        ax.set_ylabel("fraction of test images flipped (support ≤ k)")
        ax.grid(True, alpha=0.3)
        if mine:
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def _to_hwc(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    a = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if a.ndim == 2:
        return a, "gray"
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise SimattrError(f"image of shape {a.shape}: expected (C, H, W) with C = 1 or 3")
    if a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a, (1, 2, 0)), None


def _lookup(topk: Mapping[Any, Sequence[int]], t: int) -> Sequence[int] | None:
    if t in topk:
        return topk[t]
    if str(t) in topk:  # dicts read back from JSON have string keys
        return topk[str(t)]
    return None


def plot_topk_grid(test_images, train_images,
                   topk_by_method: dict[str, dict[int, list[int]]], test_indices: list[int],
                   path: str | os.PathLike, k: int = 8) -> None:
    """Rows: for each test index, one row per method (in the dict's order): the test image, then the
    method's top-k training images (best first). Missing entries leave blank cells. The images are (N, C, H, W)
    arrays or anything with len() and [i] (a datasets.Split decodes only the images shown)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    methods = list(topk_by_method)
    n_rows = max(1, len(test_indices) * len(methods))
    n_test, n_train = len(test_images), len(train_images)
    cell = 1.15
    fig = _new_figure(((k + 1) * cell + 1.2, n_rows * cell + 0.4))
    axes = fig.subplots(n_rows, k + 1, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    r = 0
    for t in test_indices:
        t = int(t)
        if not 0 <= t < n_test:
            raise SimattrError(f"test index {t} is outside the {n_test} test images given")
        timg, tcmap = _to_hwc(test_images[t])
        for m in methods:
            row = axes[r]
            row[0].imshow(timg, cmap=tcmap, vmin=0, vmax=1, interpolation="nearest")
            for sp in row[0].spines.values():
                sp.set_visible(True)
                sp.set_color("tab:red")
                sp.set_linewidth(2)
            row[0].set_ylabel(f"{m}\ntest {t}", rotation=0, ha="right", va="center", fontsize=8)
            top = _lookup(topk_by_method[m], t)
            if top is None:
                row[1].text(0.5, 0.5, "no top-k", ha="center", va="center", fontsize=7,
                            transform=row[1].transAxes)
                top = []
            for j, i in enumerate(list(top)[:k]):
                i = int(i)
                if not 0 <= i < n_train:
                    raise SimattrError(f"method {m}, test {t}: train index {i} is outside the {n_train} "
                                       f"training images given")
                img, cmap = _to_hwc(train_images[i])
                row[j + 1].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            r += 1
    axes[0][0].set_title("test", fontsize=8)
    for j in range(1, k + 1):
        axes[0][j].set_title(f"#{j}", fontsize=8)
    fig.subplots_adjust(left=min(0.45, 1.3 / ((k + 1) * cell + 1.2)), right=0.99, bottom=0.01,
                        top=1 - 0.3 / (n_rows * cell + 0.4), wspace=0.05, hspace=0.08)
    _save_png(fig, path)


# ----------------------------------------------------------------------------------------- tables
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
        return f"{x:.{digits}f}"
    return str(x)


def _support_value(row: Mapping[str, Any], key: str, flag: str) -> str:
    if row.get(flag):
        return f">{row['k_max']}"
    return _fmt(row.get(key))


def _csv_cell(row: Mapping[str, Any], col: str) -> str:
    if col in ("median_support", "ci_low", "ci_high"):
        flag = "median_censored" if col == "median_support" else f"{col}_censored"
        return _support_value(row, col, flag)
    if col in ("mean_trainings", "mean_wall_s"):
        return _fmt(row.get(col), 2)
    if col in ("flipped_ci_low", "flipped_ci_high"):
        return _fmt(row.get(col), 3)
    return _fmt(row.get(col), 3)


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = [":---" if a == "l" else "---:" for a in align]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_markdown(rows: Sequence[Mapping[str, Any]], wins: Sequence[Mapping[str, Any]],
                    costs: Sequence[Mapping[str, Any]], lds: Sequence[Mapping[str, Any]] = (),
                    overlap: Sequence[Mapping[str, Any]] = (), mcosts: Sequence[Mapping[str, Any]] = (),
                    retest: Sequence[Mapping[str, Any]] = ()) -> str:
    datasets = sorted({str(r["dataset"]) for r in rows if r.get("dataset") is not None})
    title = f"# simattr report: {', '.join(datasets)}" if datasets else "# simattr report"
    out = [title, "",
           "Support of a test image under a method: the smallest k such that retraining without "
           "(removal) or with relabelled (mislabel) top-k training images of the method misclassifies "
           "it; `>k_max` = not flipped even at k_max (censored, counted as +inf). Smaller support = "
           "better attribution. Median = smallest s with fraction(support <= s) >= 1/2; "
           "95% CI = two-level percentile bootstrap: the test images resampled, and each image's support drawn "
           "from the noise of the models that answered it (posterior draws of its flip curve; pooled over the "
           "replicate seed sets when there are several), so an interval covers both which images were sampled "
           "and which model seeds were drawn. AUC = mean over k = 1..k_max of the fraction "
           "flipped at k (higher = better).", ""]
    metrics = sorted({r["metric"] for r in rows} | {w["metric"] for w in wins}, key=lambda m: (_metric_order(m), m))
    out += ["## Support size", ""]
    if not rows:
        out += ["No support answers.", ""]
    for metric in metrics:
        mine = [r for r in rows if r["metric"] == metric]
        if not mine:
            continue
        body = []
        for r in mine:
            med = _support_value(r, "median_support", "median_censored")
            lo = _support_value(r, "ci_low", "ci_low_censored")
            hi = _support_value(r, "ci_high", "ci_high_censored")
            ci = f"[{lo}, {hi}]" if (lo or hi) else ""
            fci = (f" [{_pct(r['flipped_ci_low'])}, {_pct(r['flipped_ci_high'])}]"
                   if r.get("flipped_ci_low") is not None else "")
            body.append([f"`{r['method']}`", str(r["n_test"]), str(r["n_flipped"]),
                         _pct(r.get("frac_flipped")) + fci, med or "n/a", ci, _fmt(r.get("auc"), 3),
                         _fmt(r.get("mean_trainings"), 2), str(r["k_max"]), str(r.get("engine", "")),
                         str(r.get("seed_sets", 1)), f"{r.get('violations', 0)} / {r.get('checked', 0)}"])
        out += [f"### {metric}", "",
                _md_table(["method", "n", "flipped", "% flipped [95% CI]", "median support", "95% CI", "AUC",
                           "mean trainings", "k_max", "engine", "seed sets", "monotonicity violations / checked"],
                          body)]
    out += ["## Win rates", "",
            "Cell (row A, column B): percent of the test images both methods answered where A's support "
            "is smaller than B's (null = +inf; equal supports, including both censored, are ties and "
            "count for neither). Paired test: the 95% interval of A's wins minus A's losses under the "
            "two-level bootstrap (the same resampled images for both methods, each support drawn from its "
            "models' noise), and an exact sign test of wins against losses; a cell that is not significant by "
            "both (interval excluding 0, p < 0.05) is marked *(within noise)*: a reseed of the retrained models "
            "or another sample of test images could reverse it.", ""]
    if not wins:
        out += ["Fewer than two methods per metric; no win rates.", ""]
    for metric in metrics:
        mine = [w for w in wins if w["metric"] == metric]
        if not mine:
            continue
        names = sorted({w["method_a"] for w in mine} | {w["method_b"] for w in mine})
        cell = {(w["method_a"], w["method_b"]): w for w in mine}
        body = []
        for a in names:
            line = [f"`{a}`"]
            for b in names:
                line.append("—" if a == b else (_win_cell(cell[(a, b)]) if (a, b) in cell else ""))
            body.append(line)
        ns = sorted({int(w["n"]) for w in mine})
        n_txt = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}..{ns[-1]}"
        out += [f"### {metric} ({n_txt} shared test images per pair)", "",
                _md_table(["A \\ B"] + [f"`{b}`" for b in names], body)]
    out += _retest_section(retest) + _lds_section(lds) + _overlap_section(overlap) + _method_cost_section(mcosts)
    out += ["## Stage costs", ""]
    if costs:
        body = [[str(c["stage"]), str(c["jobs"]), _fmt(float(c["wall_s"]), 1), _hms(float(c["wall_s"])),
                 "" if c.get("max_rss_mb") is None else _fmt(float(c["max_rss_mb"]), 1),
                 _human_bytes(int(c["bytes"]))] for c in costs]
        total_s = float(sum(c["wall_s"] for c in costs))
        total_b = int(sum(c["bytes"] for c in costs))
        body.append(["**total**", str(sum(int(c["jobs"]) for c in costs)), _fmt(total_s, 1), _hms(total_s),
                     "", _human_bytes(total_b)])
        out += [_md_table(["stage", "jobs", "wall s (sum)", "h:m:s", "max RSS MB", "stored"], body)]
    else:
        out += ["No benchmark data.", ""]
    out += ["## Figures", "", "![Support CDF](support_cdf.png)", "", "![Top-k training images](topk_grid.png)", ""]
    return "\n".join(out)


def _win_cell(w: Mapping[str, Any]) -> str:
    if w.get("win") is None:
        return "n/a"
    txt = _pct(w["win"])
    if w.get("significant") is None:
        return txt
    ci = f"win-loss [{w['diff_ci_low']:+.2f}, {w['diff_ci_high']:+.2f}]"
    return f"{txt} ({ci})" if w["significant"] else f"{txt} *(within noise)*"


def _retest_section(retest: Sequence[Mapping[str, Any]]) -> list[str]:
    if not retest:
        return []
    body = [[f"`{r['method']}`", r["metric"], f"{r['seed_set_a']} vs {r['seed_set_b']}", str(r["n"]),
             str(r["identical"]), _fmt(r["spearman"], 3), _fmt(r["median_rel_diff"], 3), _fmt(r["p90_rel_diff"], 3),
             str(r["flip_disagreements"])] for r in retest]
    return ["## Test-retest across seed sets", "",
            "The same test images, rankings and protocol answered again with independent retrained models "
            "(support.replicates): Spearman over images (censored = k_max + 1), the median and 90th percentile "
            "of |a - b| / max(a, b) over images both seed sets flipped, and the images one seed set flipped "
            "and the other did not.", "",
            _md_table(["method", "metric", "seed sets", "n", "identical", "Spearman", "median rel. diff",
                       "90th pct rel. diff", "flipped-or-not disagreements"], body)]


def _lds_section(lds: Sequence[Mapping[str, Any]]) -> list[str]:
    if not lds:
        return []
    body = [[f"`{r['method']}`", _fmt(r["mean"], 4), f"[{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]",
             str(r["n_test"]), str(r["n_undefined"]), str(r["n_models"]), str(r["weights"])]
            for r in sorted(lds, key=lambda r: -(r["mean"] if r["mean"] is not None else -9))]
    return ["## Linear datamodeling score (LDS)", "",
            f"Per test image, the Spearman correlation over {lds[0]['n_models']} models trained on random "
            f"{100 * lds[0]['alpha']:.0f}% subsets between the margin a method's scores predict (the sum of its "
            "weights over the kept training images) and the model's margin (correct logit minus logsumexp of the "
            "others); mean over test images with a 95% bootstrap CI. Higher = the scores model the retrained "
            "model better. Weights: `full_scores` = the ranker's signed scores of every training image; "
            "`shifted_candidates` = each ranked candidate's score minus the lowest one, 0 for the others.", "",
            _md_table(["method", "LDS", "95% CI", "test images", "undefined", "models", "weights"], body)]


def _overlap_section(overlap: Sequence[Mapping[str, Any]]) -> list[str]:
    if not overlap:
        return []
    out = ["## Selection overlap", "",
           "Cell (row A, column B): mean over test images of the Jaccard overlap |A ∩ B| / |A ∪ B| of the two "
           "methods' top-k training images (1 = the same images).", ""]
    for k in sorted({o["k"] for o in overlap}):
        mine = [o for o in overlap if o["k"] == k]
        names = sorted({o["method_a"] for o in mine})
        cell = {(o["method_a"], o["method_b"]): o for o in mine}
        body = [[f"`{a}`"] + [_fmt(cell[(a, b)]["jaccard"], 3) if (a, b) in cell else "" for b in names]
                for a in names]
        out += [f"### top-{k}", "", _md_table(["A \\ B"] + [f"`{b}`" for b in names], body)]
    return out


def _method_cost_section(mcosts: Sequence[Mapping[str, Any]]) -> list[str]:
    if not mcosts:
        return []
    body = [[f"`{c['method']}`", str(c["jobs"]), _fmt(float(c["wall_s"]), 1),
             "" if c.get("cpu_s") is None else _fmt(float(c["cpu_s"]), 1), _fmt(float(c["gpu_s"]), 1),
             str(c["models_trained"]), _human_bytes(int(c["bytes"]))] for c in mcosts]
    return ["## Cost per method", "",
            "What producing each method's scores took: its encoder's training and the embeddings (shared by the "
            "methods on that encoder, counted for each), its scoring jobs, and the models a model-based ranker "
            "trains (TRAK's checkpoints, the datamodels subset models); not the evaluation (support, LDS). Wall "
            "and CPU seconds are sums over jobs (Snakemake benchmarks); GPU seconds are the wall seconds of jobs "
            "that had a CUDA device.", "",
            _md_table(["method", "jobs", "wall s", "CPU s", "GPU s", "models trained", "stored"], body)]


def _rows_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else round(r[c], 4) if isinstance(r[c], float) else r[c]
                    for c in columns])
    return buf.getvalue()


def render_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUPPORT_COLUMNS)
    for r in rows:
        w.writerow([_csv_cell(r, c) for c in SUPPORT_COLUMNS])
    return buf.getvalue()


LDS_COLUMNS = ("method", "mean", "ci_low", "ci_high", "n_test", "n_undefined", "n_models", "alpha", "weights")
OVERLAP_COLUMNS = ("method_a", "method_b", "k", "n", "jaccard")
COST_COLUMNS = ("method", "jobs", "wall_s", "cpu_s", "gpu_s", "models_trained", "bytes")


WIN_COLUMNS = ("metric", "method_a", "method_b", "n", "win", "tie", "loss", "diff_ci_low", "diff_ci_high",
               "p_value", "significant")
RETEST_COLUMNS = ("method", "metric", "seed_set_a", "seed_set_b", "n", "identical", "spearman", "median_rel_diff",
                  "p90_rel_diff", "flip_disagreements")


def write_tables(rows: list[dict], wins: list[dict], costs: list[dict], out_dir: str | os.PathLike,
                 lds: Sequence[Mapping[str, Any]] = (), overlap: Sequence[Mapping[str, Any]] = (),
                 mcosts: Sequence[Mapping[str, Any]] = (), retest: Sequence[Mapping[str, Any]] = ()) -> None:
    """support.csv (the summarize rows; censored values as ">k_max"), lds.csv, overlap.csv, cost.csv (each when
    it has rows) and report.md, all atomically."""
    out_dir = Path(out_dir)
    write_text(out_dir / "support.csv", render_csv(rows))
    for name, got, cols in (("lds.csv", lds, LDS_COLUMNS), ("overlap.csv", overlap, OVERLAP_COLUMNS),
                            ("cost.csv", mcosts, COST_COLUMNS), ("wins.csv", wins, WIN_COLUMNS),
                            ("retest.csv", retest, RETEST_COLUMNS)):
        if got:
            write_text(out_dir / name, _rows_csv(got, cols))
        else:                   # a table this run does not have: no stale copy from an earlier run
            (out_dir / name).unlink(missing_ok=True)
    write_text(out_dir / "report.md", render_markdown(rows, wins, costs, lds, overlap, mcosts, retest))


def report_stage(*, data: datasets.Spec, gathers: list[str],
                 score_files: list[str], benchmarks: list[tuple[str, str]], stored: list[tuple[str, str]],
                 n_boot: int, seed: int, grid_images: int, out_dir: str, lds_files: list[str] = (),
                 overlap_k: list[int] = (10, 100), method_cost_entries: list[tuple[str, str, str]] = ()
                 ) -> list[dict]:
    g = [store.read_json(p) for p in gathers]
    rows = summarize(g, n_boot=n_boot, seed=seed)
    wins = win_rates(g, n_boot=n_boot, seed=seed)
    retest = retest_rows(g)
    bench: dict[str, list[str]] = {}
    for stage, f in benchmarks:
        bench.setdefault(stage, []).append(f)
    kept: dict[str, list[str]] = {}
    for stage, p in stored:
        kept.setdefault(stage, []).append(p)
    costs = stage_costs(bench, kept)
    out = Path(out_dir)
    plot_cdf(g, out / "support_cdf.png", n_boot=min(n_boot, 200), seed=seed)
    # the top-k grid: the first few sampled test images, each method's best training images
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    shown = sorted({a["test_index"] for x in g for a in x["answers"]})[:grid_images]
    topk_by_method: dict[str, dict[int, list[int]]] = {}
    score_sets: dict[str, list[dict]] = {}
    for f in score_files:
        sc = store.read_scores(f)
        method = f"{sc['attrs']['encoder']}/{sc['attrs']['ranker']}"
        score_sets.setdefault(method, []).append(sc)
        rows_of = {int(t): i for i, t in enumerate(sc["test_indices"])}
        for t in shown:
            if t in rows_of:
                topk_by_method.setdefault(method, {})[t] = sc["topk"][rows_of[t]].tolist()
    plot_topk_grid(te, tr, topk_by_method, shown, out / "topk_grid.png", k=8)
    lds = lds_rows([store.read_json(p) for p in lds_files])
    overlap = overlap_rows(score_sets, overlap_k) if len(score_sets) > 1 else []
    mcosts = method_costs(method_cost_entries)
    write_tables(rows, wins, costs, out, lds=lds, overlap=overlap, mcosts=mcosts, retest=retest)
    log.info("report written to %s\n%s", out / "md", (out / "md").read_text())
    return rows

