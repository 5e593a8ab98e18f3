# Helpers shared by every rule: config validation (defaults filled in, one-line errors), the paths of
# the data contract (from simattr.store) and the input functions. Nothing heavy is imported here.
from simattr import config as sconfig
from simattr import external
from simattr import pipeline
from simattr import settings as ssettings
from simattr import store
from simattr.datasets import SPLITS, Spec, n_classes, split_size
from simattr.errors import SimattrError
from simattr.models import CNN_MODELS, Recipe
from simattr.subsets import PURPOSES
from snakemake.exceptions import WorkflowError
import os
import shlex
import shutil
import sys


# the rules call `simattr`; when Snakemake was started from a virtual environment that is not activated,
# find it beside the Python running Snakemake (conda rules put their own environment first anyway)
envvars:
    "PATH",


if shutil.which("simattr") is None:
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

try:
    _validated = sconfig.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except SimattrError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
config.clear()
config.update(_validated)

R = config["results"]
try:
    DATA = Spec.from_config(config["dataset"])
    CLASSES = list(range(n_classes(DATA)))
except SimattrError as e:
    raise WorkflowError(f"invalid dataset: {e}") from None
D = DATA.name
try:
    MODEL = Recipe.from_config(config["model"])
except SimattrError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None


#: every job's (stage, name): the names of its log, benchmark and usage record, in one place for the rules and the
#: report's lists; fields not given stay wildcards
JOB_FILES = {
    "train_encoder": ("embed", "train-{encoder}"),
    "import_resnet": ("embed", "import-resnet"),
    "embed_shard": ("embed", "{encoder}-{split}-shard-{shard}"),
    "embed_index": ("embed", "{encoder}-{split}"),
    "score": ("score", "{encoder}-{ranker}-class-{cls}"),
    "trak_checkpoints": ("attribution", "trak-checkpoints"),
    "trak": ("attribution", "trak"),
    "subsets": ("attribution", "subsets-{purpose}-{shard}"),
    "lds": ("attribution", "lds-{encoder}-{ranker}"),
    "queries": ("support", "queries"),
    "support": ("support", "{encoder}-{ranker}-{metric}"),
    "report_manifest": ("report", "manifest"),
    "report": ("report", "report"),
    "export": ("export", "export"),
    "method_figures": ("report", "figures-{encoder}-{ranker}"),
    "outside_scores": ("export", "outside-{name}"),
}


def job_log(job, **fields):
    stage, name = JOB_FILES[job]
    return path(store.LOG, stage=stage, name=store.fill(name, **fields))


def job_bench(job, **fields):
    stage, name = JOB_FILES[job]
    return path(store.BENCHMARK, stage=stage, name=store.fill(name, **fields))


ENV = "../../envs/simattr.yaml"  # relative to the rule files
METHODS = [sconfig.method_id(m) for m in config["methods"]]  # (encoder, ranker); external: (external, NAME)
EXTERNAL = sconfig.external_methods(config)  # NAME -> its method entry
#: NAME -> the command of each external method the workflow makes from the export (rule outside_scores)
MADE = {n: m["command"] for n, m in EXTERNAL.items() if m.get("command")}
try:  # each external method's files are there (their content hashes are its score jobs' identity), or are made
    for _m in EXTERNAL.values():
        external.source(_m)
        _made = f"{R}/{store.fill(store.OUTSIDE_SCORES, dataset=D, name=_m['name'])}"
        if _m.get("command") and _m["path"] != _made:
            raise SimattrError(f"a method made by its command is written to {_made}: set its path to that")
except SimattrError as e:
    raise WorkflowError(f"invalid configuration: config key 'methods': external method '{_m['name']}': {e}") from None
ENCODERS_USED = sorted({e for e, _ in METHODS if e in sconfig.FEATURE_ENCODERS})
if "resnet" in ENCODERS_USED and not config["encoders"]["resnet"]["checkpoint"]:
    raise WorkflowError(
        "invalid configuration: config key 'encoders.resnet.checkpoint': a method uses encoder resnet, "
        "so a local checkpoint file is required (nothing is downloaded)"
    )
try:  # shards per split: known from the dataset's listing, without decoding an image
    N_SHARDS = {s: len(store.shard_ranges(split_size(DATA, s), config["embed"]["shard_size"])) for s in SPLITS}
except SimattrError as e:
    raise WorkflowError(f"invalid dataset: {e}") from None
# subset-model shards per purpose (datamodels: only when a method uses it; lds: lds.models > 0)
N_SUBSET_SHARDS = {p: len(store.shard_ranges(config[p]["models"], config[p]["shard_size"])) for p in PURPOSES}
LDS_ON = config["lds"]["models"] > 0


wildcard_constraints:
    purpose="|".join(PURPOSES),
    encoder="|".join(sconfig.ENCODERS),
    ranker="|".join(sconfig.RANKERS + tuple(EXTERNAL)),
    metric="|".join(sconfig.METRICS),
    split="|".join(SPLITS),
    cls=r"\d+",
    shard=r"\d{5}",


def path(template, **kw):
    """A data-contract path under the results root; unspecified fields stay as wildcards."""
    return f"{R}/{store.fill(template, dataset=D, **kw)}"


def encoder_state(wildcards):
    if wildcards.encoder in sconfig.STATE_ENCODERS:
        return path(store.ENCODER_STATE, encoder=wildcards.encoder)
    return []


def resnet_checkpoint(wildcards):
    return config["encoders"]["resnet"]["checkpoint"]


def split_shards(wildcards):
    return [
        path(store.EMBED_SHARD, encoder=wildcards.encoder, split=wildcards.split, shard=f"{s:05d}")
        for s in range(N_SHARDS[wildcards.split])
    ]


def job_settings(job, **fixed):
    """A rule's `settings` param: the JSON of exactly what its job reads (simattr.settings.for_job, from this
    config and the job's wildcards), so a changed config value reruns exactly the jobs that read it."""

    def param(wildcards):
        names = ssettings.JOBS[job][1]
        kw = {k: fixed[k] if k in fixed else getattr(wildcards, k) for k in names}
        return ssettings.as_json(ssettings.for_job(job, config, **kw))

    return param


CNN = MODEL.name in CNN_MODELS


def embed_gpus(wildcards):
    """The embed stage's network jobs (training simclr / supervised, embedding with a network encoder) ask for one
    GPU when embed.gpu is set (the profile maps `gpu` to sbatch --gpus; the job gets `simattr --gpus 1`, so it stops
    in one line where it finds no usable CUDA). The network encoders: those with a state of their own (not pixels)."""
    encoder = getattr(wildcards, "encoder", None)
    return 1 if config["embed"]["gpu"] and (encoder is None or encoder in sconfig.STATE_ENCODERS) else 0


def retrain_gpus(wildcards):
    """Jobs that train or differentiate the retrained model (queries' full-data models, TRAK checkpoints and
    scores, subset models) ask for a GPU when the model is a CNN and the support tasks get GPUs
    (launch.gpus_per_node > 0)."""
    return 1 if CNN and config["launch"]["gpus_per_node"] > 0 else 0


def retrain_threads(wildcards):
    """A CNN retrain job gets a support task's cores (DataLoader workers decode streamed images); an MLP one."""
    return config["launch"]["cpus_per_task"] if CNN else 1


def retrain_mem_mb(wildcards):
    return max(4000, int(config["launch"]["mem_gb"] * 1024)) if CNN else 4000


def retrain_runtime(wildcards):
    """Minutes: a CNN retrain job trains a handful of models, as a support task does within launch.timeout_min."""
    return max(60, config["launch"]["timeout_min"]) if CNN else 60


# simattr support's --launch keys, in the order of its command line: every key of the config's `launch` section
# (checked below; tests/test_workflow.py checks them against simattr.launch.LaunchSettings too). Each reaches the
# support jobs as a resource (launch_resource), not a param, as how the tasks run never changes an answer:
# resources, unlike params, trigger no rerun, and a profile may override each one (profiles/slurm sets
# submitit_cluster=slurm).
LAUNCH_KEYS = (
    "cluster",
    "parallelism",
    "timeout_min",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "slurm_partition",
    "signal_delay_s",
    "max_requeues",
    "images_per_task",
    "answers_at_once",
    "state_every_s",
)
if set(LAUNCH_KEYS) != set(config["launch"]):  # the validated section: every key of the schema's, defaults filled in
    raise WorkflowError(
        "workflow/rules/common.smk: LAUNCH_KEYS ({}) disagrees with the schema's launch keys ({})".format(
            ", ".join(LAUNCH_KEYS), ", ".join(config["launch"])
        )
    )
# the launch keys `simattr plan` reads (the report's planned-vs-spent table): the report rule's --launch
PLAN_LAUNCH_KEYS = ("parallelism", "images_per_task", "cpus_per_task", "gpus_per_node")


def launch_resource(key, prefix="submitit"):
    """The resource that carries launch key KEY: PREFIX_KEY (the support rule's are submitit_KEY, its partition
    submitit_partition; the report rule's plan_KEY)."""
    return f"{prefix}_partition" if key == "slurm_partition" else f"{prefix}_{key}"


def launch_resources(keys=LAUNCH_KEYS, prefix="submitit"):
    """The resources of launch keys KEYS (launch_resource), from config["launch"]: the numbers that may be
    fractional travel as strings (a resource number becomes an integer: 2.5 -> 2), an unset partition as ""."""
    la = config["launch"]
    la = dict(
        la,
        mem_gb=str(la["mem_gb"]),
        state_every_s=str(la["state_every_s"]),
        slurm_partition=la["slurm_partition"] or "",
    )
    return {launch_resource(k, prefix): la[k] for k in keys}


def launch_words(keys=LAUNCH_KEYS, prefix="submitit"):
    """A command's --launch words of launch keys KEYS: KEY={resources.RESOURCE} (launch_resources), the partition
    quoted."""
    return " ".join(
        f"{k}={{resources.{launch_resource(k, prefix)}{':q' if k == 'slurm_partition' else ''}}}" for k in keys
    )


def score_gpus(wildcards):
    """Feature rankers run on the GPU when esvm.device is cuda (auto takes one only if the job happens to have it)."""
    return 1 if wildcards.ranker in sconfig.DEVICE_RANKERS and config["esvm"]["device"] == "cuda" else 0


def subset_shards(purpose):
    return [path(store.SUBSET_SHARD, purpose=purpose, shard=f"{s:05d}") for s in range(N_SUBSET_SHARDS[purpose])]


def model_attribution_inputs(wildcards):
    """What a model-based ranker's score job reads: TRAK's attribution file, or the datamodels subset shards."""
    return [path(store.TRAK_SCORES)] if wildcards.ranker == "trak" else subset_shards("datamodels")


def class_scores(wildcards):
    return [path(store.SCORES, encoder=wildcards.encoder, ranker=wildcards.ranker, cls=c) for c in CLASSES]


def local_task_threads(wildcards):
    la = config["launch"]
    return la["parallelism"] * la["cpus_per_task"] if la["cluster"] == "local" else 1


def report_keys():
    return (
        ["support", "markdown", "cdf", "grid", "cost", "plan"]
        + (["overlap"] if len(METHODS) > 1 else [])
        + (["lds"] if LDS_ON else [])
    )


def report_files():
    d = path(store.REPORT_DIR)
    return [f"{d}/{store.REPORT_FILES[k]}" for k in report_keys()]


def report_outputs():
    """The report rule's outputs, each an item of `snakemake --report` with its caption (workflow/report/KEY.rst)."""
    items = zip(report_keys(), report_files())
    return [report(f, caption=f"../report/{k}.rst", category="Comparison") for k, f in items]


def method_figure_dirs():
    """Each method's folder of HTML report pages (rule method_figures)."""
    return [path(store.METHOD_FIGURES, encoder=e, ranker=r) for e, r in METHODS]


def method_gathers(wildcards):
    return [
        path(store.SUPPORT_GATHER, encoder=wildcards.encoder, ranker=wildcards.ranker, metric=m)
        for m in config["support"]["metrics"]
    ]


def external_scores(wildcards):
    """An external method's score jobs read its scores file and its index file (when it has one)."""
    m = EXTERNAL[wildcards.ranker]
    return {"scores": m["path"], **({"index": m["index"]} if m.get("index") else {})}


def external_cost(name):
    """Where an external method's optional cost sidecar sits (NAME.cost.json beside its scores file)."""
    return str(external.cost_path(EXTERNAL[name]))


def export_embeddings():
    """ENCODER:SPLIT:INDEX of every feature encoder the methods use (the export holds their features)."""
    return [f"{e}:{s}:{path(store.EMBED_INDEX, encoder=e, split=s)}" for e in ENCODERS_USED for s in SPLITS]


def write_report_manifest(out, log, params):
    """The report_manifest rule's body: its lists into one JSON file (atomic), a line in its log."""
    lists = {k: list(getattr(params, k)) for k in store.REPORT_MANIFEST_KEYS}
    store.write_json(out, lists)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        f.write(f"{out}: " + ", ".join(f"{len(v)} {k}" for k, v in lists.items()) + "\n")


def external_sidecars():
    """ENCODER/RANKER -> the cost sidecar of each external method that has one (one the workflow makes always does)."""
    return {
        pipeline.method_name(sconfig.EXTERNAL_ENCODER, n): external_cost(n)
        for n in EXTERNAL
        if n in MADE or os.path.exists(external_cost(n))
    }


# The run's jobs, each once, walked by simattr.pipeline from the facts above, once (STEPS): the report's lists (the
# score, support and LDS files it reads, every upstream job's benchmark, each method's cost) are read off this walk,
# each built once here, which tests/test_workflow.py checks against a dry run's DAG.
PIPELINE = pipeline.Facts(
    methods=tuple(METHODS),
    n_classes=len(CLASSES),
    shards=N_SHARDS,
    subset_shards=N_SUBSET_SHARDS,
    trained_models={p: config[p]["models"] for p in PURPOSES} | {"trak": config["trak"]["checkpoints"]},
    metrics=tuple(config["support"]["metrics"]),
    lds=LDS_ON,
    sidecars=external_sidecars(),
    made=tuple(MADE),
)
STEPS = list(pipeline.steps(PIPELINE))
JOBS = list(pipeline.jobs(STEPS))


def job_outputs(rule, template):
    """The files (a data-contract template) that the run's jobs of `rule` make, in the walk's order."""
    return [path(template, **j.kw) for j in JOBS if j.rule == rule]


def method_cost_entries():
    """METHOD|KIND|VALUE entries of the report's cost table (simattr.pipeline.method_cost_items): per method, the
    jobs that made its scores (the benchmark and usage record of each), what they stored, the retrained models it
    needed and an external method's cost sidecar."""
    out = []
    for m, kind, value in pipeline.method_cost_items(PIPELINE.methods, STEPS):
        if kind == "job":
            out.append(f"{m}|bench|{job_bench(value.rule, **value.kw)}")
            out.append(f"{m}|usage|{store.usage_path(job_log(value.rule, **value.kw))}")
        elif kind == "stored":
            template, fields = value
            out.append(f"{m}|stored|{path(template, **dict(fields))}")
        else:
            out.append(f"{m}|{kind}|{value}")
    return out


#: the report's lists (rules report_manifest and report), each once
REPORT_SCORES = job_outputs("score", store.SCORES)
REPORT_GATHERS = job_outputs("support", store.SUPPORT_GATHER)
REPORT_LDS = job_outputs("lds", store.LDS)
#: (STAGE, FILE) of every upstream job's benchmark (the report's wall seconds per stage)
REPORT_BENCHMARKS = [(j.stage, job_bench(j.rule, **j.kw)) for j in JOBS]
METHOD_COST_ENTRIES = method_cost_entries()
#: the cost sidecars the external methods have: the report reads them (an edit reruns it)
EXTERNAL_COSTS = list(PIPELINE.sidecars.values())
