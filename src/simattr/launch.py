"""Fan work out through submitit: one array task per unit (a test image), on `local`, `debug` or `slurm`.

`local` starts one process per task; submitit itself would start them all at once, so tasks are fed to it
`parallelism` at a time; with `gpus_per_node` > 0 each gets that many of the machine's GPUs, spread evenly
(with more tasks running than GPUs, they share them). `slurm` submits one job array (slurm_array_parallelism caps what runs at once).
`debug` runs every task in this process (for tests and pdb).

Every task is a submitit Checkpointable: when SLURM preempts it or its time limit comes near (submitit asks
for USR2 `signal_delay_s` seconds before), the task is requeued with the same arguments, up to
`max_requeues` times for time limits (preemptions and `scontrol requeue` do not count). The work itself is
resumable (support answers keep a journal of every model they trained, and a CNN training saves its state every
`state_every_s` seconds at an epoch boundary: models.TrainingState), so a requeued task redoes at most the
epochs since the last save.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.helpers import Checkpointable as _Checkpointable
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import accel
from .config import defaults
from .models import STATE_EVERY_ENV
from .typed import typed_fields

CLUSTERS = ("local", "debug", "slurm")


@dataclass(frozen=True)
class LaunchSettings:
    """How array tasks run (the config's `launch` section, and the submitit folder). No defaults here: the
    schema has them (config.defaults)."""
    cluster: str
    folder: str
    parallelism: int
    timeout_min: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: float
    slurm_partition: str | None
    signal_delay_s: int
    max_requeues: int
    images_per_task: int
    answers_at_once: int       # of a task's images, answered at once in processes sharing its GPU
    state_every_s: float       # the least seconds between two saves of a CNN training's state

    @classmethod
    def from_settings(cls, d: dict, folder: str = "submitit", where: str = "launch") -> "LaunchSettings":
        """From the `launch` section (every key) and the folder of submitit's files."""
        keys = [k for k in cls.__dataclass_fields__ if k != "folder"]
        return cls(**{**typed_fields(cls, d, keys, where), "folder": folder,
                      "slurm_partition": d.get("slurm_partition") or None})

    @classmethod
    def of(cls, **fields) -> "LaunchSettings":
        """The schema's default launch settings with `fields` changed (folder among them)."""
        folder = fields.pop("folder", "submitit")
        return cls.from_settings({**defaults()["launch"], **fields}, folder)


@dataclass
class Failure:
    label: str
    error: str
    log: str

    def __str__(self) -> str:
        return f"{self.label}: {self.error} (log: {self.log})"


class Task(_Checkpointable):
    """Picklable callable: limit BLAS and torch threads to the task's cores, say which GPUs the task was given
    (accel: a network task that finds no usable CUDA then stops in one line), then call fn(**kwargs).
    `visible`: the CUDA_VISIBLE_DEVICES of a local task (the launcher spreads local tasks over the machine's
    GPUs). `state_every_s`: how often a CNN training of the task may save its state (models.STATE_EVERY_ENV;
    None: as this process has it). simattr's INFO lines (a resumed training, ...) go to the task's stderr (its
    submitit log) when nothing else handles them. Checkpointable: on preemption or near its time limit it is
    requeued as it was called (the work resumes itself)."""

    def __init__(self, fn: Callable[..., Any], threads: int, name: str = "task", gpus: int = 0,
                 visible: str | None = None, state_every_s: float | None = None):
        self.fn, self.threads, self.name, self.gpus, self.visible = fn, threads, name, gpus, visible
        self.state_every_s = state_every_s

    def __call__(self, kwargs: dict) -> Any:
        if self.visible is not None:              # before torch starts CUDA in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = self.visible
        # threadpool_limits reaches only the libraries loaded now; torch is usually imported later, inside fn,
        # and would size its pool from OMP_NUM_THREADS (Snakemake sets it to the whole support job's threads)
        old_env, torch = os.environ.get("OMP_NUM_THREADS"), sys.modules.get("torch")
        old_torch = torch.get_num_threads() if torch is not None else None
        old_every = os.environ.get(STATE_EVERY_ENV)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        if self.state_every_s is not None:
            os.environ[STATE_EVERY_ENV] = str(self.state_every_s)
        if torch is not None:
            torch.set_num_threads(self.threads)
        logger, handler = logging.getLogger("simattr"), None
        if not logger.hasHandlers():              # a submitit process: its stderr is the task's log
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            logger.addHandler(handler)
            old_level = logger.level
            logger.setLevel(logging.INFO)
        try:
            with accel.claimed(f"{self.name} task", self.gpus), threadpool_limits(limits=self.threads):
                return self.fn(**kwargs)
        finally:                                  # `debug` runs tasks in this process: leave it as it was
            for key, old in (("OMP_NUM_THREADS", old_env), (STATE_EVERY_ENV, old_every)):
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            if old_torch is not None:
                torch.set_num_threads(old_torch)
            if handler is not None:
                logger.removeHandler(handler)
                logger.setLevel(old_level)


class GpuSlots:
    """The GPUs local tasks are spread over: CUDA_VISIBLE_DEVICES's entries when it is set, else every device
    torch counts (at least `per_task`). Each task takes the `per_task` least-loaded ones, so with more tasks
    running than GPUs, tasks share GPUs evenly (several models per GPU)."""

    def __init__(self, per_task: int):
        env = accel.visible_devices()
        if env is not None and env.strip().lower() not in accel.NO_DEVICE:
            names = [x.strip() for x in env.split(",") if x.strip()]
        else:
            import torch     # only here: no CUDA_VISIBLE_DEVICES to read the GPUs from

            names = [str(i) for i in range(max(torch.cuda.device_count(), per_task))]
        if len(names) < per_task:
            raise ValueError(f"launch.gpus_per_node is {per_task} but this machine shows {len(names)} GPU(s) "
                             f"(CUDA_VISIBLE_DEVICES={env!r})")
        self.per_task, self.load = per_task, {n: 0 for n in names}

    def take(self) -> list[str]:
        order = sorted(self.load, key=lambda n: (self.load[n], list(self.load).index(n)))[:self.per_task]
        for n in order:
            self.load[n] += 1
        return order

    def give(self, names: list[str]) -> None:
        for n in names:
            self.load[n] -= 1


def _executor(s: LaunchSettings, name: str):
    if s.cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster '{s.cluster}'; valid: {', '.join(CLUSTERS)}")
    ex = submitit.AutoExecutor(folder=s.folder, cluster=s.cluster, slurm_max_num_timeout=s.max_requeues)
    params: dict[str, Any] = {"name": name, "timeout_min": s.timeout_min}
    if s.cluster == "local" and s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node       # the task itself sets which (GpuSlots)
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
    task = Task(fn, settings.cpus_per_task, name, settings.gpus_per_node, state_every_s=settings.state_every_s)
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
        slots = GpuSlots(settings.gpus_per_node) if settings.gpus_per_node else None
        held: dict[int, list[str]] = {}
        while queue or running:
            while queue and len(running) < max(1, settings.parallelism):
                i = queue.pop(0)
                if slots is not None:
                    held[i] = slots.take()
                    running[i] = ex.submit(Task(fn, settings.cpus_per_task, name, settings.gpus_per_node,
                                                 ",".join(held[i]), settings.state_every_s), units[i])
                else:
                    running[i] = ex.submit(task, units[i])
            for i in [i for i, j in running.items() if j.done()]:
                collect(i, running.pop(i))
                if slots is not None:
                    slots.give(held.pop(i))
            time.sleep(0.05)
    bar.close()
    return results, failures
