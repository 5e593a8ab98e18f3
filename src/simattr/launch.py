"""Fan work out through submitit: one array task per unit (a test image), on `local`, `debug` or `slurm`.

`local` starts one process per task; submitit itself would start them all at once, so tasks are fed to it
`parallelism` at a time. `slurm` submits one job array (slurm_array_parallelism caps what runs at once).
`debug` runs every task in this process (for tests and pdb).

Every task is a submitit Checkpointable: when SLURM preempts it or its time limit comes near (submitit asks
for USR2 `signal_delay_s` seconds before), the task is requeued with the same arguments, up to
`max_requeues` times for time limits (preemptions and `scontrol requeue` do not count). The work itself is
resumable (support answers keep a journal of every model they trained), so a requeued task redoes nothing.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from submitit.helpers import Checkpointable as _Checkpointable
from tqdm import tqdm

CLUSTERS = ("local", "debug", "slurm")


@dataclass(frozen=True)
class LaunchSettings:
    cluster: str = "local"
    folder: str = "submitit"
    parallelism: int = 2
    timeout_min: int = 60
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float = 4.0
    slurm_partition: str | None = None
    signal_delay_s: int = 90
    max_requeues: int = 3
    images_per_task: int = 1


@dataclass
class Failure:
    label: str
    error: str
    log: str

    def __str__(self) -> str:
        return f"{self.label}: {self.error} (log: {self.log})"


class _Task(_Checkpointable):
    """Picklable callable: limit BLAS and torch threads to the task's cores, then call fn(**kwargs).
    Checkpointable: on preemption or near its time limit it is requeued as it was called (the work resumes
    itself)."""

    def __init__(self, fn: Callable[..., Any], threads: int):
        self.fn, self.threads = fn, threads

    def __call__(self, kwargs: dict) -> Any:
        import os
        import sys

        from threadpoolctl import threadpool_limits

        # threadpool_limits reaches only the libraries loaded now; torch is usually imported later, inside fn,
        # and would size its pool from OMP_NUM_THREADS (Snakemake sets it to the whole support job's threads)
        old_env, torch = os.environ.get("OMP_NUM_THREADS"), sys.modules.get("torch")
        old_torch = torch.get_num_threads() if torch is not None else None
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        if torch is not None:
            torch.set_num_threads(self.threads)
        try:
            with threadpool_limits(limits=self.threads):
                return self.fn(**kwargs)
        finally:                                  # `debug` runs tasks in this process: leave it as it was
            if old_env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old_env
            if old_torch is not None:
                torch.set_num_threads(old_torch)


def _executor(s: LaunchSettings, name: str):
    import submitit

    if s.cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster '{s.cluster}'; valid: {', '.join(CLUSTERS)}")
    ex = submitit.AutoExecutor(folder=s.folder, cluster=s.cluster, slurm_max_num_timeout=s.max_requeues)
    params: dict[str, Any] = {"name": name, "timeout_min": s.timeout_min}
    if s.cluster == "slurm":
        if s.signal_delay_s >= s.timeout_min * 60:
            raise ValueError(f"launch.signal_delay_s ({s.signal_delay_s}) must be shorter than the time limit "
                             f"(launch.timeout_min = {s.timeout_min} min)")
        params.update(cpus_per_task=s.cpus_per_task, gpus_per_node=s.gpus_per_node, mem_gb=s.mem_gb,
                      slurm_array_parallelism=s.parallelism, slurm_signal_delay_s=s.signal_delay_s)
        if s.slurm_partition:
            params["slurm_partition"] = s.slurm_partition
    ex.update_parameters(**params)
    return ex


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")


def _error_line(text: str) -> str | None:
    """The last 'SomeError: message' line of a traceback."""
    found = [m.group(1) for ln in text.splitlines() if (m := _ERROR_LINE.match(ln.strip()))]
    return found[-1] if found else None


def _failure(job, label: str) -> Failure | None:
    exc = job.exception()
    if exc is None:
        return None
    log = str(job.paths.stderr) if hasattr(job, "paths") else ""
    msg = _error_line(str(exc))
    if msg is None and log and Path(log).exists():
        msg = _error_line(Path(log).read_text(errors="replace"))
    if msg is None:
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return Failure(label=label, error=msg, log=log)


def run_tasks(fn: Callable[..., Any], units: list[dict], labels: list[str], settings: LaunchSettings, *,
              name: str, progress: bool = True, log=None) -> tuple[list[Any], list[Failure]]:
    """Run fn(**unit) for every unit as one array task each; wait; return (results, failures).

    Results of failed units are None. Failures carry the task's log path.
    """
    task = _Task(fn, settings.cpus_per_task)
    results: list[Any] = [None] * len(units)
    failures: list[Failure] = []
    if not units:
        return results, failures
    ex = _executor(settings, name)
    bar = tqdm(total=len(units), desc=name, unit="task", disable=not progress)

    def collect(i, job):
        f = _failure(job, labels[i])
        if f is None:
            results[i] = job.result()
        else:
            failures.append(f)
            if log:
                log.error("task failed: %s", f)
        bar.update(1)

    if settings.cluster == "debug":
        for i, u in enumerate(units):
            collect(i, ex.submit(task, u))
    elif settings.cluster == "slurm":
        jobs = ex.map_array(task, units)
        if log:
            log.info("submitted array %s with %d tasks", jobs[0].job_id.split("_")[0], len(jobs))
        pending = dict(enumerate(jobs))
        while pending:
            for i in [i for i, j in pending.items() if j.done()]:
                collect(i, pending.pop(i))
            time.sleep(1.0)
    else:  # local: feed at most `parallelism` processes at a time
        queue = list(range(len(units)))
        running: dict[int, Any] = {}
        while queue or running:
            while queue and len(running) < max(1, settings.parallelism):
                i = queue.pop(0)
                running[i] = ex.submit(task, units[i])
            for i in [i for i, j in running.items() if j.done()]:
                collect(i, running.pop(i))
            time.sleep(0.05)
    bar.close()
    return results, failures
