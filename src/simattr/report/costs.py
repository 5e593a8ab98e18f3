"""The report's costs: Snakemake benchmark files read, bytes stored under a stage's paths, and the cost tables
per stage (stage_costs) and per method (method_costs)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import SimattrError
from ..external import read_cost


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
    trains), `usage` (the job's usage record, simattr.store.usage_path: whether it had a GPU), `stored` (a file
    or folder it wrote), `models` (retrained models it needed) and `sidecar` (an external method's NAME.cost.json:
    what computing its scores cost its author, added to wall_s, gpu_s and models_trained). A job shared by several
    methods (an encoder) counts for each. Rows: method, jobs, wall_s, cpu_s, gpu_s (wall seconds of jobs that had a
    CUDA device), models_trained, bytes, sidecar (the sidecar's path, or empty)."""

    by: dict[str, dict[str, list[str]]] = {}
    for method, kind, value in entries:
        if kind not in ("bench", "usage", "stored", "models", "sidecar"):
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
        author = [read_cost(p) for p in kinds.get("sidecar", [])]
        rows.append({"method": method, "jobs": len(bench),
                     "wall_s": float(sum(b["s"] for b in bench.values())) + sum(a["wall_s"] for a in author),
                     "cpu_s": float(sum(cpus)) if cpus else None, "gpu_s": gpu + sum(a["gpu_s"] for a in author),
                     "models_trained": int(sum(int(m) for m in kinds.get("models", [])))
                     + sum(a["models_trained"] for a in author),
                     "bytes": _bytes_under(kinds.get("stored", [])), "sidecar": ";".join(kinds.get("sidecar", []))})
    return rows
