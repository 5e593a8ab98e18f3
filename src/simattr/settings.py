"""Every job's settings, made from the validated config in this one place.

The workflow hands a job its settings as one param, a JSON object holding only the keys that job reads
(`simattr CMD --settings '{...}'`), so a changed config value reruns exactly the jobs that read it. By hand,
`simattr CMD --config FILE` builds the same object from a config file, the schema filling what the file leaves
out: the schema (workflow/schemas/config.schema.yaml) is the one source of defaults. `parse` checks an object's
keys and turns its sections into typed settings: `dataset` a datasets.Spec, `model` a models.Recipe, the support
job's `support` a support.answer.Settings (the answers' identity, built and checked here once; the stage, its tasks
and each answer get that object). How support tasks run (`launch`, a launch.LaunchSettings) changes no result: the
support rule passes it from its resources (`--launch KEY=VALUE ...`), never a param.

    for_job("score", config, encoder="simclr", ranker="esvm")
    -> {"dataset": {"name": "digits", ...}, "class_conditioned": true, "topk": 64,
        "ranker": {"C": 0.1, "chunk_size": 128, "device": "auto"}}
"""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Callable

from . import config as sconfig
from .config import method_id
from .datasets import Spec
from .errors import SimattrError
from .external import SOURCE_KEYS, source
from .models import Recipe
from .support.answer import Settings as SupportSettings
from .trak import PROJECTOR
from .typed import check_keys, parse_json

EMBED_BATCH_SIZE = 256      # images encoded at once by every encoder but resnet (encoders.resnet.batch_size)


def _dataset(c: dict) -> dict:
    return Spec.from_config(c["dataset"]).identity()


def _model(c: dict) -> dict:
    return Recipe.from_config(c["model"]).identity()


def encoder_params(c: dict, encoder: str) -> tuple[dict, int]:
    """(params, seed) of an encoder's state: its config section but the seed (and resnet's batch size, which
    only the embed jobs read); pixels has none."""
    section = dict(c["encoders"].get(encoder, {}))
    seed = section.pop("seed", 0)
    if encoder == "resnet":
        section.pop("batch_size")
    return section, seed


def _train_encoder(c: dict, encoder: str) -> dict:
    params, seed = encoder_params(c, encoder)
    return {"dataset": _dataset(c), "params": params, "seed": seed}


def _embed(c: dict, encoder: str) -> dict:
    e = c["embed"]
    batch = c["encoders"]["resnet"]["batch_size"] if encoder == "resnet" else EMBED_BATCH_SIZE
    return {"dataset": _dataset(c), "shard_size": e["shard_size"], "float16": e["float16"], "batch_size": batch}


def _score(c: dict, ranker: str) -> dict:
    s = c["score"]
    return {"dataset": _dataset(c), "class_conditioned": s["class_conditioned"], "topk": s["topk"],
            "ranker": sconfig.ranker_settings(c, ranker)}


def _score_external(c: dict, ranker: str) -> dict:
    """An external method's score jobs (ranker = its name): its scores file's identity (external.source: the
    content hashes, layout, sign, key), not its path."""
    methods = sconfig.external_methods(c)
    if ranker not in methods:
        raise SimattrError(f"no external method named '{ranker}' in the config's methods (external methods: "
                           f"{', '.join(methods) or 'none'})")
    s = c["score"]
    return {"dataset": _dataset(c), "class_conditioned": s["class_conditioned"], "topk": s["topk"],
            "source": source(methods[ranker])}


def _export(c: dict) -> dict:
    return {"dataset": _dataset(c), "model": _model(c)}


def _subsets(c: dict, purpose: str) -> dict:
    p = c[purpose]
    return {"dataset": _dataset(c), "model": _model(c), "alpha": p["alpha"], "models": p["models"],
            "shard_size": p["shard_size"]}


def _trak_checkpoints(c: dict) -> dict:
    t = c["trak"]
    return {"dataset": _dataset(c), "model": _model(c), "checkpoints": t["checkpoints"], "seed": t["seed"]}


def _trak(c: dict) -> dict:
    t = c["trak"]
    return {"dataset": _dataset(c), "model": _model(c), "proj_dim": t["proj_dim"],
            "projector_seed": t["projector_seed"], "batch_size": t["batch_size"], "lambda_reg": t["lambda_reg"],
            "projector": PROJECTOR}


def _queries(c: dict) -> dict:
    s = c["support"]
    return {"dataset": _dataset(c), "model": _model(c), "n_test": s["n_test"], "sample_seed": s["sample_seed"],
            "flip_models": s["flip_models"]}


def _support(c: dict, metric: str, encoder: str, ranker: str) -> dict:
    """The answers' identity (support.answer.Settings: the common keys and the engine's own, picked from the
    config's support section and the metric's; checked) and the replicate seed sets."""
    s = c["support"]
    if metric not in sconfig.METRICS:
        raise SimattrError(f"unknown metric '{metric}'; valid: {', '.join(sconfig.METRICS)}")
    flat = {**{k: v for k, v in s.items() if not isinstance(v, (dict, list))}, **s[metric],
            "dataset": c["dataset"]["name"], "encoder": encoder, "ranker": ranker, "model": _model(c)}
    return {"support": SupportSettings.from_config(flat).identity(), "replicates": s["replicates"]}


def _lds(c: dict) -> dict:
    return {"n_boot": c["report"]["n_boot"], "seed": c["report"]["seed"]}


def _report(c: dict) -> dict:
    r = c["report"]
    return {"dataset": _dataset(c), "n_boot": r["n_boot"], "seed": r["seed"], "grid_images": r["grid_images"],
            "overlap_k": list(r["overlap_k"])}


def _plan(c: dict) -> dict:
    """What `simattr plan` reads (and the report's planned-vs-spent table): the dataset, the methods, the jobs'
    shapes (shards, feature widths, top-k, the ranker's chunk), the retrained model, the model counts and the
    support engine's own keys; sections no method uses are None, so a change there reruns nothing. How tasks run
    (`launch`) travels beside it, as for support."""
    methods = [list(method_id(m)) for m in c["methods"]]
    used = {e for e, _ in methods}
    rankers = {r for e, r in methods if e == sconfig.MODEL_ENCODER}     # an external method's name is no ranker
    enc_keys = {"simclr": ("arch", "feature_dim"), "supervised": ("hidden",),
                "resnet": ("arch", "feature", "checkpoint")}
    s = c["support"]
    keep = ("metrics", "n_test", "replicates", "seed_set", "engine", "flip_models") + \
        (("seeds_min", "seeds_max", "max_models") if s["engine"] == "adaptive" else ("seeds", "monotone_checks"))
    support = {k: s[k] for k in keep}
    for m in s["metrics"]:
        support[m] = {"k_max": s[m]["k_max"],
                      **({"bisection_steps": s[m]["bisection_steps"]} if s["engine"] == "bisection" else {})}
    return {"results": c["results"], "dataset": _dataset(c), "methods": methods, "model": _model(c),
            "embed": {"shard_size": c["embed"]["shard_size"], "float16": c["embed"]["float16"]},
            "encoders": {e: {k: c["encoders"][e][k] for k in keys} for e, keys in enc_keys.items() if e in used},
            "score": {"class_conditioned": c["score"]["class_conditioned"], "topk": c["score"]["topk"]},
            "chunk_size": c["esvm"]["chunk_size"],
            "trak": {"checkpoints": c["trak"]["checkpoints"]} if "trak" in rankers else None,
            "datamodels": {k: c["datamodels"][k] for k in ("models", "shard_size")} if "datamodels" in rankers
            else None,
            "lds": {k: c["lds"][k] for k in ("models", "shard_size")}, "support": support,
            "made": sorted(m["name"] for m in c["methods"] if m.get("command"))}


def launch(c: dict) -> dict:
    """How support tasks run (the `launch` section): never part of a result, so the workflow passes it as
    resources (no rerun when it changes)."""
    return dict(c["launch"])


#: job -> (settings maker, the wildcards it takes)
JOBS: dict[str, tuple[Callable[..., dict], tuple[str, ...]]] = {
    "train-encoder": (_train_encoder, ("encoder",)),
    "embed": (_embed, ("encoder",)),
    "embed-index": (lambda c: {"dataset": _dataset(c)}, ()),
    "score": (_score, ("ranker",)),
    "score-model": (_score, ("ranker",)),
    "score-external": (_score_external, ("ranker",)),
    "export": (_export, ()),
    "method-figures": (lambda c: {"dataset": _dataset(c)}, ()),
    "subsets": (_subsets, ("purpose",)),
    "trak-checkpoints": (_trak_checkpoints, ()),
    "trak": (_trak, ()),
    "lds": (_lds, ()),
    "queries": (_queries, ()),
    "support": (_support, ("metric", "encoder", "ranker")),
    "report": (_report, ()),
    "plan": (_plan, ()),
    "calibrate": (lambda c: {"results": c["results"], "dataset": _dataset(c), "model": _model(c)}, ()),
}


#: the keys parse checks of the jobs whose settings it does not make from the schema's defaults: score-external (no
#: external method there), support (its `support` object is checked key by key as its Settings is built, once)
KEYS = {"score-external": ("dataset", "class_conditioned", "topk", "source"), "support": ("support", "replicates")}


def for_job(job: str, config: dict, **wildcards: Any) -> dict:
    """The settings `job` reads, from a validated config (and the job's wildcards: encoder, ranker, ...)."""
    make, names = JOBS[job]
    return make(config, **{k: wildcards[k] for k in names})


def as_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def parse(job: str, text_or_dict: str | dict, *, where: str = "--settings", **wildcards: Any) -> SimpleNamespace:
    """A job's settings (JSON text or a dict) as attributes, checked against the keys `for_job` makes (one line
    naming a missing or unknown key), the typed sections built."""
    s = parse_json(text_or_dict, where) if isinstance(text_or_dict, str) else text_or_dict
    expected = KEYS[job] if job in KEYS else for_job(job, sconfig.defaults(), **wildcards)
    check_keys(expected, s, f"{where} of `simattr {job}`")
    out = dict(s)
    if "dataset" in out:
        out["dataset"] = Spec.from_settings(out["dataset"], where=f"{where} dataset")
    if "model" in out:
        out["model"] = Recipe.from_settings(out["model"], where=f"{where} model")
    if job == "support":
        out["support"] = SupportSettings.from_settings(out["support"], where=f"{where} support")
    if "source" in out:
        check_keys(SOURCE_KEYS, out["source"] if isinstance(out["source"], dict) else {}, f"{where} source")
    return SimpleNamespace(**out)


