"""Configuration: validation against the JSON schema with defaults filled in, and readable errors."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import SimattrError

# The registries' names and facts, known without importing torch (the schema lists the names too; tests check
# that both agree and that the code's registries, encoders.KINDS and rankers.RANKERS, hold exactly these).
#: feature extractors -> where their state comes from: none (pixels), a training rule, or an imported checkpoint
FEATURE_ENCODER_STATE = {"pixels": None, "simclr": "trained", "supervised": "trained", "resnet": "imported"}
FEATURE_ENCODERS = tuple(FEATURE_ENCODER_STATE)
TRAINED_ENCODERS = tuple(e for e, s in FEATURE_ENCODER_STATE.items() if s == "trained")   # rule train_encoder
STATE_ENCODERS = tuple(e for e, s in FEATURE_ENCODER_STATE.items() if s)                   # a state file (.pt)
MODEL_ENCODER = "model"                   # the retrained model itself: the features of the model-based rankers
EXTERNAL_ENCODER = "external"             # an outside method's scores file (simattr.external)
EXTERNAL_RANKER = "scores"                # its ranker in the config; its name stands for it everywhere else
ENCODERS = FEATURE_ENCODERS + (MODEL_ENCODER, EXTERNAL_ENCODER)
#: the keys of an external method entry besides encoder and ranker (name and path required)
EXTERNAL_KEYS = ("name", "path", "layout", "sign", "key", "index", "command")


@dataclass(frozen=True)
class Ranker:
    """One of simattr's rankers, everything the package and the workflow need to know of it."""
    family: str                              # "feature": from an encoder's features; "model": retrained models
    keys: tuple[tuple[str, str, str], ...]   # its settings: (config section, key there, the ranker's keyword)
    reads: str = "class"                     # the feature rows its score job reads: "class" (the class's test and
    #                                          candidate rows), "all" (every training row too), "none" (no feature)
    signed: bool = False                     # scores every training image, signed (not only its candidates, >= 0)
    explain: bool = False                    # ranks new images (simattr explain, Attributor)
    chunked: bool = False                    # its unconditioned candidates are scored chunk by chunk

    @property
    def device(self) -> bool:
        """Runs on a torch device (esvm.device): a GPU when the config asks."""
        return any(kw == "device" for _, _, kw in self.keys)

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(kw for _, _, kw in self.keys)


_C, _CHUNK, _DEVICE = ("esvm", "C", "C"), ("esvm", "chunk_size", "chunk_size"), ("esvm", "device", "device")
#: every ranker of simattr's own, by name: the one table every list of rankers is derived from
RANKER_SPECS: dict[str, Ranker] = {
    "esvm": Ranker("feature", (_C, _CHUNK, _DEVICE), explain=True),
    "esvm_reference": Ranker("feature", (_C, ("esvm", "tol", "tol"), ("esvm", "max_iter", "max_iter")),
                             explain=True),
    "esvm_signed": Ranker("feature", (_C, _CHUNK, _DEVICE, ("esvm", "runner_up_neighbours", "neighbours")),
                          reads="all", signed=True),
    "knn_l2": Ranker("feature", (_CHUNK, _DEVICE), explain=True, chunked=True),
    "knn_cos": Ranker("feature", (_CHUNK, _DEVICE), explain=True, chunked=True),
    "random": Ranker("feature", (("score", "random_seed", "random_seed"),), reads="none"),
    "trak": Ranker("model", (), signed=True),
    "datamodels": Ranker("model", (("datamodels", "n_alphas", "n_alphas"),
                                   ("datamodels", "val_fraction", "val_fraction")), signed=True),
}
RANKERS = tuple(RANKER_SPECS)              # simattr's own rankers (an external method's name is its ranker)
MODEL_RANKERS = tuple(r for r, s in RANKER_SPECS.items() if s.family == "model")
FEATURE_RANKERS = tuple(r for r, s in RANKER_SPECS.items() if s.family == "feature")
DEVICE_RANKERS = tuple(r for r, s in RANKER_SPECS.items() if s.device)
EXPLAIN_RANKERS = tuple(r for r, s in RANKER_SPECS.items() if s.explain)
SIGNED_RANKERS = tuple(r for r, s in RANKER_SPECS.items() if s.signed)
FLOAT_KEYWORDS = ("C", "tol", "val_fraction")   # floats even where a config wrote 1


def ranker(name: str) -> Ranker:
    """The spec of ranker `name`; one line naming the valid ones when it is not one."""
    if name not in RANKER_SPECS:
        raise SimattrError(f"unknown ranker '{name}'; valid: {', '.join(RANKER_SPECS)}")
    return RANKER_SPECS[name]


def ranker_settings(c: dict, name: str) -> dict:
    """The keywords of ranker `name` from a validated config (rankers.score, datamodels.fit_datamodels): a change
    to another ranker's setting reruns none of its jobs."""
    return {kw: (None if c[section][key] is None else float(c[section][key])) if kw in FLOAT_KEYWORDS
            else c[section][key] for section, key, kw in ranker(name).keys}


METRICS = ("removal", "mislabel")
#: the schema: every config key, its type and its default (the one place defaults are written)
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error) -> str:
    v = error.validator
    where = _path(error)
    got = repr(error.instance)
    if v == "enum":
        return f"config key '{where}': got {got}, valid values: {', '.join(map(str, error.validator_value))}"
    if v == "type":
        return f"config key '{where}': expected {error.validator_value}, got {got}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"config key '{where}': expected a value {op} {error.validator_value}, got {got}"
    if v == "additionalProperties":
        return f"config key '{where}': {error.message} (check the spelling against the schema)"
    if v == "required":
        return f"config key '{where}': {error.message}"
    if v == "uniqueItems":
        return f"config key '{where}': has the same entry twice ({got})"
    if v == "minItems":
        return f"config key '{where}': expected at least {error.validator_value} item(s), got {got}"
    if v in ("anyOf", "oneOf"):
        opts = [s.get("description") or s.get("type") or s.get("const") for s in error.validator_value]
        return f"config key '{where}': got {got}, expected one of: {'; '.join(map(str, opts))}"
    return f"config key '{where}': {error.message}"


def _fill_defaults(schema: dict, instance: Any) -> None:
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key])


def validate(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Return a copy of `config` with the schema's defaults filled in; raise SimattrError on the first error."""
    import jsonschema

    if not Path(schema_path).exists():
        raise SimattrError(f"{schema_path}: the config schema is missing (simattr runs from its source tree: "
                           "pip install -e .)")
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(config or {})
    _fill_defaults(schema, config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), _path(e)))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise SimattrError(_describe(best))
    if isinstance(config.get("methods"), list):
        check_methods(config["methods"])
    if isinstance(config.get("support"), dict):
        check_support(config["support"])
    return config


def check_support(s: dict) -> None:
    """The support keys that bound each other (the schema checks each one alone)."""
    if s.get("seeds_max", 1) < s.get("seeds_min", 1):
        raise SimattrError(f"config key 'support.seeds_max': {s['seeds_max']} is below support.seeds_min "
                           f"({s['seeds_min']})")
    if s.get("max_models", 1) < s.get("seeds_min", 1):
        raise SimattrError(f"config key 'support.max_models': {s['max_models']} is below support.seeds_min "
                           f"({s['seeds_min']}): not even the k_max probe fits")


def check_methods(methods: list[dict]) -> None:
    """Model-based rankers go with encoder `model`, ranker `scores` with encoder `external` (which needs a name
    and a path, each name once), every other ranker with a feature extractor; only external methods take the
    scores file's keys."""
    names = set()
    for m in methods:
        e, r = m["encoder"], m["ranker"]
        where = f"config key 'methods': {{encoder: {e}, ranker: {r}" + (f", name: {m['name']}" if "name" in m
                                                                          else "") + "}"
        if (r == EXTERNAL_RANKER) != (e == EXTERNAL_ENCODER):
            raise SimattrError(f"{where}: an outside method's scores are {{encoder: {EXTERNAL_ENCODER}, ranker: "
                               f"{EXTERNAL_RANKER}, name: NAME, path: FILE}}")
        if e == EXTERNAL_ENCODER:
            missing = [k for k in ("name", "path") if k not in m]
            if missing:
                raise SimattrError(f"{where}: an external method needs {' and '.join(missing)} (name: the "
                                   "method's name in every table; path: its scores file)")
            if m["name"] in names:
                raise SimattrError(f"{where}: two external methods are named {m['name']!r}; each needs its own")
            names.add(m["name"])
            continue
        extra = [k for k in EXTERNAL_KEYS if k in m]
        if extra:
            raise SimattrError(f"{where}: {', '.join(extra)} belong to external methods ({{encoder: "
                               f"{EXTERNAL_ENCODER}, ranker: {EXTERNAL_RANKER}, ...}}) only")
        if (r in MODEL_RANKERS) != (e == MODEL_ENCODER):
            want = f"encoder {MODEL_ENCODER}" if r in MODEL_RANKERS else \
                f"a feature extractor ({', '.join(FEATURE_ENCODERS)})"
            raise SimattrError(f"{where}: ranker {r} needs {want}")


def method_id(m: dict) -> tuple[str, str]:
    """(encoder, ranker) of a method entry, as its paths and tables name it: an external method's ranker is its
    name (scores/external/NAME/, support/external/NAME/, "external/NAME" in every table)."""
    return (m["encoder"], m["name"] if m["encoder"] == EXTERNAL_ENCODER else m["ranker"])


def external_methods(config: dict) -> dict[str, dict]:
    """The config's external method entries by name (a validated config)."""
    return {m["name"]: m for m in config["methods"] if m["encoder"] == EXTERNAL_ENCODER}


def load(path: str | Path, schema_path: str | Path = SCHEMA) -> dict:
    path = Path(path)
    if not path.exists():
        raise SimattrError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SimattrError(f"{path}: not valid YAML ({e})") from None
    return validate(raw, schema_path)


@functools.cache
def defaults() -> dict:
    """The whole config as the schema's defaults make it (the one source of defaults)."""
    return validate({})
