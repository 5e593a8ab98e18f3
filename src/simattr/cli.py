"""`simattr <stage> ...`: the entry points the workflow rules call. Every user error is one line on stderr."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import accel, embedding, export, lds, plan, queries, scoring, settings, store, subsets, trak, typed
from . import config as sconfig
from .accel import cuda_in_use
from .config import METRICS, MODEL_RANKERS
from .datasets import SPLITS
from .errors import SimattrError
from .explain import DEFAULT_K, DEFAULT_METHOD, RANKERS, explain_command
from .settings import JOBS
from .subsets import PURPOSES


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


@dataclass(frozen=True)
class Command:
    """One `simattr` command: its job's settings (settings.JOBS: the same name) and wildcards, and the stage it
    runs (its other arguments: ARGS)."""
    name: str
    help: str
    run: Callable[[argparse.Namespace, Any, bool], None]

    @property
    def wildcards(self) -> tuple[str, ...]:
        """The job's wildcards (settings.JOBS): flags of the command that its settings depend on."""
        return JOBS[self.name][1]


@functools.cache
def _load_config(path: str) -> dict:
    return sconfig.load(path)


def _config(a: argparse.Namespace) -> dict:
    """The --config file, validated (read once per process however many settings are made from it), else the
    schema's defaults."""
    return _load_config(a.config) if a.config else sconfig.defaults()


def job_settings(a: argparse.Namespace, job: str, wildcards: tuple[str, ...]):
    """The job's settings: --settings JSON (the workflow's way) or built from --config FILE (by hand; the
    schema's defaults fill what the file leaves out)."""
    kw = {w: getattr(a, w) for w in wildcards}
    if a.config:
        return settings.parse(job, settings.for_job(job, _config(a), **kw),
                              where=a.config, **kw)
    return settings.parse(job, a.settings, **kw)


def _launch(a: argparse.Namespace):
    """The support tasks' launch settings: --launch KEY=VALUE ... (the workflow passes the `launch` section as
    resources: how tasks run changes no answer) or the --config file's."""
    from .launch import LaunchSettings          # submitit

    return LaunchSettings.from_settings(_launch_dict(a), folder=a.submitit_dir, where="--launch")


# The arguments that are not settings: the job's wildcards, its input and output paths, resources.
def _arg(*flags: str, **kw) -> tuple[tuple[str, ...], dict]:
    return flags, kw


OUT = _arg("--out", required=True)
ENCODER = _arg("--encoder", required=True)
RANKER = _arg("--ranker", required=True)
STATE = _arg("--state", help="encoder state (.pt) of encoders made by a rule of their own")
SPLIT = _arg("--split", required=True, choices=SPLITS)
CLASS = _arg("--class", dest="cls", type=int, required=True)
ONE_OF = "one of"    # a spec (ONE_OF, spec, spec, ...): a required choice between flags
ARGS = {
    "train-encoder": (ENCODER, OUT),
    "embed": (ENCODER, STATE, SPLIT, _arg("--shard", type=int, help="embed only this shard, into --out"),
              _arg("--workers", type=int, help="image-decoding processes (0: in this process; default: embed.workers "
                   "of --config, or the schema's); the workflow passes embed.workers (a resource: it changes no "
                   "result)"),
              (ONE_OF, _arg("--out", help="the shard file (with --shard)"),
               _arg("--out-dir", help="folder of the split's shards and index.json (without --shard)"))),
    "embed-index": (ENCODER, STATE, SPLIT, _arg("--shards", nargs="*", default=[]), OUT),
    "score": (ENCODER, RANKER, CLASS, _arg("--train-index", required=True), _arg("--test-index", required=True),
              OUT),
    "score-model": (_arg("--ranker", required=True, choices=MODEL_RANKERS), CLASS,
                    _arg("--trak-scores", help="trak: the attribution file of the trak rule"),
                    _arg("--subsets", nargs="*", default=[], help="datamodels: the subset-model shards"), OUT),
    "score-external": (_arg("--ranker", required=True, help="the external method's name"), CLASS,
                       _arg("--scores", required=True, help="its scores file (config: the method's path)"),
                       _arg("--index", help="its index file, when the scores cover only some test images"), OUT),
    "export": (_arg("--queries", required=True), _arg("--checkpoints-file", required=True),
               _arg("--lds-subsets", nargs="*", default=[], help="the LDS subset-model shards (their masks and "
                    "margins are exported)"),
               _arg("--embeddings", nargs="*", default=[], metavar="ENCODER:SPLIT:INDEX",
                    help="features to export: an encoder's index.json of a split"),
               _arg("--out-dir", required=True)),
    "subsets": (_arg("--purpose", required=True, choices=PURPOSES),
                _arg("--shard", type=int, required=True), OUT),
    "trak-checkpoints": (OUT,),
    "trak": (_arg("--checkpoints-file", required=True), OUT),
    "lds": (_arg("--scores", nargs="+", required=True),
            _arg("--subsets", nargs="+", required=True, help="the LDS subset-model shards"), OUT),
    "queries": (OUT,),
    "support": (ENCODER, RANKER, _arg("--metric", required=True, choices=METRICS),
                _arg("--queries", required=True), _arg("--scores", nargs="+", required=True),
                _arg("--launch", nargs="+", metavar="KEY=VALUE", help="every key of the `launch` section (how "
                     "the tasks run: the workflow passes them from the support rule's resources, which the SLURM "
                     "profile may override); default: the --config file's, or the schema's"),
                _arg("--submitit-dir", required=True), _arg("--answers-dir", required=True), OUT),
    "method-figures": (_arg("--gathers", nargs="+", required=True, help="the method's support gathers"),
                       _arg("--scores", nargs="+", required=True, help="the method's score files"),
                       _arg("--out-dir", required=True)),
    "plan": (_arg("--time-per-model", type=float, help="seconds to train one retrained model (default: the "
                  "calibration file's, else an earlier run's answers', else unknown)"),
             _arg("--calibration", help="a calibration file (default: RESULTS/DATASET/plan/calibration.json)"),
             _arg("--no-history", action="store_true", help="leave an earlier run's answers out (the plan made before "
                  "the run: what the report compares against)"),
             _arg("--launch", nargs="+", metavar="KEY=VALUE", help="the `launch` section (default: the --config "
                  "file's, or the schema's)"),
             _arg("--json", help="also write the plan as JSON to this file")),
    "calibrate": (_arg("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (cuda "
                       "without a CUDA device is one line)"),
                  _arg("--timed-steps", type=int, default=4, help="CNNs: SGD steps timed (after a warm-up)"),
                  _arg("--out", help="default: RESULTS/DATASET/plan/calibration.json, where the plan finds it")),
    "report": (_arg("--manifest", help="JSON file of the long lists (the workflow's way: ImageNet's run past the "
                    "128 KiB limit of one command line): keys gathers, scores, benchmarks, stored, lds, "
                    "method_costs, each a list of strings as the flags of the same names take them"),
               _arg("--gathers", nargs="+", default=[]), _arg("--scores", nargs="*", default=[]),
               _arg("--benchmarks", nargs="*", default=[], help="STAGE=FILE snakemake benchmark files"),
               _arg("--stored", nargs="*", default=[], help="STAGE=PATH folders whose bytes are counted"),
               _arg("--lds", nargs="*", default=[], help="the methods' LDS files"),
               _arg("--method-costs", nargs="*", default=[], help="METHOD|KIND|VALUE entries of the cost table "
                    "(KIND: bench, usage, stored, models)"),
               _arg("--plan-settings", help="`simattr plan`'s settings: the report adds the planned-vs-spent table "
                    "(plan.csv) from the plan they make"),
               _arg("--calibration", help="with --plan-settings: the calibration file the plan reads, if any"),
               _arg("--launch", nargs="+", metavar="KEY=VALUE", help="with --plan-settings: the `launch` section"),
               _arg("--out-dir", required=True)),
}


def _add_args(p: argparse.ArgumentParser, specs) -> None:
    for spec in specs:
        if spec[0] == ONE_OF:
            group = p.add_mutually_exclusive_group(required=True)
            for flags, kw in spec[1:]:
                group.add_argument(*flags, **kw)
        else:
            p.add_argument(*spec[0], **spec[1])


def _train_encoder(a, s, progress):
    embedding.train_encoder(data=s.dataset, encoder=a.encoder, params=s.params, seed=s.seed, out=a.out,
                            progress=progress)


def _workers(a) -> int:
    """--workers, else embed.workers of the --config file, else the schema's."""
    if a.workers is not None:
        return a.workers
    return _config(a)["embed"]["workers"]


def _embed(a, s, progress):
    kw = dict(data=s.dataset, encoder=a.encoder, split=a.split, shard_size=s.shard_size, state_path=a.state,
              batch_size=s.batch_size, float16=s.float16, workers=_workers(a), progress=progress)
    if (a.shard is None) != (a.out is None):
        raise SimattrError("embed: give --shard with --out, or --out-dir alone")
    if a.shard is None:
        embedding.embed(out_dir=a.out_dir, **kw)
    else:
        embedding.embed_shard(shard=a.shard, out=a.out, **kw)


def _embed_index(a, s, progress):
    embedding.embed_index(data=s.dataset, encoder=a.encoder, split=a.split, shards=a.shards, out=a.out,
                          state_path=a.state)


def _score(a, s, progress):
    scoring.score_class(data=s.dataset, encoder=a.encoder, ranker=a.ranker, cls=a.cls, train_index=a.train_index,
                        test_index=a.test_index, class_conditioned=s.class_conditioned, topk=s.topk,
                        ranker_settings=s.ranker, out=a.out, progress=progress)


def _score_model(a, s, progress):
    scoring.score_model_class(data=s.dataset, ranker=a.ranker, cls=a.cls, class_conditioned=s.class_conditioned,
                              topk=s.topk, out=a.out, trak_scores=a.trak_scores, subset_shards=a.subsets,
                              datamodels=s.ranker, progress=progress)


def _score_external(a, s, progress):
    scoring.score_external_class(data=s.dataset, name=a.ranker, cls=a.cls, scores_path=a.scores,
                                 index_path=a.index, class_conditioned=s.class_conditioned, topk=s.topk,
                                 source=s.source, out=a.out)


def _export(a, s, progress):
    embeddings = []
    for e in a.embeddings:
        parts = e.split(":", 2)
        if len(parts) != 3 or parts[1] not in SPLITS:
            raise SimattrError(f"--embeddings entry '{e}': expected ENCODER:SPLIT:INDEX (SPLIT: "
                               f"{' or '.join(SPLITS)})")
        embeddings.append(tuple(parts))
    export.export_stage(data=s.dataset, recipe=s.model, queries=a.queries, checkpoints=a.checkpoints_file,
                        lds_shards=a.lds_subsets, embeddings=embeddings, out_dir=a.out_dir)


def _subsets(a, s, progress):
    subsets.train_shard(data=s.dataset, purpose=a.purpose, alpha=s.alpha, n_models=s.models,
                        shard_size=s.shard_size, shard=a.shard, recipe=s.model, out=a.out, progress=progress)


def _trak_checkpoints(a, s, progress):
    trak.trak_checkpoints(data=s.dataset, recipe=s.model, n_checkpoints=s.checkpoints, seed=s.seed, out=a.out,
                          progress=progress)


def _trak(a, s, progress):
    if s.projector != trak.PROJECTOR:
        raise SimattrError(f"settings ask for TRAK projector {s.projector!r}; this simattr computes "
                           f"{trak.PROJECTOR!r}")
    trak.trak_attributions(data=s.dataset, recipe=s.model, checkpoints=a.checkpoints_file, proj_dim=s.proj_dim,
                           projector_seed=s.projector_seed, batch_size=s.batch_size, lambda_reg=s.lambda_reg,
                           out=a.out, progress=progress)


def _lds(a, s, progress):
    lds.lds_stage(score_files=a.scores, subset_shards=a.subsets, n_boot=s.n_boot, seed=s.seed, out=a.out)


def _queries(a, s, progress):
    queries.prepare_queries(data=s.dataset, n_test=s.n_test, sample_seed=s.sample_seed, flip_models=s.flip_models,
                            recipe=s.model, out_path=a.out, log=logging.getLogger("simattr"))


def _support(a, s, progress):
    from .support.stage import support_stage    # submitit (simattr.launch)

    support_stage(queries=a.queries, score_files=a.scores, answers_dir=a.answers_dir, gather_out=a.out,
                  metric=a.metric, settings=s.support, launch=_launch(a), progress=progress, replicates=s.replicates)


def _launch_dict(a) -> dict:
    """The `launch` section as a dict: --launch KEY=VALUE ... or the --config file's (or the schema's)."""
    if a.launch:
        return typed.key_values(a.launch, "--launch")
    return settings.launch(_config(a))


def _plan(a, s, progress):
    p = plan.make_plan(vars(s) | {"dataset": s.dataset.identity(), "model": s.model.identity()}, _launch_dict(a),
                       time_per_model_s=a.time_per_model, calibration_path=a.calibration, history=not a.no_history)
    sys.stdout.write(plan.render(p))
    if a.json:
        plan.write_plan(p, a.json)


def _calibrate(a, s, progress):
    c = plan.calibrate({"results": s.results, "dataset": s.dataset.identity(), "model": s.model.identity()},
                       device=a.device, out=a.out, steps=a.timed_steps, log=logging.getLogger("simattr"))
    sys.stdout.write(f"calibration: {c['model']} on {c['dataset']}, device {c['device']}"
                     f"{' (' + c['gpu'] + ')' if c['gpu'] else ''}: {c['time_per_model_s']:.4g} s per model "
                     f"({c['how']}); support task start {c['task_start_s']:.2f} s; written to {c['path']}\n")


def _method_figures(a, s, progress):
    from .report.method_figures import method_figures_stage

    method_figures_stage(data=s.dataset, gathers=a.gathers, score_files=a.scores, out_dir=a.out_dir)


def _report(a, s, progress):
    from . import report

    if a.manifest:
        _read_report_manifest(a)
    if not a.gathers:
        raise SimattrError("report: no support gathers given (--gathers or a --manifest with 'gathers')")
    planned = None
    if a.plan_settings:
        ps = settings.parse("plan", a.plan_settings, where="--plan-settings")
        planned = plan.make_plan(vars(ps) | {"dataset": ps.dataset.identity(), "model": ps.model.identity()},
                                 _launch_dict(a), calibration_path=a.calibration, history=False)
    report.report_stage(data=s.dataset, gathers=a.gathers, score_files=a.scores, plan=planned,
                        benchmarks=[b.split("=", 1) for b in a.benchmarks],
                        stored=[x.split("=", 1) for x in a.stored], n_boot=s.n_boot, seed=s.seed,
                        grid_images=s.grid_images, out_dir=a.out_dir, lds_files=a.lds, overlap_k=s.overlap_k,
                        method_cost_entries=[_cost_entry(e) for e in a.method_costs])


COMMANDS = {c.name: c for c in (
    Command("train-encoder", "make an encoder state: train simclr / supervised on the train split, or import "
            "resnet from its checkpoint", _train_encoder),
    Command("embed", "embed one shard of a split (--shard, --out) or the whole split (--out-dir)", _embed),
    Command("embed-index", "check a split's shards against the settings, write index.json", _embed_index),
    Command("score", "score one class's test images against the training images", _score),
    Command("score-model", "score one class's test images with a model-based ranker (trak, datamodels)",
            _score_model),
    Command("score-external", "one class's score file from an outside method's scores (config: {encoder: "
            "external, ranker: scores, name: NAME, path: FILE})", _score_external),
    Command("export", "write what an outside method needs to attribute the evaluated models: data, labels, "
            "checkpoints, sampled test images, LDS subsets", _export),
    Command("subsets", "train one shard of models on random subsets of the training set (datamodels, LDS), "
            "resuming from its journal", _subsets),
    Command("trak-checkpoints", "train the full-data models TRAK attributes", _trak_checkpoints),
    Command("trak", "TRAK scores of every test image against every training image (traker)", _trak),
    Command("lds", "linear datamodeling score of one method's scores", _lds),
    Command("queries", "train full-data models, sample test images, find their flip classes", _queries),
    Command("support", "removal or mislabel support of the sampled test images (submitit array)", _support),
    Command("report", "tables and plots comparing the methods' support sizes", _report),
    Command("plan", "what a config's run will cost before it runs: jobs, models trained (expected, bound), hours, "
            "memory, bytes per stage", _plan),
    Command("calibrate", "time the config's retrained model on this machine (a bounded slice, extrapolated) for "
            "the plan", _calibrate),
    Command("method-figures", "one method's pages of the HTML report: its top-k grid and a flip-curve figure per "
            "answer", _method_figures),
)}


def _explain_parser(sub) -> None:
    """`simattr explain`: not a workflow job, so not in COMMANDS (no --settings); it reads a finished workflow's
    results."""
    p = sub.add_parser("explain", help="which training images a similarity method ranks first for your own "
                       "images (reads a finished workflow's results)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--config", help="the config the results were made with (default: config/config.yaml when it "
                   "exists here, else the schema's defaults)")
    p.add_argument("--results", help="the results folder (default: the config's `results`)")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"ENCODER/RANKER (rankers: {', '.join(RANKERS)}; "
                   f"default {DEFAULT_METHOD})")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"training images shown (default {DEFAULT_K})")
    p.add_argument("--label", help="the image's class (index or name); default: the full-data models' prediction")
    p.add_argument("--out", default="explain", help="folder of NAME.png and NAME.json (default: explain/)")


def _explain(a: argparse.Namespace) -> None:
    path = a.config or ("config/config.yaml" if Path("config/config.yaml").is_file() else None)
    c = sconfig.load(path) if path else sconfig.validate({})
    if a.results:
        c["results"] = a.results
    explain_command(config=c, method=a.method, images=a.images, k=a.k, label=a.label, out_dir=a.out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simattr", description=__doc__)
    ap.add_argument("--log", help="also write the log to this file")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs the workflow gave this job (the rule's gpu "
                    "resource): with N > 0 the job stops at once, in one line, if torch finds no usable CUDA "
                    "device (SIMATTR_ALLOW_CPU=1 runs it on the CPU anyway)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--settings", help="the job's settings as a JSON object (what the workflow passes: "
                         "only the keys this job reads)")
        src.add_argument("--config", help="a config file (YAML) to build the settings from; the schema's "
                         "defaults fill what it leaves out (for running a stage by hand)")
        _add_args(p, ARGS[c.name])
    _explain_parser(sub)
    return ap


def _write_usage(log_path: str, cmd: str, t0: float) -> None:
    """{cmd, wall_s, cpu_s, cuda, gpu}: whether this command had a CUDA device (torch imported and a device
    present: its wall seconds count as GPU seconds in the report's cost table)."""
    cuda = cuda_in_use()
    t = os.times()
    store.write_json(store.usage_path(log_path), {
        "cmd": cmd, "wall_s": round(time.perf_counter() - t0, 3),
        "cpu_s": round(t.user + t.system + t.children_user + t.children_system, 3), "cuda": cuda,
        "gpu": sys.modules["torch"].cuda.get_device_name(0) if cuda else None})


def run(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    a = build_parser().parse_args(argv)
    _setup_logging(a.log)
    accel.claim(f"simattr {a.cmd}" + (f" (log {a.log})" if a.log else ""), a.gpus)
    if a.cmd == "explain":
        _explain(a)
        return 0
    c = COMMANDS[a.cmd]
    c.run(a, job_settings(a, c.name, c.wildcards), not a.no_progress)
    if a.log:
        _write_usage(a.log, a.cmd, t0)
    return 0


def _read_report_manifest(a: argparse.Namespace) -> None:
    """Fill the report's list arguments from --manifest (what the workflow's report_manifest rule writes)."""
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
