"""The plan as text (render) and as the report's planned-vs-spent rows."""
from __future__ import annotations

import os
from pathlib import Path

from .. import store
from .estimate import (
    HOW_TO_TIME,
)


# --------------------------------------------------------------------------------------------- rendering
def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"


def human_hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _h(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}" if x < 10 else f"{x:,.0f}"


def render(plan: dict) -> str:
    """The plan as a table a person reads (what `simattr plan` prints)."""
    head = ("stage", "jobs", "tasks", "models (expected)", "models (bound)", "device", "wall", "GPU-h", "CPU-h",
            "peak/job", "written")
    body = [(r["stage"], f"{r['jobs']:,}", f"{r['tasks']:,}" if r["tasks"] else "-",
             f"{r['models_expected']:,}" if r["models_bound"] else "-",
             f"{r['models_bound']:,}" if r["models_bound"] else "-", r["device"], human_hours(r["wall_s"]),
             _h(r["gpu_h"]), _h(r["cpu_h"]), human_bytes(r["peak_bytes"]), human_bytes(r["bytes"]))
            for r in plan["stages"]]
    tot = plan["total"]
    body.append(("total", f"{tot['jobs']:,}", f"{tot['tasks']:,}", f"{tot['models_expected']:,}",
                 f"{tot['models_bound']:,}", "", human_hours(tot["wall_s"]), _h(tot["gpu_h"]), _h(tot["cpu_h"]),
                 human_bytes(tot["peak_bytes"]), human_bytes(tot["bytes"])))
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)      # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    t, start = plan["time_per_model_s"], plan["task_start_s"]
    out = [f"plan: {plan['dataset']} ({plan['classes']} classes, {plan['n_train']:,} train / {plan['n_test']:,} test "
           f"images), model {plan['model']}, {plan['answers']:,} support answers ({plan['engine']} engine)",
           line(head), line(["-" * w for w in widths])] + [line(b) for b in body] + [
        "",
        f"time per model: {'unknown' if t is None else f'{t:.4g} s'} - {plan['time_source']}",
        f"expected models: {plan['expected_basis']}",
        "support task start: " + ("not counted" if start is None else f"{start:.2f} s") +
        f" per task; launch.parallelism {plan['parallelism']}",
        plan["wall_note"]]
    if t is None:
        out.append(f"GPU/CPU hours unknown: {HOW_TO_TIME}")
    return "\n".join(out) + "\n"


def write_plan(plan: dict, path: str | os.PathLike) -> None:
    store.write_json(path, plan)


# ------------------------------------------------------------------------------------- planned vs spent
def benchmark_stage(path: str | os.PathLike) -> str | None:
    """The plan's stage of a job's Snakemake benchmark file (store.BENCHMARK: .../benchmarks/{stage}/{name}.tsv,
    the workflow's job names)."""
    p = Path(path)
    folder, name = p.parent.name, p.stem
    if folder in ("embed", "score", "report"):
        return folder
    if folder == "attribution":
        return "trak" if name in ("trak", "trak-checkpoints") else "subsets" if name.startswith("subsets-") else \
            "lds" if name.startswith("lds-") else None
    if folder == "support":
        return "queries" if name == "queries" else "support"
    return None


def planned_vs_spent(plan: dict, benchmarks: list[tuple[str, dict]], gathers: list[dict]) -> list[dict]:
    """One row per planned stage: the plan's jobs, models (expected, bound), wall, CPU-h and GPU-h beside what the
    run spent: its jobs (benchmark files) and their summed wall seconds, and the models it trained (support: the
    answers' `trainings`, every replicate; queries, trak, subsets: their fixed counts once all their jobs ran).
    benchmarks: (path, read_benchmark's dict)."""
    spent: dict[str, list[float]] = {}
    for path, b in benchmarks:
        st = benchmark_stage(path)
        if st is not None:
            spent.setdefault(st, []).append(float(b["s"]))
    trained_support = sum(int(a.get("trainings", 0)) for g in gathers
                          for a in list(g.get("answers", [])) + [x for rep in g.get("replicates", []) for x in rep])
    rows = []
    for r in plan["stages"]:
        st = r["stage"]
        walls = spent.get(st, [])
        if st == "support":
            trained = trained_support
        elif r["models_bound"]:
            trained = r["models_bound"] if len(walls) == r["jobs"] else None
        else:
            trained = None
        rows.append({"stage": st, "planned_jobs": r["jobs"], "spent_jobs": len(walls),
                     "planned_models_expected": r["models_expected"] if r["models_bound"] else None,
                     "planned_models_bound": r["models_bound"] or None, "trained_models": trained,
                     "planned_wall_s": r["wall_s"], "planned_cpu_h": r["cpu_h"], "planned_gpu_h": r["gpu_h"],
                     "spent_wall_s": round(sum(walls), 3) if walls else None})
    return rows
