"""The support stage: every sampled test image's removal or mislabel answer (support.answer.compute) as array
tasks through simattr.launch, resumed from the answers already on disk, gathered into one file.

The job's support.answer.Settings arrive built (settings.parse) and travel as they are: into every task's units
(pickled with them) and on to compute; a further replicate seed set is the same settings with its seed_set.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from .. import store
from ..errors import SimattrError
from ..launch import LaunchSettings, Task, run_tasks
from ..queries import load_queries
from .answer import Settings, answer_hash, answer_inputs, compute, finished_answer, load_scores

log = logging.getLogger("simattr")


def answer(*, queries_path: str, scores_path: str, out_path: str, test_index: int, metric: str,
           settings: Settings) -> dict:
    """Compute (or reuse) one test image's support answer from the files; write it atomically to out_path."""
    t0 = time.perf_counter()
    inputs = answer_inputs(load_queries(queries_path), load_scores(scores_path), test_index)
    return compute(inputs, metric=metric, test_index=test_index, settings=settings, out_path=out_path, started=t0)


def expected_answer(*, queries_path: str, scores_path: str, out_path: str, test_index: int, metric: str,
                    settings: Settings, queries: dict | None = None, scores: dict | None = None) -> dict | None:
    """The stored answer if it is still valid for these inputs, else None (the task must run).
    `queries` / `scores`: the files already loaded, when the caller checks many images."""
    inputs = answer_inputs(queries or load_queries(queries_path), scores or load_scores(scores_path), test_index)
    return finished_answer(out_path, answer_hash(metric, test_index, settings, inputs))


def answer_task(**unit) -> dict:
    """One unit of a task: answer(**unit)."""
    return answer(**unit)


def answer_chunk(units: list[dict], at_once: int = 1, threads: int = 1, name: str = "support",
                 gpus: int = 0) -> list[dict]:
    """Several answers in one task (one process start for all of them): one after the other, or `at_once` at a
    time in processes of their own that share the task's GPU (several models per GPU where one leaves it
    idle), each with `threads` cores. Every answer is attempted; if some raise, the task raises afterwards
    naming each failed image (the others are written and a rerun reuses them)."""
    out, errors = [], []

    def failed(u, e):                     # called in its except block: the log gets the traceback
        log.exception("test image %s failed", u["test_index"])
        errors.append(f"test image {u['test_index']}: {type(e).__name__}: {e}")

    if at_once > 1 and len(units) > 1:
        # spawn: a fresh interpreter (no CUDA state or locks inherited from this process)
        with ProcessPoolExecutor(min(at_once, len(units)), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [(u, pool.submit(Task(answer_task, threads, name, gpus), u)) for u in units]
            for u, job in jobs:
                try:
                    out.append(job.result())
                except Exception as e:  # noqa: BLE001 - reported below, with the image it belongs to
                    failed(u, e)
    else:
        for u in units:
            try:
                out.append(answer_task(**u))
            except Exception as e:  # noqa: BLE001 - reported below, with the image it belongs to
                failed(u, e)
    if errors:
        raise SimattrError(f"{len(errors)} of {len(units)} answers of this task failed: " + "; ".join(errors))
    return out


def support_stage(*, queries: str, score_files: list[str], answers_dir: str, gather_out: str, metric: str,
                  settings: Settings, launch: LaunchSettings, replicates: int, progress: bool = True) -> dict:
    """Submit one array task per sampled test image (and replicate seed set); wait; gather the answers into
    `gather_out`: `answers` (seed set settings.seed_set) and, with replicates > 1, `replicates`: one list of
    answers per further seed set, in the same test image order."""
    t0 = time.perf_counter()
    if replicates < 1:
        raise SimattrError(f"support.replicates must be >= 1 (got {replicates})")
    loaded_queries = load_queries(queries)
    arrays = loaded_queries["arrays"]
    by_class = {}
    for f in score_files:
        sc = load_scores(f)
        by_class[int(sc["attrs"]["class"])] = sc

    test_indices = arrays["test_indices"].tolist()
    base = settings.seed_set
    done: dict[tuple[int, int], dict] = {}
    units, labels = [], []
    for r in range(replicates):
        rep_settings = settings if r == 0 else dataclasses.replace(settings, seed_set=base + r)
        for t, y in zip(test_indices, arrays["y_query"].tolist()):
            if y not in by_class:
                raise SimattrError(f"no score file for class {y} (test image {t}) among the inputs")
            unit = {"queries_path": queries, "scores_path": by_class[y]["path"],
                    "out_path": str(store.answer_path(answers_dir, t, r)), "test_index": t, "metric": metric,
                    "settings": rep_settings}
            prev = expected_answer(**unit, queries=loaded_queries, scores=by_class[y])
            if prev is not None:          # resume: an answer computed from these very inputs is kept
                done[(r, t)] = prev
                continue
            units.append(unit)
            labels.append(f"test image {t}" + (f" (seed set {base + r})" if r else ""))
    name = f"support-{settings.encoder}-{settings.ranker}-{metric}"
    if settings.engine == "bisection":
        need = math.ceil(math.log2(max(settings.k_max, 1)))
        if settings.bisection_steps < need:
            log.warning("%s: bisection_steps=%d < ceil(log2(k_max=%d))=%d: answers are upper bounds, not minima",
                        name, settings.bisection_steps, settings.k_max, need)
    if done:
        log.info("%s: %d of %d answers already computed with these settings; running %d", name, len(done),
                 len(test_indices) * replicates, len(units))
    size = max(1, launch.images_per_task)
    chunks = [units[i:i + size] for i in range(0, len(units), size)]
    chunk_labels = [", ".join(labels[i:i + size]) for i in range(0, len(units), size)]
    at_once = max(1, launch.answers_at_once)
    chunk_kw = {"at_once": at_once, "threads": max(1, launch.cpus_per_task // at_once), "name": name,
                "gpus": launch.gpus_per_node}
    fresh, failures = run_tasks(answer_chunk, [{"units": c, **chunk_kw} for c in chunks], chunk_labels, launch,
                                name=name, progress=progress, log=log)
    for got in fresh:
        for a in got or []:
            done[(a.get("seed_set", base) - base, a["test_index"])] = a
    if failures:
        for f in failures:
            log.error("%s", f)
        raise SimattrError(f"{len(failures)} of {len(chunks)} support tasks failed; first: {failures[0]}")
    answers = [done[(0, t)] for t in test_indices]
    gather = {"dataset": settings.dataset, "encoder": settings.encoder, "ranker": settings.ranker,
              "metric": metric, "k_max": max(a["k_max"] for a in answers), "settings": settings.identity(),
              "seed_sets": [base + r for r in range(replicates)],
              "wall_s": round(time.perf_counter() - t0, 3), "answers": answers}
    if replicates > 1:
        gather["replicates"] = [[done[(r, t)] for t in test_indices] for r in range(1, replicates)]
    store.write_json(gather_out, gather)
    every = [a for (_, _), a in done.items()]
    log.info("%s: %d answers x %d seed sets (%d flipped within k_max in seed set %d), %d models trained, %.1f s",
             name, len(answers), replicates, sum(a["support"] is not None for a in answers), base,
             sum(a["trainings"] for a in every), time.perf_counter() - t0)
    return gather
