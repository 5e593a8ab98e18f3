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

    feats, t0, last, done = [], time.perf_counter(), time.perf_counter(), 0
    with tqdm(total=stop - start, desc=what, unit="img", disable=not progress, leave=False) as bar:
        for images in part.batches(np.arange(start, stop), batch_size, workers):
            feats.append(encoders.encode(state, images, batch_size=batch_size))
            done += len(images)
            bar.update(len(images))
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                log.info("%s: %d of %d images, %.0f images/s", what, done, stop - start, done / (last - t0))
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
        "esvm_reference": {"C": esvm["C"], "tol": esvm["tol"], "max_iter": esvm["max_iter"]},
        "knn_l2": batched, "knn_cos": batched}.get(ranker, {})
    if ranker == "random":
        settings = {"query_seeds": np.array([store.seed_from("random", dataset, random_seed, int(i)) for i in q_idx])}
    scores = rankers.score(ranker, te_f[q_idx], tr_f[c_idx], progress=progress, **settings)
    top = c_idx[rankers.topk(scores, topk)] if len(q_idx) else np.zeros((0, min(topk, len(c_idx))), np.int64)
    attrs = {"dataset": dataset, "encoder": encoder, "ranker": ranker, "class": int(cls),
             "class_conditioned": bool(class_conditioned), "embedding_config_hash": tr_m["config_hash"],
             "settings": json.dumps({k: v for k, v in settings.items() if k != "query_seeds"}, sort_keys=True),
             "random_seed": int(random_seed), "wall_s": time.perf_counter() - t0}
    store.write_scores(out, test_indices=q_idx, train_indices=c_idx, scores=scores, topk=top, attrs=attrs)
    log.info("%s/%s class %s: %d test x %d train scored in %.2f s", encoder, ranker, cls, len(q_idx), len(c_idx),
             time.perf_counter() - t0)


def _answer_task(**kw):
    from . import support

    return support.answer(**kw)


def _answer_chunk(units: list[dict]) -> list[dict]:
    """Several answers in one task, one after the other (one process start for all of them). Every answer
    is attempted; if some raise, the task raises afterwards naming each failed image (the others are written
    and a rerun reuses them)."""
    out, errors = [], []
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
                  settings: dict, launch, progress: bool = True) -> dict:
    """Submit one array task per sampled test image; wait; gather the answers into `gather_out`."""
    from . import launch as launch_mod
    from . import support

    t0 = time.perf_counter()
    loaded_queries = support.load_queries(queries)
    arrays = loaded_queries["arrays"]
    by_class = {}
    for f in score_files:
        sc = support.load_scores(f)
        by_class[int(sc["attrs"]["class"])] = sc

    test_indices = arrays["test_indices"].tolist()
    done: dict[int, dict] = {}
    units, labels = [], []
    for t, y in zip(test_indices, arrays["y_query"].tolist()):
        if y not in by_class:
            raise SimattrError(f"no score file for class {y} (test image {t}) among the inputs")
        unit = {"queries_path": queries, "scores_path": by_class[y]["path"],
                "out_path": str(Path(answers_dir) / f"{t}.json"), "test_index": t, "metric": metric,
                "settings": settings}
        prev = support.expected_answer(**unit, queries=loaded_queries, scores=by_class[y])
        if prev is not None:          # resume: an answer computed from these very inputs is kept
            done[t] = prev
            continue
        units.append(unit)
        labels.append(f"test image {t}")
    name = f"support-{settings['encoder']}-{settings['ranker']}-{metric}"
    need = math.ceil(math.log2(max(settings["k_max"], 1)))
    if settings["bisection_steps"] < need:
        log.warning("%s: bisection_steps=%d < ceil(log2(k_max=%d))=%d: answers are upper bounds, not minima",
                    name, settings["bisection_steps"], settings["k_max"], need)
    if done:
        log.info("%s: %d of %d answers already computed with these settings; running %d", name, len(done),
                 len(test_indices), len(units))
    size = max(1, int(launch.images_per_task))
    chunks = [units[i:i + size] for i in range(0, len(units), size)]
    chunk_labels = [", ".join(labels[i:i + size]) for i in range(0, len(units), size)]
    fresh, failures = launch_mod.run_tasks(_answer_chunk, [{"units": c} for c in chunks], chunk_labels, launch,
                                           name=name, progress=progress, log=log)
    done.update({a["test_index"]: a for got in fresh if got is not None for a in got})
    if failures:
        for f in failures:
            log.error("%s", f)
        raise SimattrError(f"{len(failures)} of {len(chunks)} support tasks failed; first: {failures[0]}")
    answers = [done[t] for t in test_indices]
    gather = {"dataset": settings["dataset"], "encoder": settings["encoder"], "ranker": settings["ranker"],
              "metric": metric, "k_max": max(a["k_max"] for a in answers), "settings": settings,
              "wall_s": round(time.perf_counter() - t0, 3), "answers": answers}
    store.write_json(gather_out, gather)
    log.info("%s: %d answers (%d flipped within k_max), %d models trained, %.1f s", name, len(answers),
             sum(a["support"] is not None for a in answers), sum(a["trainings"] for a in answers),
             time.perf_counter() - t0)
    return gather


def report_stage(*, data: datasets.Spec, gathers: list[str],
                 score_files: list[str], benchmarks: list[tuple[str, str]], stored: list[tuple[str, str]],
                 n_boot: int, seed: int, grid_images: int, out_dir: str) -> list[dict]:
    from . import report

    g = [store.read_json(p) for p in gathers]
    rows = report.summarize(g, n_boot=n_boot, seed=seed)
    wins = report.win_rates(g)
    bench: dict[str, list[str]] = {}
    for stage, f in benchmarks:
        bench.setdefault(stage, []).append(f)
    kept: dict[str, list[str]] = {}
    for stage, p in stored:
        kept.setdefault(stage, []).append(p)
    costs = report.stage_costs(bench, kept)
    out = Path(out_dir)
    report.plot_cdf(g, out / "support_cdf.png")
    # the top-k grid: the first few sampled test images, each method's best training images
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    shown = sorted({a["test_index"] for x in g for a in x["answers"]})[:grid_images]
    topk_by_method: dict[str, dict[int, list[int]]] = {}
    for f in score_files:
        sc = store.read_scores(f)
        method = f"{sc['attrs']['encoder']}/{sc['attrs']['ranker']}"
        rows_of = {int(t): i for i, t in enumerate(sc["test_indices"])}
        for t in shown:
            if t in rows_of:
                topk_by_method.setdefault(method, {})[t] = sc["topk"][rows_of[t]].tolist()
    report.plot_topk_grid(te, tr, topk_by_method, shown, out / "topk_grid.png", k=8)
    report.write_tables(rows, wins, costs, out)
    log.info("report written to %s\n%s", out / "report.md", (out / "report.md").read_text())
    return rows
