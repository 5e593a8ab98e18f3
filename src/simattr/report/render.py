"""The report's tables: support.csv, lds.csv, overlap.csv, cost.csv, wins.csv, retest.csv, plan.csv and report.md rendered
from the rows of simattr.report.statistics and simattr.report.costs (the column tuples are here), and written by
write_tables.

Every file is written atomically (store.atomic_path) and the CSV/Markdown bytes depend only on the inputs.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..store import REPORT_FILES, write_text
from .statistics import metric_order


SUPPORT_COLUMNS = (
    "dataset", "method", "encoder", "ranker", "metric", "k_max", "engine", "seed_sets", "n_test", "n_flipped",
    "frac_flipped", "flipped_ci_low", "flipped_ci_high",
    "median_support", "median_censored", "ci_low", "ci_high", "ci_low_censored", "ci_high_censored",
    "auc", "mean_trainings", "mean_wall_s", "checked", "violations",
)
LDS_COLUMNS = ("method", "mean", "ci_low", "ci_high", "n_test", "n_undefined", "n_models", "alpha", "weights")
OVERLAP_COLUMNS = ("method_a", "method_b", "k", "n", "jaccard")
COST_COLUMNS = ("method", "jobs", "wall_s", "cpu_s", "gpu_s", "models_trained", "bytes", "sidecar")
WIN_COLUMNS = ("metric", "method_a", "method_b", "n", "win", "tie", "loss", "diff_ci_low", "diff_ci_high",
               "p_value", "significant")
PLAN_COLUMNS = ("stage", "planned_jobs", "spent_jobs", "planned_models_expected", "planned_models_bound",
                "trained_models", "planned_wall_s", "planned_cpu_h", "planned_gpu_h", "spent_wall_s")
PLAN_FILE = REPORT_FILES["plan"]
RETEST_COLUMNS = ("method", "metric", "seed_set_a", "seed_set_b", "n", "identical", "spearman", "median_rel_diff",
                  "p90_rel_diff", "flip_disagreements")


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


def _by_metric(items: Sequence[Mapping[str, Any]], metrics: Sequence[str]):
    """(metric, its items) for each metric in order that has any."""
    for metric in metrics:
        mine = [x for x in items if x["metric"] == metric]
        if mine:
            yield metric, mine


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
                    retest: Sequence[Mapping[str, Any]] = (), planned: Sequence[Mapping[str, Any]] = (),
                    plan: Mapping[str, Any] | None = None) -> str:
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
    metrics = sorted({r["metric"] for r in rows} | {w["metric"] for w in wins}, key=lambda m: (metric_order(m), m))
    out += ["## Support size", ""]
    if not rows:
        out += ["No support answers.", ""]
    for metric, mine in _by_metric(rows, metrics):
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
    for metric, mine in _by_metric(wins, metrics):
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
    out += _plan_section(planned, plan)
    out += ["## Figures", "", f"![Support CDF]({REPORT_FILES['cdf']})", "",
            f"![Top-k training images]({REPORT_FILES['grid']})", ""]
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
    body = [[f"`{c['method']}`" + (" (+ author's)" if c.get("sidecar") else ""), str(c["jobs"]), _fmt(float(c["wall_s"]), 1),
             "" if c.get("cpu_s") is None else _fmt(float(c["cpu_s"]), 1), _fmt(float(c["gpu_s"]), 1),
             str(c["models_trained"]), _human_bytes(int(c["bytes"]))] for c in mcosts]
    return ["## Cost per method", "",
            "What producing each method's scores took: its encoder's training and the embeddings (shared by the "
            "methods on that encoder, counted for each), its scoring jobs, and the models a model-based ranker "
            "trains (TRAK's checkpoints, the datamodels subset models); not the evaluation (support, LDS). Wall "
            "and CPU seconds are sums over jobs (Snakemake benchmarks); GPU seconds are the wall seconds of jobs "
            "that had a CUDA device. An external method's scores were computed outside simattr: its jobs are "
            "reading them in; \"+ author's\" marks a row that adds what its author reported in NAME.cost.json "
            "(wall and GPU seconds, models trained).", "",
            _md_table(["method", "jobs", "wall s", "CPU s", "GPU s", "models trained", "stored"], body)]


def _plan_section(planned: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None) -> list[str]:
    if not planned or plan is None:
        return []

    def n(x):
        return "-" if x is None else f"{x:,}"

    def s(x):
        return "-" if x is None else _fmt(float(x), 1)

    def h(x):
        return "-" if x is None else _fmt(float(x), 3)

    body = [[str(r["stage"]), str(r["planned_jobs"]), str(r["spent_jobs"]),
             "-" if r["planned_models_bound"] is None else
             f"{r['planned_models_expected']:,} ({r['planned_models_bound']:,})",
             n(r["trained_models"]), s(r["planned_wall_s"]), h(r["planned_cpu_h"]), h(r["planned_gpu_h"]),
             s(r["spent_wall_s"])] for r in planned]
    t = plan.get("time_per_model_s")
    return ["## Planned vs spent", "",
            "The plan (`simattr plan`: the same settings, made as before the run, without this run's answers) beside "
            "what the run spent. Models: expected (upper bound, never exceeded); trained: the support answers' "
            "models (every replicate; journaled ones count), the other stages' fixed counts once all their jobs "
            "ran. Wall: job-seconds summed over a stage's jobs (the Snakemake benchmarks; a support job's planned "
            "wall is its tasks' models x time per model, plus task starts, / launch.parallelism); only retrained "
            "models are planned in time. "
            f"Time per model: {'unknown' if t is None else _fmt(float(t), 4) + ' s'} ({plan.get('time_source')}); "
            f"expected models: {plan.get('expected_basis')}.", "",
            _md_table(["stage", "planned jobs", "spent jobs", "planned models: expected (bound)", "trained models",
                       "planned wall s", "planned CPU-h", "planned GPU-h", "spent wall s"], body)]


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

def write_tables(rows: list[dict], wins: list[dict], costs: list[dict], out_dir: str | os.PathLike,
                 lds: Sequence[Mapping[str, Any]] = (), overlap: Sequence[Mapping[str, Any]] = (),
                 mcosts: Sequence[Mapping[str, Any]] = (), retest: Sequence[Mapping[str, Any]] = (),
                 planned: Sequence[Mapping[str, Any]] = (), plan: Mapping[str, Any] | None = None) -> None:
    """support.csv (the summarize rows; censored values as ">k_max"), lds.csv, overlap.csv, cost.csv (each when
    it has rows) and report.md, all atomically."""
    out_dir = Path(out_dir)
    write_text(out_dir / REPORT_FILES["support"], render_csv(rows))
    for key, got, cols in (("lds", lds, LDS_COLUMNS), ("overlap", overlap, OVERLAP_COLUMNS),
                           ("cost", mcosts, COST_COLUMNS), ("wins", wins, WIN_COLUMNS),
                           ("retest", retest, RETEST_COLUMNS)):
        if got:
            write_text(out_dir / REPORT_FILES[key], _rows_csv(got, cols))
        else:                   # a table this run does not have: no stale copy from an earlier run
            (out_dir / REPORT_FILES[key]).unlink(missing_ok=True)
    if planned:
        write_text(out_dir / PLAN_FILE, _rows_csv(planned, PLAN_COLUMNS))
    else:
        (out_dir / PLAN_FILE).unlink(missing_ok=True)
    write_text(out_dir / REPORT_FILES["markdown"],
               render_markdown(rows, wins, costs, lds, overlap, mcosts, retest, planned, plan))
