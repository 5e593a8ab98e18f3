"""Benchmark: simattr's support engine against the released search protocol, on the same images and rankings.

    python benchmarks/support.py                     # 12 digits test images, removal, k_max 128, 7 steps, 5 seeds
    python benchmarks/support.py --quick             # 3 images, k_max 128, 3 steps (upper bounds): a smoke run, not the bar
    python benchmarks/support.py --metric mislabel   # k_max 32, 5 steps (the default config's mislabel values)

Inputs (made in a temp dir, or --workdir): the bundled digits dataset, `queries.prepare_queries` with the
default config's model recipe (mlp, hidden 64, 100 steps, lr 0.01; test_fraction 0.2, split_seed 0;
flip_models 5) and --n-test sampled images (sample_seed 0); rankings from one real ranker (`knn_l2` on the
`pixels` encoder's standardised pixels, class-conditioned: each class's sampled test images against that
class's training images, as `scoring.score_class` does), written with `store.write_scores`.

Two arms, timed end to end (reading the inputs included; preparing them is shared and not timed):

  released   the released protocol, in this process: probe k_max; not flipped -> None; else bisection over
             (0, k_max] with the fixed budget. Every probe trains EVERY seed, ONE model at a time
             (`models.train_predict(..., seeds=[s])`), with simattr's per-model seeds
             (`support.bank.model_seed(dataset, test_index, k, seed_index)`). No journal, no early stopping, no k = 0.
  engine     `support.stage.support_stage` with submitit `local` (parallelism 2: both cores; --images-per-task answers
             per task process, launch.images_per_task),
             early stopping, monotone_checks 0 (the released protocol has none), a fresh answers dir. Its
             protocol also probes k = 0 after a flipping k_max, answered by the full-data models (no training).

Checks: the answers are identical except where the engine's k = 0 probe flipped (the engine answers 0 there;
those are counted apart); every probe both arms made at the same k has the same decision; every model the
engine trained (its journals) predicts what the released arm's model with the same seed predicted (class
and margin); and stacked training is bit-exact (`train_mlp(seeds=[a, b, ...])` against single-seed calls) but
slower per model on CPU, which is why the engine trains a probe's seeds one after the other.
Exit status 1 when an answer or a decision differs.

The wall ratio is split exactly into three factors: trainings (released / engine), time per training inside
the engine's tasks (two processes sharing the machine, journal writes, reading inputs), and concurrency (sum of the tasks' wall
over the stage's wall: two cores, less process start and polling).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simattr import config, datasets, encoders, models, rankers, store
from simattr import queries as queries_mod
from simattr.launch import LaunchSettings
from simattr.support.answer import Settings, answer_inputs, journal_path, load_scores
from simattr.support.bank import log_odds, model_seed, modified_training_set
from simattr.support.search import Probe, bisect_support, models_needed
from simattr.support.stage import support_stage

DATASET = "digits"
# the default config (config/config.yaml)
RECIPE = models.Recipe.of(name="mlp", hidden=64, steps=100, lr=0.01, weight_decay=0.0)
TEST_FRACTION, SPLIT_SEED, FLIP_MODELS, SAMPLE_SEED = 0.2, 0, 5, 0
SEARCH = {"removal": (128, 7), "mislabel": (32, 5)}   # metric -> (k_max, bisection_steps)
ENCODER, RANKER = "pixels", "knn_l2"


# ----------------------------------------------------------------------------------------- inputs
def make_inputs(workdir: Path, n_test: int) -> tuple[str, list[str]]:
    """queries.h5 (full-data models, sampled images, flip classes) and one score file per sampled class."""
    queries = workdir / "queries.h5"
    data = datasets.Spec.of(name=DATASET, test_fraction=TEST_FRACTION, split_seed=SPLIT_SEED)
    queries_mod.prepare_queries(data=data, n_test=n_test, sample_seed=SAMPLE_SEED, flip_models=FLIP_MODELS, recipe=RECIPE, out_path=str(queries))
    arrays, _ = store.read_arrays(queries, ("test_indices", "y_query"))
    tr, te = datasets.load_split(data, "train"), datasets.load_split(data, "test")
    enc = encoders.get(ENCODER).fit(tr.images, tr.labels, {}, seed=0, progress=False)
    tr_f, te_f = enc.encode(tr.images), enc.encode(te.images)
    files = []
    for c in sorted(set(arrays["y_query"].tolist())):
        q_idx = arrays["test_indices"][arrays["y_query"] == c]          # the sampled test images of class c
        c_idx = np.flatnonzero(tr.labels == c)                           # against class c's training images
        scores = rankers.score(RANKER, te_f[q_idx], tr_f[c_idx], **config.ranker_settings(config.defaults(), RANKER))
        out = workdir / "scores" / f"class-{c}.h5"
        store.write_scores(out, test_indices=q_idx, train_indices=c_idx, scores=scores,
                           topk=c_idx[rankers.topk(scores, 64)],
                           attrs={"dataset": DATASET, "encoder": ENCODER, "ranker": RANKER, "class": int(c),
                                  "class_conditioned": True, "embedding_config_hash": "benchmark",
                                  "settings": json.dumps({"chunk_size": 128, "device": "auto"}),
                                  "random_seed": 0, "wall_s": 0.0})
        files.append(str(out))
    return str(queries), files


# ----------------------------------------------------------------------------------------- released
def released_answer(X_train, y_train, x_query, label, flip_class, ranking, *, metric, test_index, k_max, steps,
                    seeds, threshold, n_classes, keep_probs=False) -> dict:
    """The released protocol for one image: k_max, then fixed-budget bisection; every seed, one model at a time."""
    models_out = []

    def probe(k: int) -> Probe:
        X, y = modified_training_set(X_train, y_train, ranking, k, metric, flip_class)
        acc = []
        for i in range(seeds):
            seed = model_seed(DATASET, test_index, k, i)
            t0 = time.perf_counter()
            p = models.train_predict(X, y, x_query[None], seeds=[seed], n_classes=n_classes, recipe=RECIPE)[0, 0]
            train_s = time.perf_counter() - t0
            acc.append(float(p.argmax() == label))
            models_out.append({"k": k, "seed_index": i, "seed": seed, "pred": int(p.argmax()), "train_s": train_s,
                               "margin": round(log_odds(p, label), 6),
                               **({"probs": p.copy(), "X": X, "y": y} if keep_probs and k == k_max else {})})
        mean = float(np.mean(acc))
        return Probe(k=k, accuracy=mean, n_models=seeds, flipped=mean <= threshold)

    k_max = int(min(k_max, len(ranking)))
    found, probes = bisect_support(probe, k_max, steps)     # k_max first, then fixed-budget bisection
    return {"support": found, "probes": [p.as_dict() for p in probes], "models": models_out,
            "trainings": seeds * len(probes)}


def run_released(queries: str, score_files: list[str], *, metric, k_max, steps, seeds, threshold,
                 n_bitwise: int) -> dict:
    t0 = time.perf_counter()
    q = queries_mod.load_queries(queries)
    by_class = {int(s["attrs"]["class"]): s for s in map(load_scores, score_files)}
    a = q["arrays"]
    n_classes = int(q["attrs"]["n_classes"])
    answers = {}
    for j, (t, label) in enumerate(zip(a["test_indices"].tolist(), a["y_query"].tolist())):
        inp = answer_inputs(q, by_class[label], t)     # the very inputs the engine's tasks read
        t1 = time.perf_counter()
        ans = released_answer(inp["X_train"], inp["y_train"], inp["x_query"], inp["label"], inp["flip_class"],
                              inp["ranking"], metric=metric, test_index=t, k_max=k_max, steps=steps, seeds=seeds,
                              threshold=threshold, n_classes=n_classes, keep_probs=j < n_bitwise)
        ans["wall_s"] = time.perf_counter() - t1
        answers[t] = ans
    return {"answers": answers, "wall_s": time.perf_counter() - t0, "n_classes": n_classes,
            "X_query": {t: a["X_query"][j] for j, t in enumerate(a["test_indices"].tolist())}}


# ----------------------------------------------------------------------------------------- engine
def run_engine(queries: str, score_files: list[str], workdir: Path, *, metric, k_max, steps, seeds, threshold,
               parallelism: int, images_per_task: int = 1) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="engine-", dir=workdir))     # fresh: nothing to reuse
    settings = Settings.from_settings({"dataset": DATASET, "encoder": ENCODER, "ranker": RANKER, "k_max": k_max,
                                       "bisection_steps": steps, "seeds": seeds, "threshold": threshold,
                                       "early_stop": True, "monotone_checks": 0, "engine": "bisection", "seed_set": 0,
                                       "model": RECIPE.identity()})
    launch = LaunchSettings.of(cluster="local", parallelism=parallelism, folder=str(run_dir / "submitit"),
                               images_per_task=images_per_task)
    t0 = time.perf_counter()
    gather = support_stage(queries=queries, score_files=score_files, answers_dir=str(run_dir / "answers"),
                           gather_out=str(run_dir / "gather.json"), metric=metric, settings=settings,
                           launch=launch, replicates=1, progress=False)
    wall = time.perf_counter() - t0
    answers = {}
    for ans in gather["answers"]:
        t = ans["test_index"]
        journal = journal_path(run_dir / "answers" / f"{t}.json")
        ans["models"] = [json.loads(ln) for ln in journal.read_text().splitlines() if ln.strip()]
        answers[t] = ans
    return {"answers": answers, "wall_s": wall, "dir": str(run_dir), "parallelism": parallelism}


# ----------------------------------------------------------------------------------------- checks
def compare(rel: dict, eng: dict) -> dict:
    k0, same, differ, probe_same, probe_differ, model_same, model_differ = [], [], [], 0, [], 0, []
    for t, r in rel["answers"].items():
        e = eng["answers"][t]
        e_probes = {p["k"]: p for p in e["probes"]}
        k0_flip = 0 in e_probes and e_probes[0]["flipped"]
        if k0_flip:
            k0.append({"test_index": t, "engine": e["support"], "released": r["support"]})
        elif e["support"] == r["support"]:
            same.append(t)
        else:
            differ.append({"test_index": t, "engine": e["support"], "released": r["support"]})
        for p in r["probes"]:
            if p["k"] in e_probes:
                if e_probes[p["k"]]["flipped"] == p["flipped"]:
                    probe_same += 1
                else:
                    probe_differ.append({"test_index": t, "k": p["k"], "released": p["flipped"],
                                         "engine": e_probes[p["k"]]["flipped"]})
        r_models = {(m["k"], m["seed_index"]): m for m in r["models"]}
        for m in e["models"]:
            rm = r_models.get((m["k"], m["seed_index"]))
            if rm is None:
                continue
            if (rm["seed"], rm["pred"], rm["margin"]) == (m["seed"], m["pred"], m["margin"]):
                model_same += 1
            else:
                model_differ.append({"test_index": t, "k": m["k"], "seed_index": m["seed_index"],
                                     "released": [rm["pred"], rm["margin"]], "engine": [m["pred"], m["margin"]]})
    return {"k0_answers": k0, "same": same, "differ": differ, "probes_compared": probe_same + len(probe_differ),
            "probe_differ": probe_differ, "models_compared": model_same + len(model_differ),
            "model_differ": model_differ}


def bitwise_batching(rel: dict, seeds: int) -> dict:
    """For the k_max probes kept: the stacked computation (models.train_mlp with seeds [s0, s1], [s0..s2], all)
    vs the released arm's single-seed calls: bitwise equality of the probabilities, and the training time per
    model (this process). It is why models.train_predict trains a probe's seeds one after the other on CPU."""
    checked, equal, max_diff, single_s, batched_s = 0, 0, 0.0, [], {}
    for t, r in rel["answers"].items():
        kept = [m for m in r["models"] if "probs" in m]
        if len(kept) < seeds:
            continue
        X, y = kept[0]["X"], kept[0]["y"]
        single_s += [m["train_s"] for m in kept]
        for n in sorted({min(2, seeds), min(3, seeds), seeds}):
            t0 = time.perf_counter()
            with models.one_blas_thread():
                params = models.train_mlp(X, y, [m["seed"] for m in kept[:n]], rel["n_classes"],
                                          hidden=RECIPE.hidden, steps=RECIPE.steps, lr=RECIPE.lr,
                                          weight_decay=RECIPE.weight_decay)
                probs = models.predict_mlp(params, rel["X_query"][t][None])[:, 0]
            batched_s.setdefault(n, []).append((time.perf_counter() - t0) / n)
            for m, p in zip(kept[:n], probs):
                checked += 1
                equal += bool(np.array_equal(m["probs"], p))
                max_diff = max(max_diff, float(np.abs(m["probs"] - p).max()))
    return {"models": checked, "bitwise_equal": equal, "max_abs_diff": max_diff,
            "single_ms_per_model": 1e3 * float(np.mean(single_s)) if single_s else None,
            "batched_ms_per_model": {n: 1e3 * float(np.mean(v)) for n, v in batched_s.items()}}


# ----------------------------------------------------------------------------------------- main
def summarise(rel: dict, eng: dict, seeds: int) -> tuple[dict, dict]:
    n = len(rel["answers"])
    r_tr = sum(a["trainings"] for a in rel["answers"].values())
    e_tr = sum(a["trainings"] for a in eng["answers"].values())
    r_probes = sum(len(a["probes"]) for a in rel["answers"].values())
    e_probes = sum(len(a["probes"]) for a in eng["answers"].values())
    # what the engine's own probes would train without early stopping (k = 0 reuses FLIP_MODELS full-data models)
    e_no_stop = sum(seeds if p["k"] > 0 else max(0, seeds - FLIP_MODELS)
                    for a in eng["answers"].values() for p in a["probes"])
    e_task = sum(a["wall_s"] for a in eng["answers"].values())
    rows = {
        "released": {"protocol": "released (k_max, bisection; every seed, one model at a time, 1 process)",
                     "answers": n, "flipped": sum(a["support"] is not None for a in rel["answers"].values()),
                     "trainings": r_tr, "probes": r_probes, "wall_s": rel["wall_s"]},
        "engine": {"protocol": "simattr engine (early stop, k=0 from full-data models, "
                                   f"local x{eng['parallelism']})",
                   "answers": n, "flipped": sum(a["support"] is not None for a in eng["answers"].values()),
                   "trainings": e_tr, "probes": e_probes, "wall_s": eng["wall_s"], "task_wall_s": e_task,
                   "trainings_without_early_stop": e_no_stop},
    }
    for r in rows.values():
        r["trainings_per_answer"] = r["trainings"] / n
        r["probes_per_answer"] = r["probes"] / n
        r["wall_s_per_answer"] = r["wall_s"] / n
    r_per_model = rel["wall_s"] / max(r_tr, 1)
    e_per_model = e_task / max(e_tr, 1)
    ratios = {"wall": rel["wall_s"] / eng["wall_s"], "trainings": r_tr / max(e_tr, 1),
              "trainings_protocol": r_tr / max(e_no_stop, 1), "trainings_early_stop": e_no_stop / max(e_tr, 1),
              "per_training": r_per_model / e_per_model, "concurrency": e_task / eng["wall_s"],
              "released_s_per_training": r_per_model, "engine_task_s_per_training": e_per_model}
    return rows, ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 images, k_max 128, 3 bisection steps (a smoke run, not the bar)")
    ap.add_argument("--n-test", type=int, default=12, help="sampled test images (default 12)")
    ap.add_argument("--metric", choices=sorted(SEARCH), default="removal")
    ap.add_argument("--k-max", type=int, help="default: the config's value for the metric (removal 128, mislabel 32)")
    ap.add_argument("--bisection-steps", type=int, help="default: the config's (removal 7, mislabel 5)")
    ap.add_argument("--seeds", type=int, default=5, help="models per probe (default 5: 3 agreeing models decide)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--parallelism", type=int, default=2, help="engine: submitit local processes at once")
    ap.add_argument("--images-per-task", type=int, default=3,
                    help="engine: answers per submitit task (launch.images_per_task; fewer process starts)")
    ap.add_argument("--bitwise-images", type=int, default=2, help="images whose k_max probe is retrained batched")
    ap.add_argument("--workdir", help="keep the inputs and the engine's answers here (default: a temp dir)")
    ap.add_argument("--json", help="also write the rows, ratios and checks here")
    a = ap.parse_args(argv)
    k_max, steps = SEARCH[a.metric]
    n_test = a.n_test
    if a.quick:
        n_test, k_max, steps = 3, 128, 3
    k_max = a.k_max if a.k_max is not None else k_max
    steps = a.bisection_steps if a.bisection_steps is not None else steps

    tmp = None
    if a.workdir:
        workdir = Path(a.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="simattr-bench-support-")
        workdir = Path(tmp.name)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}; models: numpy MLP, BLAS 1 thread per "
          f"process; load average {os.getloadavg()[0]:.2f}")
    print(f"# {DATASET}: {n_test} test images, {a.metric}, k_max {k_max}, bisection_steps {steps}, seeds {a.seeds}, "
          f"threshold {a.threshold}; ranker {ENCODER}/{RANKER} (class-conditioned); model {RECIPE.name} hidden "
          f"{RECIPE.hidden}, {RECIPE.steps} steps, lr {RECIPE.lr}; flip_models {FLIP_MODELS}")
    print("# engine: submitit local, parallelism "
          f"{a.parallelism}, {a.images_per_task} image(s) per task, early_stop true, monotone_checks 0 (the released protocol has no monotonicity checks)")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("# WARNING: the machine is busy (load average above half the CPUs): the engine's two processes and "
              "the released arm's one compete with other work; the wall times are noisy")
    t = time.perf_counter()
    queries, score_files = make_inputs(workdir, n_test)
    print(f"# inputs (queries + scores, shared, not timed): {time.perf_counter() - t:.1f} s in {workdir}")
    sys.stdout.flush()

    kw = dict(metric=a.metric, k_max=k_max, steps=steps, seeds=a.seeds, threshold=a.threshold)
    rel = run_released(queries, score_files, n_bitwise=a.bitwise_images, **kw)
    eng = run_engine(queries, score_files, workdir, parallelism=a.parallelism, images_per_task=a.images_per_task,
                     **kw)
    print(f"# load average after both arms {os.getloadavg()[0]:.2f} (the arms' own processes included)")
    cmp = compare(rel, eng)
    bit = bitwise_batching(rel, a.seeds)
    rows, ratios = summarise(rel, eng, a.seeds)

    print()
    print("| protocol | answers | flipped within k_max | trainings per answer (mean) | probes per answer "
          "| wall s per answer | wall s total |")
    print("|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['protocol']} | {r['answers']} | {r['flipped']} | {r['trainings_per_answer']:.2f} "
              f"| {r['probes_per_answer']:.2f} | {r['wall_s_per_answer']:.3f} | {r['wall_s']:.1f} |")
    print()
    print(f"wall time per answer, released / engine: {ratios['wall']:.2f}x   "
          f"trainings per answer, released / engine: {ratios['trainings']:.2f}x")
    print(f"where the wall ratio comes from ({ratios['wall']:.2f} = {ratios['trainings']:.2f} x "
          f"{ratios['per_training']:.2f} x {ratios['concurrency']:.2f}):")
    print(f"  fewer trainings          {ratios['trainings']:.2f}x  = protocol {ratios['trainings_protocol']:.2f}x "
          f"(k = 0 from full-data models, k = 0 answers) x early-settled probes {ratios['trainings_early_stop']:.2f}x")
    print(f"  time per training        {ratios['per_training']:.2f}x  (released {ratios['released_s_per_training']*1e3:.1f}"
          f" ms/model; engine, inside its tasks, {ratios['engine_task_s_per_training']*1e3:.1f} ms/model: two "
          "processes sharing the machine, journal writes and input reading)")
    if bit["single_ms_per_model"] is not None:
        print(f"  stacked training of a probe's seeds (models.train_mlp, not used: slower on CPU), same k_max probes, "
              f"this process, after both arms: one at a time "
              f"{bit['single_ms_per_model']:.1f} ms/model; batched " + ", ".join(
                  f"{n}: {v:.1f}" for n, v in bit["batched_ms_per_model"].items()) + " ms/model")
    print(f"  concurrency              {ratios['concurrency']:.2f}x  (sum of the engine's task wall / its stage "
          f"wall: {a.parallelism} process(es), less process start and polling)")
    first = models_needed(0, 0, a.seeds, a.threshold)
    print(f"  ceiling without k = 0 answers: every probe settled by its first {first} of {a.seeds} models "
          f"({a.seeds / first:.2f}x) x {a.parallelism} processes, no overhead, at the released time per model = "
          f"{a.seeds / first * a.parallelism:.2f}x")
    print()
    n = len(rel["answers"])
    print(f"answers identical: {len(cmp['same'])} of {n - len(cmp['k0_answers'])} (images whose engine k = 0 probe "
          f"did not flip); k = 0 flipped (engine answers 0, released bisects): {len(cmp['k0_answers'])}"
          + "".join(f"\n  test image {d['test_index']}: engine 0, released {d['released']}" for d in cmp["k0_answers"]))
    print(f"probe decisions at the same k: {cmp['probes_compared'] - len(cmp['probe_differ'])} of "
          f"{cmp['probes_compared']} identical")
    print(f"models with the same seed (engine journals vs released): {cmp['models_compared'] - len(cmp['model_differ'])}"
          f" of {cmp['models_compared']} identical (predicted class and margin to 1e-6)")
    print(f"stacked training: {bit['bitwise_equal']} of {bit['models']} stacked models bitwise equal to single-seed "
          f"training (max |diff| {bit['max_abs_diff']:.3g})")
    bar = ratios["wall"] >= 3.0 and not cmp["differ"]
    print(f"bar (>= 3x less wall time per answer, same answers): {'holds' if bar else 'does NOT hold'}"
          + (" (--quick: a smoke run, not the bar)" if a.quick else ""))

    if a.json:
        out = {"settings": {"dataset": DATASET, "n_test": n_test, "metric": a.metric, "k_max": k_max,
                            "bisection_steps": steps, "seeds": a.seeds, "threshold": a.threshold,
                            "parallelism": a.parallelism, "ranker": f"{ENCODER}/{RANKER}", "model": RECIPE.identity(),
                            "quick": a.quick},
               "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                           "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
               "rows": list(rows.values()), "ratios": ratios, "bitwise_batching": bit,
               "comparison": {k: v for k, v in cmp.items()},
               "answers": [{"test_index": t, "released": rel["answers"][t]["support"],
                            "engine": eng["answers"][t]["support"]} for t in rel["answers"]]}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if tmp is not None:
        tmp.cleanup()
    failed = False
    if cmp["differ"]:
        failed = True
        print("ERROR: answers differ between the released protocol and the engine: "
              + "; ".join(f"test image {d['test_index']}: released {d['released']}, engine {d['engine']}"
                          for d in cmp["differ"]), file=sys.stderr)
    if cmp["probe_differ"]:
        failed = True
        print("ERROR: probe decisions differ at the same k: " + "; ".join(
            f"test image {d['test_index']} k={d['k']}: released {d['released']}, engine {d['engine']}"
            for d in cmp["probe_differ"]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
