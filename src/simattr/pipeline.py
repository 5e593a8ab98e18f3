"""Every job of a run, each once, from what the workflow knows before any job runs.

The report needs lists of the run's upstream jobs: the benchmark of every job, stage by stage (its wall-seconds
table), and per method the jobs that made its scores, what they stored and the models they trained (its cost
table). Snakemake knows these jobs only once it has built the DAG; workflow/rules/common.smk needs them while the
rules are being defined. `steps` walks them here from the facts common.smk has of the run (`Facts`; what the
package itself knows, which encoders embed images and which rule makes an encoder's state, it reads from
simattr.config). common.smk walks once (its STEPS) and reads everything off that walk: the jobs (`jobs`: the
benchmark list and the score, support and LDS files the report reads) and the cost table (`method_cost_items`).
tests/test_pipeline.py checks the walk without Snakemake, tests/test_workflow.py against a dry run's DAG.

A `Job` is named as its log and benchmark files are (common.smk's JOB_FILES): `rule` is the rule, or the rule
whose file names it shares (score_model and score_external jobs are `score` jobs), and `fields` are the wildcard
values in those names. A `Step` is the jobs that make one stored output together (an encoder's state, its
embeddings, TRAK, a purpose's subset models, a method's scores, its LDS, its support answers, the queries).

Light on purpose: the standard library and simattr.config / simattr.store only (no Snakemake, torch or
scikit-learn), so the workflow and its tests import it in an instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from . import store
from .config import EXTERNAL_ENCODER, FEATURE_ENCODER_STATE, FEATURE_ENCODERS, MODEL_ENCODER

#: the report's stages in the order of its wall-seconds table (the order `steps` first reaches each one)
STAGES = ("embed", "trak", "datamodels", "lds", "score", "support")
#: the order a method's cost entries list its steps in: its features, its scores, then the models its ranker
#: trained (the report only sums them; a fixed order keeps the report's inputs, and so its rerun trigger, stable)
COST_ORDER = ("embed", "score", "trak", "datamodels")
#: encoder -> the rule that makes its state file: trained (train_encoder) or imported from a checkpoint
#: (import_resnet); encoders without a state (pixels) have none
STATE_RULES = {e: "train_encoder" if s == "trained" else "import_resnet" for e, s in FEATURE_ENCODER_STATE.items()
               if s}


@dataclass(frozen=True)
class Job:
    """One job: `rule` (the name its log and benchmark files go by), `fields` (its wildcard values, as
    (name, value) pairs), `stage` (the report stage its wall seconds count for) and `methods` (the methods,
    ENCODER/RANKER, whose cost it is: the jobs that made their scores; none for the jobs after the scores)."""

    rule: str
    fields: tuple[tuple[str, str | int], ...] = ()
    stage: str = ""
    methods: tuple[str, ...] = ()

    @property
    def kw(self) -> dict[str, str | int]:
        """The fields as keyword arguments (for store.fill and the workflow's job_log / job_bench)."""
        return dict(self.fields)


@dataclass(frozen=True)
class Step:
    """The jobs of one rule that make one stored output together, in the order they are listed. `stored`:
    (data-contract template, fields) of what they keep on disk; `models`: the retrained models they train for
    their methods' cost (None: none counted); `sidecar`: an external method's cost file (its author's cost)."""

    stage: str
    jobs: tuple[Job, ...]
    methods: tuple[str, ...] = ()
    stored: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    models: int | None = None
    sidecar: str | None = None


@dataclass(frozen=True)
class Facts:
    """What the workflow knows of a run before any job runs (common.smk's constants, from the config).

    methods: (encoder, ranker) of each method, in the config's order (an external method's ranker is its name);
    n_classes: the dataset's classes (a score job each per method); shards: embedding shards per split, in split
    order; subset_shards: subset-model shards per purpose, in purpose order; trained_models: models a
    model-based ranker's step trains (trak: its checkpoints, datamodels: its subset models); metrics: the support
    metrics; lds: whether the LDS table is made (lds.models > 0); sidecars: ENCODER/RANKER -> the cost sidecar of
    an external method that has one; made: the external methods the workflow makes from the export (their
    `command`: rule outside_scores)."""

    methods: tuple[tuple[str, str], ...]
    n_classes: int
    shards: Mapping[str, int]
    subset_shards: Mapping[str, int]
    trained_models: Mapping[str, int]
    metrics: tuple[str, ...]
    lds: bool
    sidecars: Mapping[str, str] = field(default_factory=dict)
    made: tuple[str, ...] = ()


def method_name(encoder: str, ranker: str) -> str:
    """A method as the report's tables name it: ENCODER/RANKER."""
    return f"{encoder}/{ranker}"


def _job(rule: str, stage: str, methods: tuple[str, ...], **fields: str | int) -> Job:
    return Job(rule, tuple(fields.items()), stage, methods)


def _step(stage: str, methods: tuple[str, ...], jobs: list[tuple[str, dict]], **kw) -> Step:
    return Step(stage, tuple(_job(rule, stage, methods, **f) for rule, f in jobs), methods, **kw)


def _stored(template: str, **fields: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (template, tuple(fields.items()))


def steps(f: Facts) -> Iterator[Step]:
    """Every step of the run (each job in exactly one), in the order of the report's benchmark list: the
    embeddings of each feature encoder in use (sorted by name; its state first when a rule makes one), TRAK, the
    subset models of each purpose in use, the export when the workflow makes outside methods' scores from it,
    then per method its outside scores (when made), its LDS, its scores and its support answers, and last
    the queries (the full-data models the support stage starts from). The feature encoders (config's
    FEATURE_ENCODERS: the others are `model` and `external`) embed images; STATE_RULES makes their state."""
    names = [method_name(e, r) for e, r in f.methods]
    for e in sorted({e for e, _ in f.methods if e in FEATURE_ENCODERS}):
        users = tuple(m for m, (enc, _) in zip(names, f.methods) if enc == e)
        if e in STATE_RULES:
            yield _step("embed", users, [(STATE_RULES[e], {"encoder": e})],
                        stored=(_stored(store.ENCODER_STATE, encoder=e),))
        embed = []
        for s, n in f.shards.items():          # per split: its index, then its shards
            embed.append(("embed_index", {"encoder": e, "split": s}))
            embed += [("embed_shard", {"encoder": e, "split": s, "shard": f"{k:05d}"}) for k in range(n)]
        yield _step("embed", users, embed, stored=(_stored(store.ENCODER_EMBED_DIR, encoder=e),))
    model_rankers = {r: m for m, (e, r) in zip(names, f.methods) if e == MODEL_ENCODER}
    if "trak" in model_rankers:
        yield _step("trak", (model_rankers["trak"],), [("trak_checkpoints", {}), ("trak", {})],
                    stored=(_stored(store.TRAK_CHECKPOINTS), _stored(store.TRAK_SCORES)),
                    models=f.trained_models["trak"])
    for p, n in f.subset_shards.items():
        users = (model_rankers[p],) if p in model_rankers else ()
        if users or (p == "lds" and f.lds):
            yield _step(p, users, [("subsets", {"purpose": p, "shard": f"{k:05d}"}) for k in range(n)],
                        stored=(_stored(store.SUBSETS_DIR, purpose=p),), models=f.trained_models.get(p))
    if f.made:          # the export, then each made method's scores (their cost is their sidecar: no method's here)
        yield _step("score", (), [("export", {})])
    for m, (e, r) in zip(names, f.methods):
        if e == EXTERNAL_ENCODER and r in f.made:
            yield _step("score", (), [("outside_scores", {"name": r})])
        if f.lds:
            yield _step("lds", (), [("lds", {"encoder": e, "ranker": r})])
        yield _step("score", (m,), [("score", {"encoder": e, "ranker": r, "cls": c}) for c in range(f.n_classes)],
                    stored=(_stored(store.SCORES_DIR, encoder=e, ranker=r),), sidecar=f.sidecars.get(m))
        yield _step("support", (), [("support", {"encoder": e, "ranker": r, "metric": x}) for x in f.metrics])
    yield _step("support", (), [("queries", {})])


def jobs(walked: Iterable[Step]) -> Iterator[Job]:
    """Every job of the walked steps (`steps`) once, in their order."""
    for step in walked:
        yield from step.jobs


def method_cost_items(methods: Sequence[tuple[str, str]], walked: Sequence[Step]) -> Iterator[tuple[str, str, object]]:
    """(method, kind, value) of the report's cost table, read off the walked steps (`steps`), method by method in
    the config's order (`methods`: Facts.methods): `job` (a Job that made its scores: the workflow lists its
    benchmark and usage record), `stored` ((template, fields) of what its steps keep), `models` (the retrained
    models they trained) and `sidecar` (an external method's cost file). A step shared by several methods (an
    encoder's) counts for each."""
    for e, r in methods:
        m = method_name(e, r)
        mine = sorted((s for s in walked if m in s.methods), key=lambda s: COST_ORDER.index(s.stage))
        for s in mine:
            for j in s.jobs:
                yield m, "job", j
            for st in s.stored:
                yield m, "stored", st
            if s.models is not None:
                yield m, "models", s.models
            if s.sidecar is not None:
                yield m, "sidecar", s.sidecar
