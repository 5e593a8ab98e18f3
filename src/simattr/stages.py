"""The pipeline's stages as plain functions (the CLI and the workflow rules call these).

Each stage reads its inputs through `store`, does its work, and writes its outputs atomically.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from . import datasets, store
from .errors import SimattrError

log = logging.getLogger("simattr")


def embed_settings(data: datasets.Spec, encoder: str, params: dict, seed: int) -> dict:
    return {**data.identity(), "encoder": encoder, "params": params, "seed": seed}


def train_encoder(*, data: datasets.Spec, encoder: str, params: dict, seed: int, out: str,
                  progress: bool = True) -> None:
    from . import encoders

    if encoder not in encoders.TRAINABLE:
        raise SimattrError(f"encoder '{encoder}' has no training step; trainable: {', '.join(encoders.TRAINABLE)}")
    t0 = time.perf_counter()
    if encoder == "resnet":                       # pretrained: the state is the checkpoint's backbone
        state, n = encoders.from_checkpoint(params, log=log), 0
    else:
        tr = datasets.load_split(data, "train")
        state = encoders.fit(encoder, tr.images, tr.labels, params, seed=seed, progress=progress, log=log)
        n = len(tr)
    state["settings"] = json.dumps(embed_settings(data, encoder, params, seed), sort_keys=True)
    encoders.save_state(state, out)
    log.info("%s state from %d train images in %.1f s -> %s", encoder, n, time.perf_counter() - t0, out)


def _encoder_state(data: datasets.Spec, encoder: str, state_path: str | None, fit: bool = True
                   ) -> tuple[dict | None, dict]:
    """(encoder state, the settings hashed into the shards' config_hash). Encoders with a state rule come from
    their file, checked to be made for this data; `pixels` is fitted on the train split here (unless not `fit`:
    then the state is None)."""
    from . import encoders

    if encoder in encoders.TRAINABLE:
        if not state_path:
            raise SimattrError(f"encoder '{encoder}' needs its state file (--state)")
        state = encoders.load_state(state_path, expect_name=encoder)
        settings = json.loads(state["settings"])
        trained_on = {k: settings.get(k) for k in data.identity()}
        if trained_on != data.identity():
            raise SimattrError(f"{state_path}: made for other data ({trained_on}, now {data.identity()}); "
                               "rerun its rule")
        return state, settings
    settings = embed_settings(data, encoder, {}, 0)
    if not fit:
        return None, settings
    tr = datasets.load_split(data, "train")
    return encoders.fit(encoder, tr.images, tr.labels, {}, seed=0, progress=False), settings


def _encode_range(state: dict, part: datasets.Split, start: int, stop: int, batch_size: int, progress: bool,
                  what: str, workers: int = 0) -> np.ndarray:
    """Features of images start..stop-1 of a split, decoded and encoded batch by batch (progress bar, log)."""
    from tqdm import tqdm

    from . import encoders

    encoder = encoders.Encoder(state)                  # one network, built and moved to the device once
    cuda = encoder.device is not None and encoder.device.type == "cuda"
    stream = part.stream(batch_size, workers, pin=cuda)  # uint8 batches from persistent decoders
    feats, t0, last, done = [], time.perf_counter(), time.perf_counter(), 0
    try:
        with tqdm(total=stop - start, desc=what, unit="img", disable=not progress, leave=False) as bar:
            for images in stream(np.arange(start, stop)):
                feats.append(encoder(images, batch_size=batch_size))
                done += len(images)
                bar.update(len(images))
                if time.perf_counter() - last > 30:
                    last = time.perf_counter()
                    log.info("%s: %d of %d images, %.0f images/s", what, done, stop - start, done / (last - t0))
    finally:
        stream.close()
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def embed_shard(*, data: datasets.Spec, encoder: str, split: str, shard: int, shard_size: int, out: str,
                state_path: str | None = None, batch_size: int = 256, float16: bool = False, workers: int = 0,
                progress: bool = True) -> None:
    """Embed shard `shard` of one split (images shard*shard_size .. ; shard_size 0: the whole split)."""
    t0 = time.perf_counter()
    state, settings = _encoder_state(data, encoder, state_path)
    part = datasets.load_split(data, split)
    ranges = store.shard_ranges(len(part), shard_size)
    if not 0 <= shard < len(ranges):
        raise SimattrError(f"shard {shard} does not exist: the {split} split has {len(part)} images, "
                           f"{len(ranges)} shard(s) of {shard_size or len(part)}")
    start, stop = ranges[shard]
    feats = _encode_range(state, part, start, stop, batch_size, progress, f"{encoder}/{split} shard {shard}",
                          workers)
    store.write_shard(out, feats, part.labels[start:stop], np.arange(start, stop), dataset=data.name, split=split,
                      encoder=encoder, config_hash=store.config_hash(settings), class_names=part.class_names,
                      float16=float16)
    log.info("embedded %s images %d..%d with %s (d=%d) in %.1f s -> %s", split, start, stop - 1, encoder,
             feats.shape[1], time.perf_counter() - t0, out)


def embed_index(*, data: datasets.Spec, encoder: str, split: str, shards: list[str], out: str,
                state_path: str | None = None) -> dict:
    """The split's manifest from its shards, each checked against the current settings (stale shards refused)."""
    _, settings = _encoder_state(data, encoder, state_path, fit=False)
    part = datasets.load_split(data, split)
    expect = {"dataset": data.name, "split": split, "encoder": encoder, "config_hash": store.config_hash(settings)}
    manifest = store.write_index(Path(out).parent, shards, n=len(part), expect=expect, skipped=part.skipped)
    log.info("%s/%s: %d images in %d shard(s), d=%d%s", encoder, split, manifest["n"], len(manifest["shards"]),
             manifest["feature_dim"], f", {len(part.skipped)} bad file(s) skipped" if part.skipped else "")
    return manifest


def embed(*, data: datasets.Spec, encoder: str, split: str, shard_size: int, out_dir: str,
          state_path: str | None = None, batch_size: int = 256, float16: bool = False, workers: int = 0,
          progress: bool = True) -> dict:
    """Embed one whole split in this process: every shard, then the manifest."""
    n = len(datasets.load_split(data, split))
    files = []
    for s in range(len(store.shard_ranges(n, shard_size))):
        files.append(str(Path(out_dir) / store.SHARD_NAME.format(shard=s)))
        embed_shard(data=data, encoder=encoder, split=split, shard=s, shard_size=shard_size, out=files[-1],
                    state_path=state_path, batch_size=batch_size, float16=float16, workers=workers,
                    progress=progress)
    return embed_index(data=data, encoder=encoder, split=split, shards=files,
                       out=str(Path(out_dir) / "index.json"), state_path=state_path)


def score_class(*, dataset: str, encoder: str, ranker: str, cls: int, train_index: str, test_index: str,
                class_conditioned: bool, topk: int, esvm: dict, random_seed: int, out: str,
                progress: bool = True) -> None:
    from . import rankers

    t0 = time.perf_counter()
    tr_f, tr_y, tr_m = store.read_embeddings(train_index)
    te_f, te_y, te_m = store.read_embeddings(test_index)
    if tr_f.shape[1] != te_f.shape[1]:
        raise SimattrError(f"{train_index} holds {tr_f.shape[1]}-d features but {test_index} {te_f.shape[1]}-d "
                           "(embedded by different encoders); rerun the embed stage")
    if tr_m["config_hash"] != te_m["config_hash"]:
        raise SimattrError(f"{train_index} and {test_index} come from different settings "
                           f"({tr_m['config_hash']} vs {te_m['config_hash']}); rerun the embed stage")
    q_idx = np.flatnonzero(te_y == cls)
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"{train_index}: class {cls} has no training images")
    batched = {"chunk_size": esvm.get("chunk_size") or 128, "device": esvm.get("device") or "auto"}
    settings: dict = {
        "esvm": {"C": esvm["C"], **batched},
        "esvm_signed": {"C": esvm["C"], "neighbours": esvm.get("neighbours") or 10, **batched},
        "esvm_reference": {"C": esvm["C"], "tol": esvm["tol"], "max_iter": esvm["max_iter"]},
        "knn_l2": batched, "knn_cos": batched}.get(ranker, {})
    extra = {}
    if ranker == "esvm_signed":         # every training image scored: its own class +, the runner-up's -
        full, runner_up = rankers.esvm_signed(te_f[q_idx], tr_f, tr_y, cls, progress=progress, **settings)
        scores, extra = full[:, c_idx], {"full_scores": full, "runner_up": runner_up}
    else:
        if ranker == "random":
            settings = {"query_seeds": np.array([store.seed_from("random", dataset, random_seed, int(i))
                                                 for i in q_idx])}
        scores = rankers.score(ranker, te_f[q_idx], tr_f[c_idx], progress=progress, **settings)
    attrs = {"dataset": dataset, "encoder": encoder, "ranker": ranker, "embedding_config_hash": tr_m["config_hash"],
             "n_train": len(tr_y),
             "settings": json.dumps({k: v for k, v in settings.items() if k != "query_seeds"}, sort_keys=True),
             "random_seed": int(random_seed)}
    _write_class_scores(out, cls, q_idx, c_idx, scores, topk, class_conditioned, attrs, extra, t0)
    log.info("%s/%s class %s: %d test x %d train scored in %.2f s", encoder, ranker, cls, len(q_idx), len(c_idx),
             time.perf_counter() - t0)


def _write_class_scores(out: str, cls: int, q_idx: np.ndarray, c_idx: np.ndarray, scores: np.ndarray, topk: int,
                        class_conditioned: bool, attrs: dict, extra: dict, t0: float) -> None:
    from . import rankers

    top = c_idx[rankers.topk(scores, topk)] if len(q_idx) else np.zeros((0, min(topk, len(c_idx))), np.int64)
    attrs = {**attrs, "class": int(cls), "class_conditioned": bool(class_conditioned),
             "wall_s": time.perf_counter() - t0}
    store.write_scores(out, test_indices=q_idx, train_indices=c_idx, scores=scores, topk=top, attrs=attrs,
                       extra=extra)


def trak_checkpoints(*, data: datasets.Spec, recipe, n_checkpoints: int, seed: int, out: str,
                     progress: bool = True) -> None:
    """Train the full-data models whose gradients TRAK uses (seeds from (dataset, seed, i)); save their states."""
    import torch

    from . import models, trak

    t0 = time.perf_counter()
    tr = datasets.load_split(data, "train")
    streamed = recipe.name in models.STREAMED_MODELS
    (X_train,) = models.prepare_inputs(recipe, tr if streamed else tr.images)
    seeds = [store.seed_from("trak-checkpoint", data.name, seed, i) for i in range(n_checkpoints)]
    states = trak.train_checkpoints(recipe=recipe, X_train=X_train, y_train=tr.labels,
                                    n_classes=len(tr.class_names), seeds=seeds)
    identity = {**data.identity(), "recipe": recipe.identity(), "n_checkpoints": n_checkpoints, "seed": seed}
    with store.atomic_path(out) as tmp:
        torch.save({"states": states, "seeds": seeds, "identity": json.dumps(identity, sort_keys=True),
                    "config_hash": store.config_hash(identity)}, tmp)
    log.info("TRAK: %d %s checkpoints trained in %.1f s -> %s", n_checkpoints, recipe.name,
             time.perf_counter() - t0, out)


def trak_attributions(*, data: datasets.Spec, recipe, checkpoints: str, proj_dim: int, projector_seed: int,
                      batch_size: int, out: str, lambda_reg: float = 0.0, progress: bool = True) -> None:
    """TRAK scores of every test image against every training image (through the traker package)."""
    import tempfile

    from . import backbones, models, trak

    t0 = time.perf_counter()
    ck = backbones.torch_load(checkpoints, "TRAK checkpoints not found (rule trak_checkpoints makes them)",
                              "not a TRAK checkpoints file; rerun rule trak_checkpoints")
    identity = json.loads(ck["identity"])
    if {k: identity.get(k) for k in data.identity()} != data.identity() or identity["recipe"] != recipe.identity():
        raise SimattrError(f"{checkpoints}: made for other data or another model ({identity}); rerun its rule")
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    streamed = recipe.name in models.STREAMED_MODELS
    X_train, X_test = models.prepare_inputs(recipe, *((tr, te) if streamed else (tr.images, te.images)))
    from .accel import default_device

    device = default_device()
    with tempfile.TemporaryDirectory(prefix=".trak-", dir=Path(out).parent) as work:
        scores = trak.trak_scores(recipe=recipe, X_train=X_train, y_train=tr.labels, X_target=X_test,
                                  y_target=te.labels, checkpoints=ck["states"], n_classes=len(tr.class_names),
                                  proj_dim=proj_dim, projector_seed=projector_seed, lambda_reg=lambda_reg,
                                  batch_size=batch_size, device=device, save_dir=work, progress=progress)
    if not np.isfinite(scores).all():
        raise SimattrError(f"TRAK produced NaN or inf scores (proj_dim {proj_dim}); see {checkpoints}")
    attrs = {"dataset": data.name, "ranker": "trak", "checkpoints_hash": ck["config_hash"],
             "n_checkpoints": len(ck["states"]), "proj_dim": proj_dim, "projector_seed": projector_seed,
             "lambda_reg": lambda_reg, "projector": trak.PROJECTOR,
             "device": str(device), "wall_s": time.perf_counter() - t0}
    store.write_arrays(out, {"scores": scores.astype(np.float32), "test_labels": te.labels.astype(np.int64),
                             "train_labels": tr.labels.astype(np.int64)}, attrs)
    log.info("TRAK: %d test x %d train images scored with %d checkpoints, proj_dim %d, on %s in %.1f s -> %s",
             len(te), len(tr), len(ck["states"]), proj_dim, device, time.perf_counter() - t0, out)


def score_model_class(*, data: datasets.Spec, ranker: str, cls: int, class_conditioned: bool, topk: int, out: str,
                      trak_scores: str | None = None, subset_shards: list[str] = (), datamodels: dict | None = None,
                      progress: bool = True) -> None:
    """Scores of one class's test images by a model-based ranker (trak, datamodels): every training image is
    scored (full_scores, signed); the candidates ranked for the support stage are those of score_class."""
    from . import datamodels as dm
    from . import subsets

    t0 = time.perf_counter()
    tr_y = datasets.load_split(data, "train").labels
    te_y = datasets.load_split(data, "test").labels
    q_idx = np.flatnonzero(te_y == cls)
    c_idx = np.flatnonzero(tr_y == cls) if class_conditioned else np.arange(len(tr_y))
    if len(c_idx) == 0:
        raise SimattrError(f"class {cls} has no training images")
    if ranker == "trak":
        if not trak_scores:
            raise SimattrError("ranker trak needs its attribution file (--trak-scores)")
        arrays, attrs = store.read_arrays(trak_scores, ("scores", "test_labels", "train_labels"))
        if not (np.array_equal(arrays["test_labels"], te_y) and np.array_equal(arrays["train_labels"], tr_y)):
            raise SimattrError(f"{trak_scores}: made for another split of the data; rerun the trak rule")
        full = arrays["scores"][q_idx]
        settings = {k: attrs.get(k) for k in ("checkpoints_hash", "n_checkpoints", "proj_dim", "projector_seed",
                                              "lambda_reg")}
    elif ranker == "datamodels":
        masks, margins, attrs = subsets.read_shards(list(subset_shards), "datamodels")
        if attrs["n_train"] != len(tr_y) or attrs["n_test"] != len(te_y):
            raise SimattrError(f"datamodels subset shards hold {attrs['n_train']} train / {attrs['n_test']} test "
                               f"images, the dataset {len(tr_y)} / {len(te_y)}; rerun the subsets rule")
        full, info = dm.fit_datamodels(masks, margins[:, q_idx], **(datamodels or {}))
        settings = {"n_models": len(masks), "alpha": attrs["alpha"], "recipe": attrs["recipe"], **(datamodels or {})}
        log.info("datamodels class %s: %d models, median nonzeros %s", cls, len(masks),
                 np.median(info["nonzero"]) if len(q_idx) else "-")
    else:
        raise SimattrError(f"'{ranker}' is not a model-based ranker (trak, datamodels)")
    full = np.asarray(full, np.float32).reshape(len(q_idx), len(tr_y))
    attrs = {"dataset": data.name, "encoder": "model", "ranker": ranker, "embedding_config_hash": "",
             "n_train": len(tr_y),
             "settings": json.dumps(settings, sort_keys=True, default=str), "random_seed": 0}
    _write_class_scores(out, cls, q_idx, c_idx, full[:, c_idx], topk, class_conditioned, attrs,
                        {"full_scores": full}, t0)
    log.info("model/%s class %s: %d test x %d train scored in %.2f s", ranker, cls, len(q_idx), len(tr_y),
             time.perf_counter() - t0)


def attribution_weights(sc: dict) -> np.ndarray:
    """A score file's rows as weights over every training image, for LDS: full_scores when the ranker gives them
    (trak, datamodels, esvm_signed: signed, as they are), else each row's candidate scores minus the row's
    lowest candidate score (>= 0: a similarity ranker's scores say more or less supportive, never harmful) and 0
    for the training images it does not rank."""
    if "full_scores" in sc:
        return np.asarray(sc["full_scores"], np.float32)
    n_train = int(sc["attrs"]["n_train"])
    w = np.zeros((len(sc["test_indices"]), n_train), np.float32)
    s = sc["scores"]
    w[:, sc["train_indices"]] = s - s.min(axis=1, keepdims=True) if s.size else s
    return w


def lds_stage(*, score_files: list[str], subset_shards: list[str], n_boot: int, seed: int, out: str) -> dict:
    """LDS of one method: for every test image the method scored, the Spearman correlation over the LDS subset
    models between the predicted margin (sum of its weights over the kept training images) and the actual one."""
    from . import datamodels as dm
    from . import subsets

    t0 = time.perf_counter()
    masks, margins, sattrs = subsets.read_shards(list(subset_shards), "lds")
    n_train = int(sattrs["n_train"])
    rows, tests, first, signed = [], [], None, False
    for f in sorted(score_files):
        sc = store.read_scores(f, extras=True)
        sc["attrs"].setdefault("n_train", n_train)
        signed = signed or "full_scores" in sc
        w = attribution_weights(sc)
        if w.shape[1] != n_train:
            raise SimattrError(f"{f}: scores {w.shape[1]} training images, the LDS models {n_train}")
        rows.append(w)
        tests.append(sc["test_indices"])
        first = first or sc["attrs"]
    weights, tests = np.concatenate(rows), np.concatenate(tests)
    if len(tests) and tests.max() >= margins.shape[1]:
        raise SimattrError(f"score files name test image {tests.max()}, the LDS models saw {margins.shape[1]}")
    rho = dm.lds(weights, masks, margins[:, tests])
    mean, low, high = dm.bootstrap_mean_ci(rho, n_boot, seed)
    fin = lambda x: None if not np.isfinite(x) else round(float(x), 6)  # noqa: E731
    result = {"dataset": first["dataset"], "encoder": first["encoder"], "ranker": first["ranker"],
              "weights": "full_scores" if signed else "shifted_candidates",
              "n_models": int(len(masks)), "alpha": float(sattrs["alpha"]), "n_test": int(len(tests)),
              "n_undefined": int(np.isnan(rho).sum()), "mean": fin(mean), "ci_low": fin(low), "ci_high": fin(high),
              "n_boot": n_boot, "seed": seed, "wall_s": round(time.perf_counter() - t0, 3),
              "per_test": [{"test_index": int(t), "spearman": fin(r)} for t, r in zip(tests, rho)]}
    store.write_json(out, result)
    log.info("LDS %s/%s: %.4f [%.4f, %.4f] over %d test images and %d models", result["encoder"],
             result["ranker"], mean, low, high, len(tests), len(masks))
    return result


def _answer_task(**kw):
    from . import support

    return support.answer(**kw)


def _answer_chunk(units: list[dict], at_once: int = 1, threads: int = 1, name: str = "support",
                  gpus: int = 0) -> list[dict]:
    """Several answers in one task (one process start for all of them): one after the other, or `at_once` at a
    time in processes of their own that share the task's GPU (several models per GPU where one leaves it
    idle), each with `threads` cores. Every answer is attempted; if some raise, the task raises afterwards
    naming each failed image (the others are written and a rerun reuses them)."""
    out, errors = [], []

    def failed(u, e):
        log.error("test image %s failed: %s", u["test_index"], e)
        errors.append(f"test image {u['test_index']}: {type(e).__name__}: {e}")

    if at_once > 1 and len(units) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from .launch import _Task

        # spawn: a fresh interpreter (no CUDA state or locks inherited from this process)
        with ProcessPoolExecutor(min(at_once, len(units)), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [(u, pool.submit(_Task(_answer_task, threads, name, gpus), u)) for u in units]
            for u, job in jobs:
                try:
                    out.append(job.result())
                except Exception as e:  # noqa: BLE001 - reported below, with the image it belongs to
                    failed(u, e)
    else:
        for u in units:
            try:
                out.append(_answer_task(**u))
            except Exception as e:  # noqa: BLE001 - reported below, with the image it belongs to
                log.exception("test image %s failed", u["test_index"])
                errors.append(f"test image {u['test_index']}: {type(e).__name__}: {e}")
    if errors:
        raise SimattrError(f"{len(errors)} of {len(units)} answers of this task failed: " + "; ".join(errors))
    return out


def support_stage(*, queries: str, score_files: list[str], answers_dir: str, gather_out: str, metric: str,
                  settings: dict, launch, progress: bool = True, replicates: int = 1) -> dict:
    """Submit one array task per sampled test image (and replicate seed set); wait; gather the answers into
    `gather_out`: `answers` (seed set settings["seed_set"]) and, with replicates > 1, `replicates`: one list of
    answers per further seed set, in the same test image order."""
    from . import launch as launch_mod
    from . import support

    t0 = time.perf_counter()
    if replicates < 1:
        raise SimattrError(f"support.replicates must be >= 1 (got {replicates})")
    settings = support.engine_settings(settings)
    support.check_settings(settings)
    loaded_queries = support.load_queries(queries)
    arrays = loaded_queries["arrays"]
    by_class = {}
    for f in score_files:
        sc = support.load_scores(f)
        by_class[int(sc["attrs"]["class"])] = sc

    test_indices = arrays["test_indices"].tolist()
    base = int(settings["seed_set"])
    done: dict[tuple[int, int], dict] = {}
    units, labels = [], []
    for r in range(replicates):
        rep_settings = {**settings, "seed_set": base + r}
        for t, y in zip(test_indices, arrays["y_query"].tolist()):
            if y not in by_class:
                raise SimattrError(f"no score file for class {y} (test image {t}) among the inputs")
            unit = {"queries_path": queries, "scores_path": by_class[y]["path"],
                    "out_path": str(store.answer_path(answers_dir, t, r)), "test_index": t, "metric": metric,
                    "settings": rep_settings}
            prev = support.expected_answer(**unit, queries=loaded_queries, scores=by_class[y])
            if prev is not None:          # resume: an answer computed from these very inputs is kept
                done[(r, t)] = prev
                continue
            units.append(unit)
            labels.append(f"test image {t}" + (f" (seed set {base + r})" if r else ""))
    name = f"support-{settings['encoder']}-{settings['ranker']}-{metric}"
    if settings["engine"] == "bisection":
        need = math.ceil(math.log2(max(settings["k_max"], 1)))
        if settings["bisection_steps"] < need:
            log.warning("%s: bisection_steps=%d < ceil(log2(k_max=%d))=%d: answers are upper bounds, not minima",
                        name, settings["bisection_steps"], settings["k_max"], need)
    if done:
        log.info("%s: %d of %d answers already computed with these settings; running %d", name, len(done),
                 len(test_indices) * replicates, len(units))
    size = max(1, int(launch.images_per_task))
    chunks = [units[i:i + size] for i in range(0, len(units), size)]
    chunk_labels = [", ".join(labels[i:i + size]) for i in range(0, len(units), size)]
    at_once = max(1, int(launch.answers_at_once))
    chunk_kw = {"at_once": at_once, "threads": max(1, int(launch.cpus_per_task) // at_once), "name": name,
                "gpus": int(launch.gpus_per_node)}
    fresh, failures = launch_mod.run_tasks(_answer_chunk, [{"units": c, **chunk_kw} for c in chunks],
                                           chunk_labels, launch, name=name, progress=progress, log=log)
    for got in fresh:
        for a in got or []:
            done[(int(a.get("seed_set", base)) - base, a["test_index"])] = a
    if failures:
        for f in failures:
            log.error("%s", f)
        raise SimattrError(f"{len(failures)} of {len(chunks)} support tasks failed; first: {failures[0]}")
    answers = [done[(0, t)] for t in test_indices]
    gather = {"dataset": settings["dataset"], "encoder": settings["encoder"], "ranker": settings["ranker"],
              "metric": metric, "k_max": max(a["k_max"] for a in answers), "settings": settings,
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


def report_stage(*, data: datasets.Spec, gathers: list[str],
                 score_files: list[str], benchmarks: list[tuple[str, str]], stored: list[tuple[str, str]],
                 n_boot: int, seed: int, grid_images: int, out_dir: str, lds_files: list[str] = (),
                 overlap_k: list[int] = (10, 100), method_cost_entries: list[tuple[str, str, str]] = ()
                 ) -> list[dict]:
    from . import report

    g = [store.read_json(p) for p in gathers]
    rows = report.summarize(g, n_boot=n_boot, seed=seed)
    wins = report.win_rates(g, n_boot=n_boot, seed=seed)
    retest = report.retest_rows(g)
    bench: dict[str, list[str]] = {}
    for stage, f in benchmarks:
        bench.setdefault(stage, []).append(f)
    kept: dict[str, list[str]] = {}
    for stage, p in stored:
        kept.setdefault(stage, []).append(p)
    costs = report.stage_costs(bench, kept)
    out = Path(out_dir)
    report.plot_cdf(g, out / "support_cdf.png", n_boot=min(n_boot, 200), seed=seed)
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
    report.plot_topk_grid(te, tr, topk_by_method, shown, out / "topk_grid.png", k=8)
    lds = report.lds_rows([store.read_json(p) for p in lds_files])
    overlap = report.overlap_rows(score_sets, overlap_k) if len(score_sets) > 1 else []
    mcosts = report.method_costs(method_cost_entries)
    report.write_tables(rows, wins, costs, out, lds=lds, overlap=overlap, mcosts=mcosts, retest=retest)
    log.info("report written to %s\n%s", out / "report.md", (out / "report.md").read_text())
    return rows
