"""The report stage (`simattr report`): reads the gathers, score files, benchmarks and LDS files, and writes the
tables and figures of one dataset's report."""
from __future__ import annotations

import logging
from pathlib import Path

from .. import datasets, store
from ..plan import planned_vs_spent
from ..store import REPORT_FILES
from .costs import method_costs, read_benchmark, stage_costs
from .figures import TOPK_SHOWN, plot_cdf, plot_topk_grid
from .render import write_tables
from .statistics import lds_rows, overlap_rows, retest_rows, summarize, win_rates

log = logging.getLogger("simattr")


def report_stage(*, data: datasets.Spec, gathers: list[str],
                 score_files: list[str], benchmarks: list[tuple[str, str]], stored: list[tuple[str, str]],
                 n_boot: int, seed: int, grid_images: int, out_dir: str, lds_files: list[str],
                 overlap_k: list[int], method_cost_entries: list[tuple[str, str, str]],
                 plan: dict | None = None) -> list[dict]:
    """... plan: the run's plan (simattr.plan.make_plan, from the same settings as before the run, no earlier
    answers): with it, the planned-vs-spent table (plan.csv and a section of report.md)."""
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
    plot_cdf(g, out / REPORT_FILES["cdf"], n_boot=min(n_boot, 200), seed=seed)
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
    plot_topk_grid(te, tr, topk_by_method, shown, out / REPORT_FILES["grid"], k=TOPK_SHOWN)
    lds = lds_rows([store.read_json(p) for p in lds_files])
    overlap = overlap_rows(score_sets, overlap_k) if len(score_sets) > 1 else []
    mcosts = method_costs(method_cost_entries)
    planned = []
    if plan is not None:
        planned = planned_vs_spent(plan, [(f, read_benchmark(f)) for _, f in benchmarks], g)
    write_tables(rows, wins, costs, out, lds=lds, overlap=overlap, mcosts=mcosts, retest=retest, planned=planned,
                 plan=plan)
    md = out / REPORT_FILES["markdown"]
    log.info("report written to %s\n%s", md, md.read_text())
    return rows

