"""`simattr calibrate`: the retrained model timed on this machine, as the support stage trains it; the plan reads
the calibration file it writes."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import accel, datasets, models, store
from ..datasets import Spec
from ..errors import SimattrError
from ..support.answer import Settings as SupportSettings
from ..support.bank import Journal, ModelBank
from .estimate import (
    CALIBRATION,
    recipe_hash,
)


# ------------------------------------------------------------------------------------------- calibration
def calibration_path(results: str, dataset: str) -> Path:
    return Path(results) / store.fill(CALIBRATION, dataset=dataset)


def _task_start_s(X_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray) -> float:
    """What a support task pays besides its models' training: one local submitit task (simattr.launch.run_tasks, as
    the support stage runs it) that reads a queries file holding this training set, trains 3 one-step models
    (journaled, synced), fits the answer's curve with its posterior draws and writes it: the median of 3 tasks."""
    from ..launch import LaunchSettings, run_tasks  # submitit
    from ..support.stage import answer_chunk      # submitit (simattr.launch)

    n_classes = int(y_train.max()) + 1
    label = int(y_train[0])
    with tempfile.TemporaryDirectory(prefix="simattr-calibrate-") as d:
        q, f = Path(d) / "queries.h5", Path(d) / "scores.h5"
        store.write_arrays(q, {"X_train": X_train, "y_train": y_train, "test_indices": np.array([0]),
                               "X_query": x_query[None], "y_query": np.array([label]),
                               "flip_class": np.array([(label + 1) % n_classes]),
                               "full_correct": np.ones((1, 1), np.uint8)}, {"n_classes": n_classes})
        same = np.flatnonzero(y_train == label)
        store.write_scores(f, test_indices=np.array([0]), train_indices=same,
                           scores=np.linspace(1, 0, len(same), dtype=np.float32)[None],
                           topk=same[None, :8], attrs={"class": label, "encoder": "calibrate", "ranker": "calibrate"})
        settings = SupportSettings.from_settings({
            "dataset": "calibrate", "encoder": "calibrate", "ranker": "calibrate", "k_max": 8, "threshold": 0.5,
            "seed_set": 1, "engine": "adaptive", "seeds_min": 3, "seeds_max": 3, "max_models": 3, "confidence": 0.9,
            "model": {"name": "mlp", "hidden": 4, "steps": 1, "lr": 0.01, "weight_decay": 0.0}})
        unit = {"queries_path": str(q), "scores_path": str(f), "test_index": 0, "metric": "removal",
                "settings": settings}
        launch = LaunchSettings.of(cluster="local", parallelism=1, folder=str(Path(d) / "submitit"))
        times = []
        for i in range(3):
            t0 = time.perf_counter()
            _, failed = run_tasks(answer_chunk, [{"units": [{**unit, "out_path": str(Path(d) / f"{i}.json")}],
                                                  "name": "calibrate"}], ["calibrate"], launch,
                                  name="calibrate", progress=False)
            if failed:
                raise SimattrError(f"calibrate: the timed support task failed: {failed[0]}")
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _bank_time(X: np.ndarray, y: np.ndarray, x_query: np.ndarray, recipe, n: int) -> float:
    """Seconds per model as the support stage trains them: support.bank.ModelBank.ensure, one model at a time, each
    journaled (flushed and synced) on disk; the median of n after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="simattr-calibrate-") as d:
        ranking = np.flatnonzero(y == y[0])
        bank = ModelBank(X_train=X, y_train=y, x_query=x_query, label=int(y[0]), ranking=ranking,
                         metric="removal", flip_class=None, n_classes=int(y.max()) + 1, recipe=recipe,
                         dataset="calibrate", test_index=0, seed_set=1,
                         journal=Journal(Path(d) / "j.jsonl", "calibrate"))
        bank.ensure(1, [0])                                     # warm-up
        times = []
        for i in range(1, n + 1):
            t0 = time.perf_counter()
            bank.ensure(1, [i])
            times.append(time.perf_counter() - t0)
        bank.journal.close()
    return float(np.median(times))


def calibrate(settings: dict, *, device: str = "auto", out: str | None = None, steps: int = 4,
              log=None) -> dict:
    """Time the config's retrained model on this machine, as the support stage trains it (models.train_predict,
    one model at a time, on `device`), for a bounded slice, and extrapolate to a whole model; write it atomically
    (default: the results folder's plan/calibration.json).

    mlp: the whole recipe on the whole training set (digits-size: a fraction of a second), one warm-up model, then
    the median of 3. CNNs: a warm-up model of 1 SGD step on one batch, then 1 and `steps` steps (one epoch of a
    subset of 1 and `steps` batches); the time per step is their difference / (steps - 1), the rest is the model's
    fixed cost (building, the prediction); a whole model is fixed + epochs x steps per epoch of the full training
    set x time per step."""
    spec = Spec.from_settings(settings["dataset"], where="calibrate dataset")
    recipe = models.Recipe.from_settings(settings["model"], where="calibrate model")
    dev_name = "cpu"
    if recipe.name in models.CNN_MODELS or device != "auto":
        dev = accel.device(None if device == "auto" else device)
        dev_name = str(dev)
    else:
        dev = None
    tr = datasets.load_split(spec, "train")
    te = datasets.load_split(spec, "test")
    n, c = len(tr), len(tr.class_names)
    if recipe.name == "mlp":
        X, Xq = models.prepare_inputs(recipe, tr.images, te.images[:1])
        per_model = _bank_time(X, tr.labels, Xq[0], recipe, 5)
        how = (f"{recipe.steps} full-batch steps on all {n:,} training images as support.ModelBank trains them "
               "(journaled, synced), median of 5 models after a warm-up")
        gpu_name = None
        task_inputs = (X, tr.labels, Xq[0])
    else:
        bs = min(int(recipe.batch_size), n)
        per_epoch = max(1, n // bs) if n >= bs else 1
        steps = max(2, min(int(steps), per_epoch))
        rng = np.random.default_rng(0)
        order = rng.permutation(n)
        streamed = recipe.name in models.STREAMED_MODELS

        def inputs(k):
            idx = np.sort(order[:k * bs])
            if streamed:
                return tr.take(idx), te.take(np.arange(1))
            Xa, Xq = models.prepare_inputs(recipe, tr.load(idx), te.load(np.arange(1)))
            return Xa, Xq

        def timed(k, seed):
            X, Xq = inputs(k)
            r = dataclasses.replace(recipe, epochs=1)
            t0 = time.perf_counter()
            models.train_predict_cnn(X, tr.labels[np.sort(order[:k * bs])], Xq, seed, c, r, device=dev)
            if dev is not None and dev.type == "cuda":
                import torch

                torch.cuda.synchronize()
            return time.perf_counter() - t0

        timed(1, 0)                               # warm-up: kernels, cuDNN autotuning, allocator
        t1, tk = timed(1, 1), timed(steps, 2)
        per_step = max((tk - t1) / (steps - 1), 1e-9)
        fixed = max(t1 - per_step, 0.0)
        per_model = fixed + recipe.epochs * per_epoch * per_step
        how = (f"{steps} SGD steps of batch {bs} against 1 (after a warm-up): {per_step:.4g} s per step, "
               f"{fixed:.3g} s fixed; x {recipe.epochs} epochs x {per_epoch} steps per epoch of {n:,} images")
        if streamed:
            how += " (decoded in the training process: the support tasks' DataLoader workers may be faster)"
        gpu_name = None
        if dev is not None and dev.type == "cuda":
            import torch

            gpu_name = torch.cuda.get_device_name(dev)
        flat = tr.load(np.sort(order[:min(n, 4 * bs)])).reshape(min(n, 4 * bs), -1).astype(np.float32)
        task_inputs = (flat, tr.labels[np.sort(order[:min(n, 4 * bs)])], flat[0])
    start = _task_start_s(*task_inputs)
    result = {"dataset": spec.name, "model": recipe.name, "device": dev_name, "gpu": gpu_name,
              "recipe_hash": recipe_hash(settings["dataset"], settings["model"]),
              "time_per_model_s": round(per_model, 6), "task_start_s": round(start, 4), "how": how,
              "cpus": len(os.sched_getaffinity(0)), "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(out) if out else calibration_path(settings["results"], spec.name)
    store.write_json(path, result)
    if log:
        log.info("calibration written to %s", path)
    return {**result, "path": str(path)}
