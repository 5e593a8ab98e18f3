"""The plan's arithmetic: the data's shape, the models' sizes, the score jobs' peak memory, and the jobs, bytes,
models and hours of every stage (make_plan)."""
from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import config as sconfig
from .. import datasets, scoring, store
from ..backbones import feature_width
from ..datasets import CIFAR_FILES, CIFAR_FOLDER, CIFAR_URL, Spec
from ..errors import SimattrError

PLAN_VERSION = 1
CALIBRATION = "{dataset}/plan/calibration.json"     # simattr calibrate's output, where the plan looks for it
STAGES = ("embed", "score", "queries", "trak", "subsets", "support", "lds", "report")
#: the workflow's rules (Snakemake's Job stats names) by stage
RULE_STAGE = {"train_encoder": "embed", "import_resnet": "embed", "embed_shard": "embed",
              "embed_index": "embed", "score": "score", "score_model": "score", "score_external": "score",
              "queries": "queries", "trak_checkpoints": "trak", "trak": "trak", "subsets": "subsets",
              "support": "support", "lds": "lds", "report_manifest": "report", "report": "report",
              "method_figures": "report", "all": "report", "export": "score", "outside_scores": "score"}

ANSWER_BYTES = 6_000            # an answer's JSON (its curve, probes, intervals): measured 3-8 KB on digits
JOURNAL_BYTES_PER_MODEL = 110   # one journal line per model
# The adaptive engine's models per answer, when no earlier run is there to read: a censored answer (not flipped at
# k_max) stops after its first probe; a found one narrows its bracket from k_max down to one image, about
# 1 + ceil(log2 k_max) probes, within max_models. A probe starts with seeds_min models and adds two at a time while its
# decision is uncertain, up to seeds_max: EXTRA_SEEDS is the measured share of (seeds_max - seeds_min) a probe adds on
# average. What is not known before the run is the share of answers found: FOUND_SHARE. Both measured on two digits
# runs of the engine of commit 27f2d87 (config/test.yaml: 7 methods x 4 images x 2 seed sets, seeds 3-5, max_models
# 16; config/config.yaml, the demo: 5 methods x 30 images, seeds 3-9, max_models 40): found removal 133 of 206,
# mislabel 143 of 206; the demo's found answers trained 4.3 (removal) and 3.5 (mislabel) models per probe over 8.2
# and 6.8 probes, its censored ones 3.9 and 4.2 models in one probe. The model then expects 5,850 models where the
# demo trained 6,433 (-9%) and 1,322 where the test config trained 1,224 (+8%).
EXTRA_SEEDS = 0.15
FOUND_SHARE = {"removal": 0.65, "mislabel": 0.69}
FOUND_SOURCE = ("share of answers found within k_max and seeds added per probe measured on two digits runs "
                "(config/test.yaml and config/config.yaml: 412 answers)")
HOW_TO_TIME = "run `simattr calibrate --config FILE` on the machine that will train, or pass --time-per-model SECONDS"


# ------------------------------------------------------------------------------------------------ the data
@dataclass(frozen=True)
class DataShape:
    """What the plan needs of a dataset: images per class in each split and the image shape."""
    train: tuple[int, ...]
    test: tuple[int, ...]
    image: tuple[int, int, int]

    @property
    def n_train(self) -> int:
        return int(sum(self.train))

    @property
    def n_test(self) -> int:
        return int(sum(self.test))

    @property
    def classes(self) -> int:
        return len(self.train)


def _counts(labels, n_classes: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes))


def _cifar_labels(root: str, split: str) -> list[int]:
    """The labels of a CIFAR-10 split from its batch files (the pickles read with the standard library: no
    torchvision); a missing file is one line naming it."""
    folder = Path(root) / CIFAR_FOLDER
    missing = [f for f in CIFAR_FILES["train"] + CIFAR_FILES["test"] if not (folder / f).is_file()]
    if missing:
        raise SimattrError(f"dataset.root={root}: expected {folder}/ (extract {CIFAR_URL} into {root}); missing: "
                           f"{', '.join(missing)}")
    labels: list[int] = []
    for name in CIFAR_FILES[split]:
        try:
            with open(folder / name, "rb") as f:
                labels += list(pickle.load(f, encoding="latin1")["labels"])
        except Exception as e:  # noqa: BLE001 - one line naming the file
            raise SimattrError(f"{folder / name}: not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    return labels


def data_shape(spec) -> DataShape:
    """Class sizes and image shape of a dataset (datasets.Spec): digits from scikit-learn, CIFAR-10 from its batch
    files' labels, image folders listed (never decoded)."""
    if spec.name == "cifar10":
        tr, te = (_cifar_labels(spec.root, s) for s in datasets.SPLITS)
        return DataShape(_counts(tr, 10), _counts(te, 10), (3, 32, 32))
    splits = [datasets.load_split(spec, s) for s in datasets.SPLITS]
    c = len(splits[0].class_names)
    size = (1, 8, 8) if spec.name == "digits" else (3,) + (spec.image_size or datasets.DEFAULT_IMAGE_SIZE,) * 2
    return DataShape(_counts(splits[0].labels, c), _counts(splits[1].labels, c), size)


# --------------------------------------------------------------------------------------------- the models
def param_count(model: dict, shape: DataShape) -> int:
    """Parameters (and BatchNorm statistics) of the retrained model: its checkpoints' size / 4 bytes."""
    c = shape.classes
    if model["name"] == "mlp":
        d, h = int(np.prod(shape.image)), int(model["hidden"])
        return d * h + h + h * c + c
    if model["name"] == "resnet9":
        convs = [(shape.image[0], 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512), (512, 512),
                 (512, 512)]
        return sum(9 * ci * co + 4 * co for ci, co in convs) + 512 * c
    return 11_176_512 + 9_600 + 513 * c          # torchvision's resnet18 (11,689,512 at 1,000 classes) + BN stats


def feature_dim(encoder: str, encoders: dict, shape: DataShape) -> int:
    if encoder == "pixels":
        return int(np.prod(shape.image))
    e = encoders.get(encoder, {})
    if encoder == "simclr":
        return 512 if e.get("arch") == "resnet18" else int(e["feature_dim"])
    if encoder == "supervised":
        return int(e["hidden"])
    return feature_width(e["arch"], e["feature"])


def _bisection_steps(k_max: int, steps: int) -> int:
    return min(int(steps), math.ceil(math.log2(k_max)) if k_max > 1 else 0)


def answer_bound(s: dict, metric: str, k_max: int, seed_set: int) -> int:
    """The most models one answer can train (support.search.Bank.trainings never exceeds it)."""
    if s["engine"] == "adaptive":
        return int(s["max_models"])
    seeds = int(s["seeds"])
    probes = 2 + _bisection_steps(k_max, s[metric]["bisection_steps"]) + int(s["monotone_checks"])
    free = min(seeds, int(s["flip_models"])) if seed_set == 0 else 0      # k = 0: the full-data models
    return seeds * probes - free


def earlier_answers(results: str, dataset: str, methods, metrics) -> list[dict]:
    """The support answers an earlier run left in the results folder (every replicate), as {metric, trainings,
    wall_s, engine, max_models}."""
    out = []
    for e, r in methods:
        for m in metrics:
            d = Path(results) / store.fill(store.SUPPORT_DIR, dataset=dataset, encoder=e, ranker=r, metric=m)
            if not d.is_dir():
                continue
            for p in sorted(d.glob("*.json")):
                try:
                    a = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(a, dict) and "trainings" in a:
                    out.append({"metric": m, "trainings": int(a["trainings"]), "wall_s": float(a.get("wall_s", 0)),
                                "engine": a.get("engine")})
    return out


# ------------------------------------------------------------------------------------------ peak memory
# ---------------------------------------------------------------------------------------------- the plan
def time_per_model(*, given: float | None, calibration: dict | None, answers: list[dict]) -> dict:
    """{seconds, source, task_start_s}: --time-per-model, else the calibration, else an earlier run's answers,
    else unknown (seconds None)."""
    start = calibration.get("task_start_s") if calibration else None
    if given is not None:
        if not given > 0:
            raise SimattrError(f"--time-per-model must be > 0 seconds (got {given})")
        return {"seconds": float(given), "source": "given (--time-per-model)", "task_start_s": start}
    if calibration:
        return {"seconds": float(calibration["time_per_model_s"]), "task_start_s": start,
                "source": f"calibration {calibration['path']} ({calibration['device']}, {calibration['how']})"}
    trained = sum(a["trainings"] for a in answers)
    if trained:
        return {"seconds": sum(a["wall_s"] for a in answers) / trained, "task_start_s": None,
                "source": f"an earlier run's support answers ({len(answers)} answers, {trained} models; their wall "
                          "seconds per model trained, search overhead included)"}
    return {"seconds": None, "source": "unknown: " + HOW_TO_TIME, "task_start_s": None}


def read_calibration(path: str | os.PathLike, want_hash: str) -> dict | None:
    """The calibration file when it is there and made for this recipe and dataset (else None)."""
    p = Path(path)
    if not p.is_file():
        return None
    c = store.read_json(p)
    if not isinstance(c, dict) or "time_per_model_s" not in c:
        raise SimattrError(f"{p}: not a calibration file (no time_per_model_s); rerun simattr calibrate")
    return {**c, "path": str(p)} if c.get("recipe_hash") == want_hash else None


def recipe_hash(dataset: dict, model: dict) -> str:
    """What a calibration is valid for: the recipe and the dataset it trains on."""
    return store.config_hash({"dataset": dataset, "model": model})


def make_plan(settings: dict, launch: dict, *, time_per_model_s: float | None = None,
              calibration_path: str | None = None, history: bool = True, shape: DataShape | None = None) -> dict:
    """The plan of a run (settings: settings.for_job('plan', config); launch: the config's `launch`). `shape`: the
    dataset's class sizes when known without its files (else read off the dataset: data_shape)."""
    spec = Spec.from_settings(settings["dataset"], where="plan dataset")
    shape = shape or data_shape(spec)
    methods = [tuple(m) for m in settings["methods"]]
    s, model = settings["support"], settings["model"]
    cnn = model["name"] in ("resnet9", "resnet18")
    gpu = cnn and int(launch.get("gpus_per_node", 0)) > 0
    threads = int(launch.get("cpus_per_task", 1)) if cnn else 1
    dataset, results = spec.name, settings["results"]
    rhash = recipe_hash(settings["dataset"], model)
    calib_file = calibration_path or str(Path(results) / store.fill(CALIBRATION, dataset=dataset))
    calibration = read_calibration(calib_file, rhash)
    answers = earlier_answers(results, dataset, methods, s["metrics"]) if history else []
    tpm = time_per_model(given=time_per_model_s, calibration=calibration, answers=answers)
    if time_per_model_s is None and calibration and gpu and not str(calibration.get("device")).startswith("cuda"):
        tpm["source"] += "; NOTE: measured on the CPU, but this config trains on GPUs (calibrate on a GPU node)"
    t = tpm["seconds"]

    rules: dict[str, int] = {}
    rows: dict[str, dict] = {st: {"stage": st, "jobs": 0, "tasks": 0, "models_bound": 0, "models_expected": 0,
                                  "model_s": 0.0, "overhead_s": 0.0, "peak_bytes": 0, "bytes": 0, "gpu": False,
                                  "notes": []} for st in STAGES}

    def add(rule: str, jobs: int, **kw) -> None:
        if jobs <= 0:
            return
        rules[rule] = rules.get(rule, 0) + jobs
        row = rows[RULE_STAGE[rule]]
        row["jobs"] += jobs
        for k, v in kw.items():
            row[k] = max(row[k], v) if k == "peak_bytes" else (row[k] or v) if k == "gpu" else row[k] + v

    enc_used = sorted({e for e, _ in methods if e not in ("model", "external")})
    ckpt = settings["encoders"].get("resnet", {}).get("checkpoint")
    if "resnet" in enc_used and not (ckpt and Path(ckpt).is_file()):
        raise SimattrError(f"encoders.resnet.checkpoint={ckpt}: " + ("not a file (a local checkpoint; nothing is "
                           "downloaded)" if ckpt else "required by a method with encoder resnet"))
    shard = int(settings["embed"]["shard_size"])
    nbytes = 2 if settings["embed"]["float16"] else 4
    for e in enc_used:
        dim = feature_dim(e, settings["encoders"], shape)
        if e in sconfig.TRAINED_ENCODERS:
            add("train_encoder", 1)
        if e == "resnet":
            add("import_resnet", 1)
        for n in (shape.n_train, shape.n_test):
            ranges = store.shard_ranges(n, shard)
            biggest = max((b - a for a, b in ranges), default=0)
            add("embed_shard", len(ranges), bytes=n * (dim * nbytes + 16), peak_bytes=biggest * dim * 4)
        add("embed_index", 2)

    conditioned = settings["score"]["class_conditioned"]
    feature_scored = False
    topk = int(settings["score"]["topk"])
    for e, r in methods:
        rule = "score_model" if e == "model" else "score_external" if e == "external" else "score"
        dim = feature_dim(e, settings["encoders"], shape) if rule == "score" else 0
        for c in range(shape.classes):
            m, n = shape.test[c], shape.train[c] if conditioned else shape.n_train
            b = m * n * 4 + m * min(topk, n) * 8 + (m + n) * 8
            if r in sconfig.SIGNED_RANKERS or e == "external":     # full_scores m x n_train
                b += m * shape.n_train * 4
            if rule == "score":
                peak = scoring.peak_bytes(r, n_queries=m, n_candidates=n, n_train=shape.n_train,
                                          n_test=shape.n_test, dim=dim, n_classes=shape.classes,
                                          chunk_size=int(settings["chunk_size"]))
                feature_scored = True
            else:       # the model-based / external scores read whole: the (n_test, n_train) matrix
                peak = shape.n_test * shape.n_train * 4 + m * shape.n_train * 4
            add(rule, 1, bytes=b, peak_bytes=peak)
    made = settings["made"]
    if made:        # outside methods the workflow makes from the export (rule outside_scores): their own cost
        add("export", 1, bytes=shape.n_test * shape.n_train + shape.n_train * 16)
        add("outside_scores", len(made), bytes=len(made) * shape.n_test * shape.n_train * 4)
        rows["score"]["notes"].append(f"{len(made)} outside method(s) made by their command ({', '.join(made)}): "
                                      "their time is theirs (each writes a cost sidecar), not estimated here")

    per_model = param_count(model, shape) * 4
    resident = shape.n_train * (int(np.prod(shape.image)) * (4 if model["name"] == "mlp" else 2)) \
        if model["name"] != "resnet18" else 0
    flip = int(s["flip_models"])
    add("queries", 1, models_bound=flip, models_expected=flip, bytes=resident + shape.n_test * 16, gpu=gpu,
        peak_bytes=resident + per_model)
    rankers = {r for e, r in methods if e == "model"}      # an external method's name is no ranker
    if "trak" in rankers:
        k = int(settings["trak"]["checkpoints"])
        add("trak_checkpoints", 1, models_bound=k, models_expected=k, bytes=k * per_model, gpu=gpu,
            peak_bytes=resident + per_model)
        add("trak", 1, bytes=shape.n_test * shape.n_train * 4, gpu=gpu,
            peak_bytes=resident + shape.n_test * shape.n_train * 4)
    for purpose in ("datamodels", "lds"):
        p = settings[purpose]
        if p is None or int(p["models"]) == 0:
            continue
        n_models = int(p["models"])
        shards = store.shard_ranges(n_models, int(p["shard_size"]))
        add("subsets", len(shards), models_bound=n_models, models_expected=n_models, gpu=gpu,
            bytes=n_models * (math.ceil(shape.n_train / 8) + shape.n_test * 4 + shape.n_test * 12),
            peak_bytes=resident + per_model + int(p["shard_size"]) * shape.n_test * 4)
        rows["subsets"]["notes"].append(f"{purpose}: {n_models} models in {len(shards)} jobs")

    per_task = max(1, int(launch.get("images_per_task", 1)))
    longest = max(shape.train) if conditioned else shape.n_train
    fractions, basis = _expected_fractions(s, answers)
    replicates = int(s["replicates"])
    for e, r in methods:
        for metric in s["metrics"]:
            k_max = min(int(s[metric]["k_max"]), longest)
            n_answers = int(s["n_test"]) * replicates
            bound = sum(answer_bound(s, metric, k_max, int(s["seed_set"]) + rep) for rep in range(replicates)) \
                * int(s["n_test"])
            if fractions is not None:
                expected = round(fractions[metric] * bound)
            else:
                expected = round(min(int(s["max_models"]), adaptive_expected(s, metric, k_max, FOUND_SHARE[metric]))
                                 * n_answers)
            tasks = math.ceil(n_answers / per_task)
            add("support", 1, tasks=tasks, models_bound=bound, models_expected=expected, gpu=gpu,
                bytes=n_answers * ANSWER_BYTES + bound * JOURNAL_BYTES_PER_MODEL,
                peak_bytes=resident + per_model)
    rows["support"]["notes"].append(basis)
    rows["score"]["notes"].append("peak memory per job: scoring.peak_bytes" if feature_scored else
                                  "peak memory per job: the scores read whole")
    if settings["lds"] and int(settings["lds"]["models"]) > 0:
        add("lds", len(methods), peak_bytes=int(settings["lds"]["models"]) * shape.n_test * 4
            + shape.n_test * shape.n_train * 4)
    add("report_manifest", 1)
    add("report", 1)
    add("method_figures", len(methods))
    add("all", 1)

    parallelism = max(1, int(launch.get("parallelism", 1)))
    start = tpm["task_start_s"]
    out_rows = []
    for st in STAGES:
        row = rows[st]
        if not row["jobs"]:
            continue
        models = row["models_expected"]
        wall = None
        if t is not None and (models or st not in ("queries", "trak", "subsets", "support")):
            if st == "support":       # a support job waits for its tasks, `parallelism` running at once
                wall = (models * t + (start or 0.0) * row["tasks"]) / parallelism + (start or 0.0) * row["jobs"]
            elif models:        # each job starts a process and reads its data (about a support task's start)
                wall = models * t + (start or 0.0) * row["jobs"]
        out_rows.append({
            "stage": st, "jobs": row["jobs"], "tasks": row["tasks"], "models_bound": row["models_bound"],
            "models_expected": row["models_expected"],
            "device": ("gpu" if row["gpu"] else "cpu") if row["models_bound"] else "-",
            "wall_s": None if wall is None else round(wall, 3),
            "gpu_h": None if wall is None else round((models * t / 3600 if row["gpu"] else 0.0), 4),
            "cpu_h": None if wall is None else round(models * t * threads / 3600 if models else 0.0, 4),
            "peak_bytes": int(row["peak_bytes"]), "bytes": int(row["bytes"]), "notes": row["notes"]})
    totals = {k: sum(r[k] for r in out_rows) for k in ("jobs", "tasks", "models_bound", "models_expected",
                                                       "peak_bytes", "bytes")}
    totals["peak_bytes"] = max(r["peak_bytes"] for r in out_rows)
    for k in ("wall_s", "gpu_h", "cpu_h"):
        vals = [r[k] for r in out_rows if r[k] is not None]
        totals[k] = round(sum(vals), 4) if t is not None else None
    return {
        "plan_version": PLAN_VERSION, "dataset": dataset, "classes": shape.classes, "n_train": shape.n_train,
        "n_test": shape.n_test, "image_shape": list(shape.image), "model": model["name"],
        "answers": len(methods) * len(s["metrics"]) * int(s["n_test"]) * replicates, "engine": s["engine"],
        "time_per_model_s": t, "time_source": tpm["source"], "task_start_s": start,
        "expected_basis": basis, "parallelism": parallelism, "rules": rules, "stages": out_rows, "total": totals,
        "calibration": calib_file if calibration else None, "recipe_hash": rhash,
        "wall_note": "wall: job-seconds summed over a stage's jobs (the report's 'spent wall' is the same sum); "
                     "a support job's is its tasks' time / launch.parallelism plus its start, a retraining job's its "
                     "models' time plus its start; only stages that retrain models are timed, other stages show '-'"}


def adaptive_expected(s: dict, metric: str, k_max: int, found_share: float) -> float:
    """Expected models of one adaptive answer: found_share x a found answer's (1 + ceil(log2 k_max)) probes, within
    max_models, + the rest x a censored answer's one probe; a probe's models are seeds_min plus EXTRA_SEEDS of
    (seeds_max - seeds_min)."""
    seeds = int(s["seeds_min"]) + EXTRA_SEEDS * max(0, int(s["seeds_max"]) - int(s["seeds_min"]))
    cap = int(s["max_models"])
    found = min(cap, seeds * (1 + (math.ceil(math.log2(k_max)) if k_max > 1 else 0)))
    return found_share * found + (1.0 - found_share) * min(cap, seeds)


def _expected_fractions(s: dict, answers: list[dict]) -> tuple[dict | None, str]:
    """Expected models per answer as a fraction of max_models per metric (an earlier run's means), or None (the
    model of adaptive_expected), and what it rests on."""
    if s["engine"] == "bisection":
        return {m: 1.0 for m in s["metrics"]}, ("bisection: expected = the bound (every probe trains its seeds; "
                                                "early stopping and censored answers train fewer)")
    mine = [a for a in answers if a["engine"] == "adaptive"]
    if mine and all(any(a["metric"] == m for a in mine) for m in s["metrics"]):
        cap = int(s["max_models"])
        out = {m: float(np.mean([a["trainings"] for a in mine if a["metric"] == m])) / cap for m in s["metrics"]}
        means = ", ".join(f"{m} {out[m] * cap:.1f}" for m in out)
        return out, (f"adaptive: the mean models per answer of an earlier run's {len(mine)} answers in the results "
                     f"folder ({means})")
    shares = ", ".join(f"{m} {FOUND_SHARE[m]:.2f}" for m in s["metrics"])
    return None, (f"adaptive: a found answer narrows k_max to one image (1 + ceil(log2 k_max) probes, within "
                  f"max_models), a censored one stops at its first probe; a probe trains seeds_min + "
                  f"{EXTRA_SEEDS:.2f} x (seeds_max - seeds_min) models; {FOUND_SOURCE}: found {shares}")
