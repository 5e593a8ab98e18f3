"""Benchmark: how much of a support answer is model-seed noise, under the released protocol and the adaptive
engine, and how honest the report's intervals are.

    python benchmarks/reliability.py                   # 20 digits test images, 3 rankers, removal + mislabel
    python benchmarks/reliability.py --quick           # 4 images, 2 dense ones: a smoke run, not the bar

Inputs: a finished default digits workflow's queries and score files (config/config.yaml), made by
    snakemake --cores 2 --configfile config/config.yaml --config results=results/reliability -- \
        results/reliability/digits/support/queries.h5 results/reliability/digits/scores/{simclr/esvm,...}/class-*.h5
(--results names that folder; the script runs the command itself when the files are missing).

For each of the first --n-test sampled test images, each ranker (simclr/esvm, simclr/knn_l2, model/trak) and
metric (removal k_max 128 / 7 bisection steps, mislabel k_max 32 / 5 steps, the default config's), under
--seed-sets independent seed sets (support.seed_set 0, 1, 2, 3 by default):
  released-S   the released protocol: k_max, then bisection; every probe trains all S seeds (no early stop,
               no k = 0 probe), S = 3, 5, 8; the answer is bisection's.
  adaptive-M   simattr's adaptive engine (support.search.adaptive_search: seeds_min 3, seeds_max 9, confidence 0.9)
               with max_models M; the answer is the fitted curve's crossing.
Within one seed set the arms draw from one bank of models (a model's seed depends only on (image, k, seed
index, seed set), so the same model is the same bits in every arm): each arm is charged for every model it
uses, and its wall time is (models it used) x (the measured mean training time per model).
For --dense images also a reference curve: --dense-models models (seed set 99) at 17 evenly spaced k from 0
to k_max, then at up to 8 more k inside the bracket of the coarse crossing; its isotonic crossing is the
reference, and each arm's distance to it and each answer's 90% interval's coverage of it are printed.

Printed per method, metric and arm: test-retest over every pair of seed sets (Spearman over images; median,
mean and 90th-percentile relative difference |a - b| / max(a, b) over images both flipped; flipped-or-not
disagreements and identical answers per pair), mean models per answer and wall per answer; how often one seed
set's median support lies inside the 95% interval the report (report.statistics.summarize: two-level bootstrap over
images and models) computes from another seed set; the distance to the reference and the coverage; the
pairwise win rate knn_l2 vs esvm under each seed set with the report's paired test; and the frontier (models
per answer against agreement) per arm. Records are cached per unit in --results/bench-cache (a rerun resumes,
and adds seed sets or reruns only the adaptive arms when ADAPTIVE_VERSION changes); the summary is written to
--out as JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from simattr import flipcurve, models, store
from simattr import queries as queries_mod
from simattr.support.answer import answer_inputs, curve_record, load_scores
from simattr.support.bank import Journal, ModelBank
from simattr.support.search import adaptive_search, bank_probe, bisect_support, released_reading
from simattr.report import statistics

METHODS = ("simclr/esvm", "simclr/knn_l2", "model/trak")
METRICS = {"removal": (128, 7), "mislabel": (32, 5)}      # metric -> (k_max, bisection_steps): config/config.yaml
RECIPE = models.Recipe.of(name="mlp", hidden=64, steps=100, lr=0.01, weight_decay=0.0)
SEED_SETS = (0, 1, 2, 3)
DENSE_SEED_SET = 99
THRESHOLD = 0.5
RELEASED = (3, 5, 8)
BUDGETS = (24, 32, 40)
ADAPTIVE = {"seeds_min": 3, "seeds_max": 9, "confidence": 0.9}


def arms() -> list[str]:
    return [f"released-{s}" for s in RELEASED] + [f"adaptive-{m}" for m in BUDGETS]


# ----------------------------------------------------------------------------------------- one unit
class TimedJournal(Journal):
    """An in-memory journal shared by the arms of one seed set, timing each model it adds."""

    def __init__(self):
        super().__init__(None, "bench")
        self.train_s = 0.0


def _bank(inputs: dict, metric: str, t: int, seed_set: int, journal) -> ModelBank:
    return ModelBank.for_answer(inputs, metric=metric, recipe=RECIPE, dataset="digits", test_index=t,
                                seed_set=seed_set, journal=journal)


def _timed(bank: ModelBank, journal: TimedJournal) -> None:
    real = bank.ensure

    def ensure(k, indices):
        t0 = time.perf_counter()
        real(k, indices)
        journal.train_s += time.perf_counter() - t0
    bank.ensure = ensure


ADAPTIVE_VERSION = 3    # bump when search.adaptive_search changes: cached units then rerun their adaptive arms only


def run_unit(results: str, method: str, metric: str, t: int, dense: bool, dense_models: int,
             cached: dict | None = None) -> dict:
    """Every arm of one (method, metric, test image) under both seed sets, and its dense reference curve;
    `cached`: an earlier run of this unit whose released arms and reference are kept (only the adaptive arms
    are run again)."""
    queries = queries_mod.load_queries(str(Path(results) / "digits/support/queries.h5"))
    arrays = queries["arrays"]
    label = int(arrays["y_query"][list(arrays["test_indices"]).index(t)])
    enc, rk = method.split("/")
    scores = load_scores(str(Path(results) / store.SCORES.format(dataset="digits", encoder=enc, ranker=rk,
                                                                          cls=label)))
    inputs = answer_inputs(queries, scores, t)
    k_max, steps = METRICS[metric]
    k_max = min(k_max, len(inputs["ranking"]))
    out: dict = {"method": method, "metric": metric, "test_index": t, "k_max": k_max, "arms": {},
                 "adaptive_version": ADAPTIVE_VERSION}
    trained, train_s = 0, 0.0
    if cached is not None:
        keep = cached.get("adaptive_version") == ADAPTIVE_VERSION
        out["arms"] = {a: dict(v) for a, v in cached["arms"].items() if keep or a.startswith("released")}
        out.update({k: cached[k] for k in ("dense", "models_trained", "train_s") if k in cached})
        trained, train_s = cached["models_trained"], cached["train_s"]
    for s in SEED_SETS:
        journal = TimedJournal()
        for arm in arms():
            if arm in out["arms"] and str(s) in out["arms"][arm]:
                continue
            bank = _bank(inputs, metric, t, s, journal)
            _timed(bank, journal)
            kind, n = arm.split("-")
            if kind == "released":
                probe = bank_probe(bank, seeds=int(n), threshold=THRESHOLD, early_stop=False)
                found, probes = bisect_support(probe, k_max, steps)
                rec = curve_record(bank, engine="bisection", bisection=found, probes=probes, checks=[],
                                   threshold=THRESHOLD, k_max=k_max, seed=store.seed_from(arm, t, s))
            else:
                probes = adaptive_search(bank, k_max, threshold=THRESHOLD, max_models=int(n), **ADAPTIVE)
                rec = curve_record(bank, engine="adaptive", bisection=released_reading(probes),
                                   probes=probes, checks=[], threshold=THRESHOLD, k_max=k_max,
                                   seed=store.seed_from(arm, t, s))
            rec.update(test_index=t, seed_set=s)
            out["arms"].setdefault(arm, {})[str(s)] = rec
        if cached is None or all(str(s) not in v for v in cached["arms"].values()):
            trained += len(journal.entries)     # new models (a rerun's models for a known seed set are not)
            train_s += journal.train_s
    if dense and "dense" not in out:
        journal = TimedJournal()
        bank = _bank(inputs, metric, t, DENSE_SEED_SET, journal)
        _timed(bank, journal)
        grid = sorted({int(round(x)) for x in np.linspace(0, k_max, 17)})
        for k in grid:
            bank.ensure(k, range(dense_models))
        est = flipcurve.estimate(bank.points(), THRESHOLD, n_draws=0)
        if math.isfinite(est.support) and est.lo >= 0 and est.hi - est.lo > 1:
            # refine: every k of the bracket around the coarse crossing (at most 8 of them, evenly spread)
            inner = sorted({int(round(x)) for x in np.linspace(est.lo, est.hi, 10)[1:-1]} - set(grid))
            for k in inner:
                bank.ensure(k, range(dense_models))
            grid = sorted(set(grid) | set(inner))
            est = flipcurve.estimate(bank.points(), THRESHOLD, n_draws=0)
        out["dense"] = {"k": grid, "accuracy": [bank.count(k)[1] / bank.count(k)[0] for k in grid],
                        "support": flipcurve.as_int(est.support), "crossing": est.crossing}
        trained += len(journal.entries)
        train_s += journal.train_s
    out["models_trained"], out["train_s"] = trained, train_s
    return out


# ----------------------------------------------------------------------------------------- summary
def _fmt(x, d=3):
    return "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def _report_ci(method: str, metric: str, k_max: int, answers: list[dict], arm: str, n_boot: int) -> tuple:
    """The report's 95% interval of the median support from one seed set's answers (report.statistics.summarize)."""
    g = {"dataset": "digits", "encoder": method.split("/")[0], "ranker": method.split("/")[1], "metric": metric,
         "k_max": k_max, "answers": answers,
         "settings": {"engine": "adaptive" if arm.startswith("adaptive") else "bisection"}}
    row = statistics.summarize([g], n_boot=n_boot, seed=0)[0]
    lo = math.inf if row["ci_low_censored"] else row["ci_low"]
    hi = math.inf if row["ci_high_censored"] or row["ci_high"] is None else row["ci_high"]
    return lo, hi


def _median(answers: list[dict]) -> float:
    s = np.sort([math.inf if a["support"] is None else a["support"] for a in answers])
    return float(s[(len(s) - 1) // 2])


def summarise(units: list[dict], n_boot: int) -> dict:
    """Per (metric, method, arm): test-retest over every pair of seed sets (relative differences pooled over
    the pairs; Spearman, flipped-or-not disagreements and identical answers averaged per pair), models per
    answer, the report's interval from each seed set against every other seed set's median, and the dense
    reference: distance and 90% coverage."""
    per_model = sum(u["train_s"] for u in units) / max(1, sum(u["models_trained"] for u in units))
    out = {"s_per_model": per_model, "seed_sets": list(SEED_SETS), "cells": [], "wins": [], "frontier": []}
    pairs = list(itertools.combinations(SEED_SETS, 2))
    for metric in METRICS:
        for method in METHODS:
            mine = sorted([u for u in units if u["method"] == method and u["metric"] == metric],
                          key=lambda u: u["test_index"])
            if not mine:
                continue
            k_max = mine[0]["k_max"]
            for arm in arms():
                by = {s: [u["arms"][arm][str(s)] for u in mine] for s in SEED_SETS}
                rts = [statistics.retest_agreement(by[a], by[b], k_max) for a, b in pairs]
                rel = [x for r in rts for x in r["rel_diffs"]]
                models_per = float(np.mean([a["trainings"] for s in SEED_SETS for a in by[s]]))
                cell = {"metric": metric, "method": method, "arm": arm, "n": len(mine), "pairs": len(pairs),
                        "spearman": float(np.mean([r["spearman"] for r in rts if r["spearman"] is not None])),
                        "median_rel_diff": float(np.median(rel)) if rel else None,
                        "mean_rel_diff": float(np.mean(rel)) if rel else None,
                        "p90_rel_diff": float(np.quantile(rel, 0.9)) if rel else None, "rel_diffs": rel,
                        "flip_disagreements": float(np.mean([r["flip_disagreements"] for r in rts])),
                        "identical": float(np.mean([r["identical"] for r in rts])),
                        "models": models_per, "wall_s": models_per * per_model}
                cis = {s: _report_ci(method, metric, k_max, by[s], arm, n_boot) for s in SEED_SETS}
                inside = [cis[a][0] <= _median(by[b]) <= cis[a][1] for a in SEED_SETS for b in SEED_SETS if a != b]
                cell.update(ci=[list(cis[s]) for s in SEED_SETS], medians=[_median(by[s]) for s in SEED_SETS],
                            inside=int(sum(inside)), inside_of=len(inside))
                dense = [u for u in mine if u.get("dense")]
                if dense:
                    dist, cover = [], []
                    for u in dense:
                        ref = u["dense"]["support"]          # the reference curve's crossing, an integer k
                        for s in SEED_SETS:
                            a = u["arms"][arm][str(s)]
                            # the interval as the current code computes it from the answer's curve
                            lo90, hi90 = flipcurve.estimate(flipcurve.Points.from_curve(a["curve"]), THRESHOLD,
                                                            seed=store.seed_from(arm, u["test_index"], s)
                                                            ).interval(0.9)
                            if ref is None:
                                cover.append(hi90 == math.inf)
                                dist.append(0.0 if a["support"] is None else math.inf)
                            else:
                                cover.append(lo90 <= ref <= hi90)
                                dist.append(math.inf if a["support"] is None else abs(a["support"] - ref))
                    cell["ref_images"] = len(dense)
                    cell["ref_median_abs_dist"] = float(np.median(dist))
                    cell["ref_coverage90"] = float(np.mean(cover))
                out["cells"].append(cell)
        # pairwise: knn_l2 against esvm under each seed set, and the report's paired test
        for arm in arms():
            for s in map(str, SEED_SETS):
                gs = []
                for method in ("simclr/esvm", "simclr/knn_l2"):
                    mine = sorted([u for u in units if u["method"] == method and u["metric"] == metric],
                                  key=lambda u: u["test_index"])
                    if mine:
                        gs.append({"dataset": "digits", "encoder": method.split("/")[0],
                                   "ranker": method.split("/")[1], "metric": metric, "k_max": mine[0]["k_max"],
                                   "answers": [u["arms"][arm][s] for u in mine]})
                if len(gs) == 2:
                    w = [r for r in statistics.win_rates(gs, n_boot=n_boot, seed=0)
                         if r["method_a"] == "simclr/knn_l2"][0]
                    out["wins"].append({"metric": metric, "arm": arm, "seed_set": int(s), **w})
    for arm in arms():
        for metric in list(METRICS) + ["both"]:
            cs = [c for c in out["cells"] if c["arm"] == arm and metric in (c["metric"], "both")]
            pooled = [x for c in cs for x in c["rel_diffs"]]
            out["frontier"].append({
                "arm": arm, "metric": metric, "models": float(np.mean([c["models"] for c in cs])),
                "median_rel_diff": float(np.median(pooled)), "mean_rel_diff": float(np.mean(pooled)),
                "p90_rel_diff": float(np.quantile(pooled, 0.9)),
                "spearman_mean": float(np.mean([c["spearman"] for c in cs])),
                "flip_disagreements": float(sum(c["flip_disagreements"] for c in cs)),
                "inside": f"{sum(c['inside'] for c in cs)}/{sum(c['inside_of'] for c in cs)}",
                "coverage90": float(np.mean([c["ref_coverage90"] for c in cs if "ref_coverage90" in c]))})
    return out


def print_summary(summary: dict) -> None:
    print(f"\nmean training time per model: {summary['s_per_model'] * 1000:.1f} ms; seed sets "
          f"{summary['seed_sets']} (test-retest over every pair)")
    head = ("metric", "method", "arm", "Spearman", "med rel", "mean rel", "p90 rel", "flip dis/pair",
            "identical/pair", "models", "wall s", "medians in CIs", "ref |d|", "cov90")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in summary["cells"]:
        print("| " + " | ".join([c["metric"], c["method"], c["arm"], _fmt(c["spearman"]), _fmt(c["median_rel_diff"]),
                                 _fmt(c["mean_rel_diff"]), _fmt(c["p90_rel_diff"]), f"{c['flip_disagreements']:.2f}",
                                 f"{c['identical']:.1f}/{c['n']}", f"{c['models']:.1f}", f"{c['wall_s']:.2f}",
                                 f"{c['inside']}/{c['inside_of']}", _fmt(c.get("ref_median_abs_dist"), 1),
                                 _fmt(c.get("ref_coverage90"), 2)]) + " |")
    print("\nknn_l2 vs esvm (win = knn's support smaller), per seed set, with the report's paired test:")
    for w in summary["wins"]:
        print(f"  {w['metric']:8s} {w['arm']:12s} seed set {w['seed_set']}: win {_fmt(w['win'], 2)} tie "
              f"{_fmt(w['tie'], 2)} loss {_fmt(w['loss'], 2)}; win-loss 95% CI [{_fmt(w['diff_ci_low'], 2)}, "
              f"{_fmt(w['diff_ci_high'], 2)}] p={_fmt(w['p_value'], 3)} "
              f"{'significant' if w['significant'] else 'within noise'}")
    print("\nfrontier: per arm and metric (both = pooled): mean models per answer; median, mean and 90th percentile of "
          "the relative differences of every image two seed sets both flipped; mean Spearman; flipped-or-not "
          "disagreements per seed-set pair (summed over methods); other seed sets' medians inside the report's "
          "95% interval; 90% coverage of the dense reference crossing")
    for f in summary["frontier"]:
        print(f"  {f['arm']:12s} {f['metric']:8s} models {f['models']:5.1f}  rel diff median {f['median_rel_diff']:.3f} "
              f"mean {f['mean_rel_diff']:.3f} p90 {f['p90_rel_diff']:.3f}  Spearman {f['spearman_mean']:.3f}  "
              f"flip dis {f['flip_disagreements']:.2f}  inside {f['inside']}  cov90 {f['coverage90']:.2f}")


# ----------------------------------------------------------------------------------------- main
def ensure_inputs(results: Path) -> None:
    targets = [str(results / "digits/support/queries.h5")] + [
        str(results / store.SCORES.format(dataset="digits", encoder=m.split("/")[0], ranker=m.split("/")[1], cls=c))
        for m in METHODS for c in range(10)]
    if all(Path(t).exists() for t in targets):
        return
    print("making the inputs with snakemake ...", flush=True)
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/config.yaml",
                    "--config", f"results={results}", "--", *targets], check=True)


def main(argv=None) -> int:
    global SEED_SETS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/reliability")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--dense", type=int, default=8, help="images with a dense reference curve (per method, metric)")
    ap.add_argument("--dense-models", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed-sets", type=int, nargs="+", default=list(SEED_SETS),
                    help="independent seed sets (test-retest over every pair)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="summary JSON (default: RESULTS/reliability.json)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_test, a.dense, a.dense_models = 4, 2, 8
    SEED_SETS = tuple(a.seed_sets)
    results = Path(a.results)
    ensure_inputs(results)
    cache = results / "bench-cache"
    cache.mkdir(parents=True, exist_ok=True)
    arrays, _ = store.read_arrays(results / "digits/support/queries.h5", ("test_indices",))
    tests = arrays["test_indices"][:a.n_test].tolist()
    jobs = [(m, metric, t, i < a.dense) for metric in METRICS for m in METHODS for i, t in enumerate(tests)]
    units, todo = [], []
    tag = f"v2-{a.dense_models}-{'-'.join(arms())}"
    for m, metric, t, dense in jobs:
        f = cache / f"{m.replace('/', '-')}-{metric}-{t}-{'dense' if dense else 'plain'}-{tag}.json"
        if f.exists():
            u = json.loads(f.read_text())
            if u.get("adaptive_version") == ADAPTIVE_VERSION and all(
                    str(ss) in u["arms"].get(arm, {}) for arm in arms() for ss in SEED_SETS):
                units.append(u)
            else:
                todo.append((f, (str(results), m, metric, t, dense, a.dense_models, u)))
        else:
            todo.append((f, (str(results), m, metric, t, dense, a.dense_models)))
    print(f"{len(jobs)} units ({len(units)} cached), {a.workers} workers", flush=True)
    t0 = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        futs = {ex.submit(run_unit, *args): f for f, args in todo}
        for i, fut in enumerate(as_completed(futs), 1):
            u = fut.result()
            store.write_json(futs[fut], u)
            units.append(u)
            print(f"  [{i}/{len(todo)}] {u['method']} {u['metric']} test {u['test_index']}: "
                  f"{u['models_trained']} models, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(units, a.n_boot)
    summary.update(n_test=len(tests), dense=a.dense, dense_models=a.dense_models, wall_s=time.perf_counter() - t0)
    print_summary(summary)
    out = Path(a.out) if a.out else results / "reliability.json"
    store.write_json(out, summary)
    print(f"\nsummary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
