"""`simattr <stage> ...`: the entry points the workflow rules call. Every user error is one line on stderr."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from .errors import SimattrError


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    k, v = text.split("=", 1)
    for cast in (int, float):       # YAML 1.1 reads "1e-05" as a string; numbers come first
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, yaml.safe_load(v)


def _bool(text: str) -> bool:
    v = yaml.safe_load(text)
    if not isinstance(v, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return v


def _opt(cast):
    def parse(text: str):
        return None if text in ("None", "none", "") else cast(text)
    parse.__name__ = cast.__name__
    return parse


def _setup_logging(path: str | None) -> None:
    logger = logging.getLogger("simattr")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    """The dataset's spec (datasets.Spec.cli_args writes these)."""
    p.add_argument("--dataset", required=True, help="digits, cifar10, imagenet or imagefolder")
    p.add_argument("--dataset-root", default=None, help="local folder of cifar10 / imagenet / imagefolder")
    p.add_argument("--test-fraction", type=float, default=0.2, help="digits: held-out fraction")
    p.add_argument("--split-seed", type=int, default=0, help="digits: seed of the stratified split")
    p.add_argument("--image-size", type=int, default=None, help="folder datasets: decoded size (default 224)")
    p.add_argument("--bad-images", default="error", help="folder datasets: error or skip unreadable files")


def _spec(a):
    from .datasets import Spec

    return Spec(name=a.dataset, root=a.dataset_root, test_fraction=a.test_fraction, split_seed=a.split_seed,
                image_size=a.image_size, bad_images=a.bad_images)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", help="mlp, resnet9 or resnet18")
    p.add_argument("--hidden", type=int, default=64, help="mlp: hidden width")
    p.add_argument("--steps", type=int, default=100, help="mlp: full-batch Adam steps")
    p.add_argument("--lr", type=float, required=True, help="mlp: Adam's; resnet9/18: the schedule's peak")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=24, help="resnet9, resnet18")
    p.add_argument("--batch-size", type=int, default=512, help="resnet9, resnet18")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="resnet9, resnet18")
    p.add_argument("--deterministic", type=_bool, default=False, help="resnet9, resnet18 on CUDA: deterministic "
                   "algorithms only (the same seed gives the same bits on one GPU type; slower)")


def _recipe(a):
    from .models import Recipe

    return Recipe(name=a.model, hidden=a.hidden, steps=a.steps, lr=a.lr, weight_decay=a.weight_decay,
                  epochs=a.epochs, batch_size=a.batch_size, label_smoothing=a.label_smoothing,
                  deterministic=a.deterministic)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simattr", description=__doc__)
    ap.add_argument("--log", help="also write the log to this file")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the workflow gave this job (the rule's gpu "
                    "resource): with N > 0 the job stops at once, in one line, if torch finds no usable CUDA "
                    "device (SIMATTR_ALLOW_CPU=1 runs it on the CPU anyway)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train-encoder", help="make an encoder state: train simclr / supervised on the train split, "
                       "or import resnet from --param checkpoint=FILE")
    _dataset_args(p)
    p.add_argument("--encoder", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)

    p = sub.add_parser("embed", help="embed one shard of a split (--shard, --out) or the whole split (--out-dir)")
    _dataset_args(p)
    p.add_argument("--encoder", required=True)
    p.add_argument("--state", help="encoder state (.pt) of encoders made by a rule of their own")
    p.add_argument("--split", required=True)
    p.add_argument("--shard-size", type=int, default=0)
    p.add_argument("--shard", type=int, help="embed only this shard, into --out")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and encoded at once")
    p.add_argument("--float16", type=_bool, default=False, help="store features as float16")
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes (0: in this process)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the shard file (with --shard)")
    where.add_argument("--out-dir", help="folder of the split's shards and index.json (without --shard)")

    p = sub.add_parser("embed-index", help="check a split's shards against the settings, write index.json")
    _dataset_args(p)
    p.add_argument("--encoder", required=True)
    p.add_argument("--state", help="encoder state (.pt) of encoders made by a rule of their own")
    p.add_argument("--split", required=True)
    p.add_argument("--shards", nargs="*", default=[])
    p.add_argument("--out", required=True)

    p = sub.add_parser("score", help="score one class's test images against the training images")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--ranker", required=True)
    p.add_argument("--class", dest="cls", type=int, required=True)
    p.add_argument("--train-index", required=True)
    p.add_argument("--test-index", required=True)
    p.add_argument("--class-conditioned", type=_bool, default=True)
    p.add_argument("--topk", type=int, required=True)
    p.add_argument("--C", type=_opt(float), default=0.1)
    p.add_argument("--tol", type=_opt(float), default=1e-6)
    p.add_argument("--max-iter", type=_opt(int), default=10000)
    p.add_argument("--random-seed", type=_opt(int), default=0)
    p.add_argument("--chunk-size", type=_opt(int), default=128, help="queries solved together (esvm, knn)")
    p.add_argument("--device", type=_opt(str), default="auto", help="auto, cpu or cuda (esvm, knn)")
    p.add_argument("--neighbours", type=_opt(int), default=10, help="esvm_signed: neighbours naming the runner-up")
    p.add_argument("--out", required=True)

    p = sub.add_parser("score-model", help="score one class's test images with a model-based ranker (trak, "
                       "datamodels)")
    _dataset_args(p)
    p.add_argument("--ranker", required=True, choices=["trak", "datamodels"])
    p.add_argument("--class", dest="cls", type=int, required=True)
    p.add_argument("--class-conditioned", type=_bool, default=True)
    p.add_argument("--topk", type=int, required=True)
    p.add_argument("--trak-scores", help="trak: the attribution file of the trak rule")
    p.add_argument("--subsets", nargs="*", default=[], help="datamodels: the subset-model shards")
    p.add_argument("--n-alphas", type=_opt(int), default=8, help="datamodels: Lasso strengths tried per test image")
    p.add_argument("--val-fraction", type=_opt(float), default=0.1, help="datamodels: models held out to choose it")
    p.add_argument("--out", required=True)

    p = sub.add_parser("subsets", help="train one shard of models on random subsets of the training set "
                       "(datamodels, LDS), resuming from its journal")
    _dataset_args(p)
    _model_args(p)
    p.add_argument("--purpose", required=True, choices=["datamodels", "lds"])
    p.add_argument("--alpha", type=float, required=True, help="fraction of the training set each model keeps")
    p.add_argument("--models", type=int, required=True, help="subset models of this purpose in all")
    p.add_argument("--shard-size", type=int, required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("trak-checkpoints", help="train the full-data models TRAK attributes")
    _dataset_args(p)
    _model_args(p)
    p.add_argument("--checkpoints", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("trak", help="TRAK scores of every test image against every training image (traker)")
    _dataset_args(p)
    _model_args(p)
    p.add_argument("--checkpoints-file", required=True)
    p.add_argument("--proj-dim", type=int, required=True)
    p.add_argument("--projector-seed", type=int, default=0)
    p.add_argument("--trak-batch-size", type=int, default=512)
    p.add_argument("--lambda-reg", type=float, default=0.0, help="ridge term added to TRAK's Phi^T Phi")
    p.add_argument("--out", required=True)

    p = sub.add_parser("lds", help="linear datamodeling score of one method's scores")
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--subsets", nargs="+", required=True, help="the LDS subset-model shards")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("queries", help="train full-data models, sample test images, find their flip classes")
    _dataset_args(p)
    _model_args(p)
    p.add_argument("--n-test", type=int, required=True)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--flip-models", type=int, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("support", help="removal or mislabel support of the sampled test images (submitit array)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--ranker", required=True)
    p.add_argument("--metric", required=True, choices=["removal", "mislabel"])
    p.add_argument("--queries", required=True)
    p.add_argument("--scores", nargs="+", required=True)
    _model_args(p)
    p.add_argument("--k-max", type=int, required=True)
    p.add_argument("--bisection-steps", type=int, required=True)
    p.add_argument("--seeds", type=int, required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--early-stop", type=_bool, default=True)
    p.add_argument("--monotone-checks", type=int, default=1)
    p.add_argument("--engine", required=True, choices=["adaptive", "bisection"])
    p.add_argument("--seed-set", type=int, required=True)
    p.add_argument("--replicates", type=int, required=True)
    p.add_argument("--seeds-min", type=int, required=True)
    p.add_argument("--seeds-max", type=int, required=True)
    p.add_argument("--max-models", type=int, required=True)
    p.add_argument("--confidence", type=float, required=True)
    p.add_argument("--cluster", default="local")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--signal-delay-s", type=int, default=90)
    p.add_argument("--max-requeues", type=int, default=3)
    p.add_argument("--images-per-task", type=int, default=3)
    p.add_argument("--answers-at-once", type=int, default=1, help="of a task's images, answered at once in "
                   "processes sharing its GPU")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--mem-gb", type=float, default=4.0)
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--submitit-dir", required=True)
    p.add_argument("--answers-dir", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("report", help="tables and plots comparing the methods' support sizes")
    _dataset_args(p)
    p.add_argument("--manifest", default=None, help="JSON file of the long lists (the workflow's way: ImageNet's "
                   "run past the 128 KiB limit of one command line): keys gathers, scores, benchmarks, stored, "
                   "lds, method_costs, each a list of strings as the flags of the same names take them")
    p.add_argument("--gathers", nargs="+", default=[])
    p.add_argument("--scores", nargs="*", default=[])
    p.add_argument("--benchmarks", nargs="*", default=[], help="STAGE=FILE snakemake benchmark files")
    p.add_argument("--stored", nargs="*", default=[], help="STAGE=PATH folders whose bytes are counted")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-images", type=int, default=4)
    p.add_argument("--lds", nargs="*", default=[], help="the methods' LDS files")
    p.add_argument("--overlap-k", type=int, nargs="+", default=[10, 100], help="top-k sizes of the overlap table")
    p.add_argument("--method-costs", nargs="*", default=[], help="METHOD|KIND|VALUE entries of the cost table "
                   "(KIND: bench, usage, stored, models)")
    p.add_argument("--out-dir", required=True)
    return ap


def usage_path(log_path: str | Path) -> Path:
    """Where a command run with --log LOG records what it used: LOG with the suffix .usage.json."""
    return Path(log_path).with_suffix(".usage.json")


def _write_usage(log_path: str, cmd: str, t0: float) -> None:
    """{cmd, wall_s, cpu_s, cuda, gpu}: whether this command had a CUDA device (torch imported and a device
    present: its wall seconds count as GPU seconds in the report's cost table)."""
    import os
    import time

    from . import store
    from .accel import cuda_in_use

    cuda = cuda_in_use()
    t = os.times()
    store.write_json(usage_path(log_path), {
        "cmd": cmd, "wall_s": round(time.perf_counter() - t0, 3),
        "cpu_s": round(t.user + t.system + t.children_user + t.children_system, 3), "cuda": cuda,
        "gpu": sys.modules["torch"].cuda.get_device_name(0) if cuda else None})


def run(argv: list[str] | None = None) -> int:
    import time

    t0 = time.perf_counter()
    a = build_parser().parse_args(argv)
    _setup_logging(a.log)
    from . import accel

    accel.claim(f"simattr {a.cmd}" + (f" (log {a.log})" if a.log else ""), a.gpus)
    _dispatch(a)
    if a.log:
        _write_usage(a.log, a.cmd, t0)
    return 0


def _dispatch(a) -> None:
    progress = not a.no_progress
    from . import answers, embedding, lds, report, scoring, trak

    if a.cmd == "train-encoder":
        embedding.train_encoder(data=_spec(a), encoder=a.encoder, params=dict(a.param), seed=a.seed, out=a.out,
                             progress=progress)
    elif a.cmd == "embed":
        kw = dict(data=_spec(a), encoder=a.encoder, split=a.split, shard_size=a.shard_size, state_path=a.state,
                  batch_size=a.batch_size, float16=a.float16, workers=a.workers, progress=progress)
        if (a.shard is None) != (a.out is None):
            raise SimattrError("embed: give --shard with --out, or --out-dir alone")
        if a.shard is None:
            embedding.embed(out_dir=a.out_dir, **kw)
        else:
            embedding.embed_shard(shard=a.shard, out=a.out, **kw)
    elif a.cmd == "embed-index":
        embedding.embed_index(data=_spec(a), encoder=a.encoder, split=a.split, shards=a.shards, out=a.out,
                           state_path=a.state)
    elif a.cmd == "score":
        scoring.score_class(dataset=a.dataset, encoder=a.encoder, ranker=a.ranker, cls=a.cls,
                           train_index=a.train_index, test_index=a.test_index,
                           class_conditioned=a.class_conditioned, topk=a.topk,
                           esvm={"C": a.C, "tol": a.tol, "max_iter": a.max_iter, "chunk_size": a.chunk_size,
                                 "device": a.device, "neighbours": a.neighbours}, random_seed=a.random_seed or 0,
                           out=a.out, progress=progress)
    elif a.cmd == "score-model":
        scoring.score_model_class(data=_spec(a), ranker=a.ranker, cls=a.cls, class_conditioned=a.class_conditioned,
                                 topk=a.topk, out=a.out, trak_scores=a.trak_scores, subset_shards=a.subsets,
                                 datamodels={"n_alphas": a.n_alphas or 8, "val_fraction": a.val_fraction or 0.1},
                                 progress=progress)
    elif a.cmd == "subsets":
        from . import subsets

        subsets.train_shard(data=_spec(a), purpose=a.purpose, alpha=a.alpha, n_models=a.models,
                            shard_size=a.shard_size, shard=a.shard, recipe=_recipe(a), out=a.out, progress=progress)
    elif a.cmd == "trak-checkpoints":
        trak.trak_checkpoints(data=_spec(a), recipe=_recipe(a), n_checkpoints=a.checkpoints, seed=a.seed,
                                out=a.out, progress=progress)
    elif a.cmd == "trak":
        trak.trak_attributions(data=_spec(a), recipe=_recipe(a), checkpoints=a.checkpoints_file,
                                 proj_dim=a.proj_dim, projector_seed=a.projector_seed, batch_size=a.trak_batch_size,
                                 lambda_reg=a.lambda_reg,
                                 out=a.out, progress=progress)
    elif a.cmd == "lds":
        lds.lds_stage(score_files=a.scores, subset_shards=a.subsets, n_boot=a.n_boot, seed=a.seed, out=a.out)
    elif a.cmd == "queries":
        from . import support

        support.prepare_queries(data=_spec(a), n_test=a.n_test, sample_seed=a.sample_seed, flip_models=a.flip_models,
                                recipe=_recipe(a), out_path=a.out, log=logging.getLogger("simattr"))
    elif a.cmd == "support":
        from . import support
        from .launch import LaunchSettings

        r = _recipe(a)
        settings = support.engine_settings({
            "dataset": a.dataset, "encoder": a.encoder, "ranker": a.ranker, "k_max": a.k_max,
            "threshold": a.threshold, "seed_set": a.seed_set, "engine": a.engine, "model": r.identity(),
            "bisection_steps": a.bisection_steps, "seeds": a.seeds, "early_stop": a.early_stop,
            "monotone_checks": a.monotone_checks, "seeds_min": a.seeds_min, "seeds_max": a.seeds_max,
            "max_models": a.max_models, "confidence": a.confidence})
        support.check_settings(settings)
        launch = LaunchSettings(cluster=a.cluster, folder=a.submitit_dir, parallelism=a.parallelism,
                                timeout_min=a.timeout_min, cpus_per_task=a.cpus_per_task,
                                gpus_per_node=a.gpus_per_node, mem_gb=a.mem_gb,
                                slurm_partition=a.slurm_partition or None, signal_delay_s=a.signal_delay_s,
                                max_requeues=a.max_requeues, images_per_task=a.images_per_task,
                                answers_at_once=a.answers_at_once)
        answers.support_stage(queries=a.queries, score_files=a.scores, answers_dir=a.answers_dir,
                             gather_out=a.out, metric=a.metric, settings=settings, launch=launch, progress=progress,
                             replicates=a.replicates)
    elif a.cmd == "report":
        if a.manifest:
            _read_report_manifest(a)
        if not a.gathers:
            raise SimattrError("report: no support gathers given (--gathers or a --manifest with 'gathers')")
        report.report_stage(data=_spec(a), gathers=a.gathers, score_files=a.scores,
                            benchmarks=[b.split("=", 1) for b in a.benchmarks],
                            stored=[s.split("=", 1) for s in a.stored], n_boot=a.n_boot, seed=a.seed,
                            grid_images=a.grid_images, out_dir=a.out_dir, lds_files=a.lds, overlap_k=a.overlap_k,
                            method_cost_entries=[_cost_entry(e) for e in a.method_costs])


def _read_report_manifest(a: argparse.Namespace) -> None:
    """Fill the report's list arguments from --manifest (what the workflow's report_manifest rule writes)."""
    from . import store

    keys = store.REPORT_MANIFEST_KEYS
    m = store.read_json(a.manifest)
    if not isinstance(m, dict):
        raise SimattrError(f"{a.manifest}: expected a JSON object with keys {', '.join(keys)}")
    for key in keys:
        if key not in m:
            continue            # the flag of the same name (or its default) stands
        v = m[key]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise SimattrError(f"{a.manifest}: '{key}' must be a list of strings")
        setattr(a, key, v)
    unknown = sorted(set(m) - set(keys))
    if unknown:
        raise SimattrError(f"{a.manifest}: unknown keys {unknown}; expected {', '.join(keys)}")


def _cost_entry(text: str) -> tuple[str, str, str]:
    parts = text.split("|", 2)
    if len(parts) != 3:
        raise SimattrError(f"--method-costs entry '{text}': expected METHOD|KIND|VALUE")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except SimattrError as e:
        print(f"simattr: error: {e}", file=sys.stderr)
        for h in logging.getLogger("simattr").handlers:     # the rule's log file gets it too
            if isinstance(h, logging.FileHandler):
                h.handle(logging.makeLogRecord({"msg": f"error: {e}", "levelno": logging.ERROR,
                                                "levelname": "ERROR"}))
        return 2
    except KeyboardInterrupt:
        print("simattr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
