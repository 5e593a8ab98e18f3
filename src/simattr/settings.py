"""Every job's settings, made from the validated config in this one place.

The workflow hands a job its settings as one param, a JSON object holding only the keys that job reads
(`simattr CMD --settings '{...}'`), so a changed config value reruns exactly the jobs that read it. By hand,
`simattr CMD --config FILE` builds the same object from a config file, the schema filling what the file leaves
out: the schema (workflow/schemas/config.schema.yaml) is the one source of defaults. `parse` checks an object's
keys and turns its sections into typed settings: `dataset` a datasets.Spec, `model` a models.Recipe; `support`
is the answers' identity (support.Settings, checked by support.engine_settings). How support tasks run (`launch`, a launch.LaunchSettings)
changes no result: the support rule passes it from its resources (`--launch KEY=VALUE ...`), never a param.

    for_job("score", config, encoder="simclr", ranker="esvm")
    -> {"dataset": {"name": "digits", ...}, "class_conditioned": true, "topk": 64,
        "ranker": {"C": 0.1, "chunk_size": 128, "device": "auto"}}
"""
from __future__ import annotations

import functools
import json
from types import SimpleNamespace
from typing import Any, Callable, ClassVar

from . import config as sconfig
from .errors import SimattrError

EMBED_BATCH_SIZE = 256      # images encoded at once by every encoder but resnet (encoders.resnet.batch_size)
RANKER_KEYS = sconfig.RANKER_KEYS
FLOAT_KEYS = ("C", "tol", "val_fraction")   # floats even where a config wrote 1 (as argparse made them)
DEVICE_RANKERS = tuple(r for r, keys in RANKER_KEYS.items() if any(k[2] == "device" for k in keys))


@functools.cache
def defaults() -> dict:
    """The whole config as the schema's defaults make it."""
    return sconfig.validate({})


def load_config(path: str) -> dict:
    """A config file, validated, with the schema's defaults filled in."""
    return sconfig.load(path)


def _dataset(c: dict) -> dict:
    from .datasets import Spec

    return Spec.from_config(c["dataset"]).identity()


def _model(c: dict) -> dict:
    from .models import Recipe

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


def ranker_settings(c: dict, ranker: str) -> dict:
    """The keywords of one ranker (rankers.score, datamodels.fit_datamodels): a change to another ranker's
    setting reruns none of its jobs."""
    if ranker not in RANKER_KEYS:
        raise SimattrError(f"unknown ranker '{ranker}'; valid: {', '.join(RANKER_KEYS)}")
    return {kw: _float(c[section][key]) if kw in FLOAT_KEYS else c[section][key]
            for section, key, kw in RANKER_KEYS[ranker]}


def _float(x):
    return None if x is None else float(x)


def _score(c: dict, ranker: str) -> dict:
    s = c["score"]
    return {"dataset": _dataset(c), "class_conditioned": s["class_conditioned"], "topk": s["topk"],
            "ranker": ranker_settings(c, ranker)}


def _score_external(c: dict, ranker: str) -> dict:
    """An external method's score jobs (ranker = its name): its scores file's identity (external.source: the
    content hashes, layout, sign, key), not its path."""
    from .external import source

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
    from .trak import PROJECTOR

    t = c["trak"]
    return {"dataset": _dataset(c), "model": _model(c), "proj_dim": t["proj_dim"],
            "projector_seed": t["projector_seed"], "batch_size": t["batch_size"], "lambda_reg": t["lambda_reg"],
            "projector": PROJECTOR}


def _queries(c: dict) -> dict:
    s = c["support"]
    return {"dataset": _dataset(c), "model": _model(c), "n_test": s["n_test"], "sample_seed": s["sample_seed"],
            "flip_models": s["flip_models"]}


def _support(c: dict, metric: str, encoder: str, ranker: str) -> dict:
    """The answers' identity (support.engine_settings: the common keys and the engine's own) and the
    replicate seed sets."""
    from .support import engine_settings

    s = c["support"]
    if metric not in sconfig.METRICS:
        raise SimattrError(f"unknown metric '{metric}'; valid: {', '.join(sconfig.METRICS)}")
    flat = {**{k: v for k, v in s.items() if not isinstance(v, (dict, list))}, **s[metric],
            "dataset": c["dataset"]["name"], "encoder": encoder, "ranker": ranker, "model": _model(c)}
    return {"support": engine_settings(flat), "replicates": s["replicates"]}


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
    from .config import method_id

    methods = [list(method_id(m)) for m in c["methods"]]
    used = {e for e, _ in methods}
    rankers = {r for _, r in methods}
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
            "lds": {k: c["lds"][k] for k in ("models", "shard_size")}, "support": support}


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


#: the keys of jobs whose settings the schema's defaults cannot make (no external method there): parse checks these
KEYS = {"score-external": ("dataset", "class_conditioned", "topk", "source")}


def for_job(job: str, config: dict, **wildcards: Any) -> dict:
    """The settings `job` reads, from a validated config (and the job's wildcards: encoder, ranker, ...)."""
    make, names = JOBS[job]
    return make(config, **{k: wildcards[k] for k in names})


def as_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def parse_json(text: str, where: str) -> dict:
    """A JSON object from text; one line naming `where` when it is not one."""
    try:
        s = json.loads(text)
    except json.JSONDecodeError as e:
        raise SimattrError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(s, dict):
        raise SimattrError(f"{where}: expected a JSON object, got {type(s).__name__}")
    return s


def key_values(items: list[str], where: str) -> dict:
    """KEY=VALUE words as a dict, each value read as YAML (numbers, true/false; an empty value is None)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SimattrError(f"{where}: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else None
    return out


def parse(job: str, text_or_dict: str | dict, *, where: str = "--settings", **wildcards: Any) -> SimpleNamespace:
    """A job's settings (JSON text or a dict) as attributes, checked against the keys `for_job` makes (one line
    naming a missing or unknown key), the typed sections built."""
    from .datasets import Spec
    from .models import Recipe

    s = parse_json(text_or_dict, where) if isinstance(text_or_dict, str) else text_or_dict
    expected = KEYS[job] if job in KEYS else for_job(job, defaults(), **wildcards)
    check_keys(expected, s, f"{where} of `simattr {job}`")
    out = dict(s)
    if "dataset" in out:
        out["dataset"] = Spec.from_settings(out["dataset"], where=f"{where} dataset")
    if "model" in out:
        out["model"] = Recipe.from_settings(out["model"], where=f"{where} model")
    if "source" in out:
        from .external import SOURCE_KEYS

        check_keys(SOURCE_KEYS, out["source"] if isinstance(out["source"], dict) else {}, f"{where} source")
    return SimpleNamespace(**out)


def check_keys(expected, got, where: str) -> None:
    """One line naming the keys missing from `got` and those it should not have."""
    missing, unknown = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unknown:
        raise SimattrError(f"{where}: " + "; ".join(x for x in (
            f"lacks {', '.join(missing)}" if missing else "",
            f"has unknown keys {', '.join(unknown)}" if unknown else "") if x))


def typed_fields(cls, d: dict, keys, where: str) -> dict:
    """`d`'s entries for exactly `keys` (the other fields of dataclass `cls` None), an int given for a float
    field made a float (as argparse made it before settings travelled as JSON)."""
    check_keys(keys, d, where)
    out = {}
    for k, f in cls.__dataclass_fields__.items():
        v = d.get(k)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if k in keys and isinstance(v, int) and not isinstance(v, bool) and kind.startswith("float"):
            v = float(v)
        out[k] = v
    return out


def named_fields(cls, d: dict, fields_by_name: dict, what: str, where: str, key: str = "name") -> dict:
    """typed_fields for settings whose `key` field (name, engine) says which fields they read: one line for an
    unknown one."""
    if not isinstance(d, dict) or d.get(key) not in fields_by_name:
        got = d.get(key) if isinstance(d, dict) else d
        named = what if key == "name" else f"{what} {key}"          # "dataset", "model", "support engine"
        raise SimattrError(f"{where}: unknown {named} {got!r}; valid: {', '.join(fields_by_name)}")
    return typed_fields(cls, d, fields_by_name[d[key]], where)


class Named:
    """A typed settings object whose KEY field (`name`; support.Settings: `engine`) picks the fields it reads
    (datasets.Spec, models.Recipe, support.Settings): FIELDS maps each value to them (the fields it does not read
    are None); WHAT is its config section."""
    FIELDS: ClassVar[dict[str, tuple[str, ...]]]
    WHAT: ClassVar[str]
    KEY: ClassVar[str] = "name"

    @classmethod
    def from_settings(cls, d: dict, where: str | None = None):
        """From exactly the fields it reads (identity()); a missing or extra one is one line naming it."""
        return cls(**named_fields(cls, d, cls.FIELDS, cls.WHAT, where or cls.WHAT, cls.KEY))

    @classmethod
    def from_config(cls, section: dict):
        """From its config section (validated, or any mapping holding at least its fields): the fields it
        reads."""
        return cls.from_settings({k: section.get(k) for k in cls.FIELDS.get(section.get(cls.KEY), (cls.KEY,))
                                  if k in section or k == cls.KEY})

    @classmethod
    def of(cls, **fields):
        """The schema's default with `fields` changed (for hand use and tests)."""
        return cls.from_config({**defaults()[cls.WHAT], **fields})

    def identity(self) -> dict:
        """The fields it reads (what outputs made from it hash)."""
        return {k: getattr(self, k) for k in self.FIELDS[getattr(self, self.KEY)]}
