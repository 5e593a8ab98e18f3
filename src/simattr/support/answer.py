"""One support answer: its settings (Settings, checked once where they are built), its identity (the hash that
names its files and seeds its curve's draws), its inputs, and the answer itself (compute: the search of the
settings' engine over a journaled ModelBank, read into the answer's figures).

Every answer carries both readings (support_bisection: the released rule; support_fitted: the fitted
crossing), the fitted curve, and 90% / 95% intervals from the models' posterior draws.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, flipcurve, models, store
from ..config import check_support
from ..errors import SimattrError
from ..typed import Named
from .bank import Journal, ModelBank
from .search import Bank, Probe, adaptive_search, bank_probe, monotone_checks, released_reading, search

PROTOCOL_VERSION = 5   # 2: k = 0 is probed after a flipping k_max probe; 3: the k = 0 probe reuses the
                       # full-data models of the queries stage; 4: seed sets, the adaptive engine, fitted curves;
                       # 5: the posterior draws' seed leaves the method's name out (curve_seed)
ENGINES = ("adaptive", "bisection")
DRAWS = 1000                    # posterior draws of an answer's curve (flipcurve.estimate)
ENGINE_KEYS = {                 # the settings each engine reads (only these enter an answer's identity)
    "bisection": ("bisection_steps", "seeds", "early_stop", "monotone_checks"),
    "adaptive": ("seeds_min", "seeds_max", "max_models", "confidence"),
}
COMMON_KEYS = ("dataset", "encoder", "ranker", "k_max", "threshold", "seed_set", "engine", "model")
_TYPES = {"str": (str, "a string"), "int": (int, "an integer"), "float": (float, "a number"),   # a field's annotation
          "bool": (bool, "true or false"), "dict": (dict, "a mapping")}                     # -> its type, in words


@dataclass(frozen=True)
class Settings(Named):
    """An answer's settings: the method, the metric's k_max, the config's `support` keys its engine reads
    (COMMON_KEYS and ENGINE_KEYS; the other engine's are None) and the retrained model's identity (`model`; its
    models.Recipe is `recipe`). No defaults here: the schema has them. Built once per support job (settings.parse)
    and handed as it is to the stage, its tasks and compute; checked as it is built (a wrong type or value is one
    line naming the key). identity() is what every answer's hash holds."""
    dataset: str
    encoder: str
    ranker: str
    k_max: int
    threshold: float
    seed_set: int
    engine: str
    model: dict
    bisection_steps: int | None
    seeds: int | None
    early_stop: bool | None
    monotone_checks: int | None
    seeds_min: int | None
    seeds_max: int | None
    max_models: int | None
    confidence: float | None
    FIELDS = {e: COMMON_KEYS + ENGINE_KEYS[e] for e in ENGINES}
    WHAT = "support"
    KEY = "engine"

    def __post_init__(self):
        for k in self.FIELDS[self.engine]:
            kind, words = _TYPES[self.__dataclass_fields__[k].type.split(" |")[0]]
            v = getattr(self, k)
            if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
                raise SimattrError(f"support.{k} must be {words} (got {v!r})")
        if not 0.0 <= self.threshold < 1.0:
            raise SimattrError(f"support.threshold must be in [0, 1) (got {self.threshold})")
        if self.seed_set < 0:
            raise SimattrError(f"support.seed_set must be >= 0 (got {self.seed_set})")
        if self.engine == "bisection" and self.seeds < 1:
            raise SimattrError(f"support.seeds must be >= 1 (got {self.seeds})")
        if self.engine == "adaptive":
            if self.seeds_min < 1:
                raise SimattrError(f"support.seeds_min must be >= 1 (got {self.seeds_min})")
            check_support({"seeds_min": self.seeds_min, "seeds_max": self.seeds_max,       # as the config is
                           "max_models": self.max_models})                                # checked
            if not 0.5 < self.confidence < 1.0:
                raise SimattrError(f"support.confidence must be in (0.5, 1) (got {self.confidence})")
        # the retrained model, checked and built once with the rest (not a field: `model` is its identity)
        object.__setattr__(self, "recipe", models.Recipe.from_settings(self.model, where="support model"))


# ----------------------------------------------------------------------------------------- inputs, identity
def load_scores(path: str) -> dict:
    return {"path": str(path), **store.read_scores(path)}


def answer_inputs(queries: dict, scores: dict, test_index: int) -> dict:
    """Everything one answer reads: the retraining data, the image, its label and flip class, its ranking.
    `queries` and `scores` come from queries.load_queries / load_scores (read once, shared by many images)."""
    arrays, qattrs = queries["arrays"], queries["attrs"]
    where = np.flatnonzero(arrays["test_indices"] == test_index)
    if len(where) != 1:
        raise SimattrError(f"{queries['path']}: test image {test_index} is not among the sampled queries")
    qi = int(where[0])
    row = np.flatnonzero(scores["test_indices"] == test_index)
    if len(row) != 1:
        hint = " (its method's scores file has no row for it: score every sampled test image, listed in the " \
            "export's sampled_test_indices.txt)" if scores["attrs"].get("source_sha256") else ""
        raise SimattrError(f"{scores['path']}: no scores for test image {test_index}{hint}")
    ranking = scores["train_indices"][np.argsort(-scores["scores"][row[0]], kind="stable")]
    full = arrays.get("full_correct")
    return {"X_train": arrays["X_train"], "y_train": arrays["y_train"], "x_query": arrays["X_query"][qi],
            "full_correct": None if full is None else full[:, qi].astype(bool),
            "label": int(arrays["y_query"][qi]), "flip_class": int(arrays["flip_class"][qi]), "ranking": ranking,
            "n_classes": int(qattrs["n_classes"]), "queries_hash": str(qattrs.get("config_hash", "")),
            "scores_source": scores["attrs"].get("source_sha256")}


def journal_path(answer_path: str | Path) -> Path:
    """{test_index}.journal.jsonl beside {test_index}.json."""
    p = Path(answer_path)
    return p.with_name(p.stem + ".journal.jsonl")


def answer_hash(metric: str, test_index: int, settings: Settings, inputs: dict) -> str:
    """The identity of an answer: its settings, the exact ranking and query it was computed from, and the
    code version. A stored answer with the same hash is reused, never recomputed; any change recomputes."""
    identity = _answer_identity(metric, test_index, settings.identity(), inputs)
    if inputs.get("scores_source"):       # an external method's scores file (its content hash)
        identity["scores_source"] = inputs["scores_source"]
    return store.config_hash(identity)


def curve_seed(metric: str, test_index: int, settings: Settings, inputs: dict) -> int:
    """The seed of an answer's posterior draws: its identity without the method's name, so that two methods
    with the same ranking of an image (an external method's copy of a built-in one) give the same answer, as
    they train the same models."""
    plain = {k: v for k, v in settings.identity().items() if k not in ("encoder", "ranker")}
    return int(store.config_hash(_answer_identity(metric, test_index, plain, inputs)), 16) & 0x7FFFFFFF


def _answer_identity(metric: str, test_index: int, settings: dict, inputs: dict) -> dict:
    ranking = np.ascontiguousarray(inputs["ranking"], dtype=np.int64)
    return {
        "metric": metric, "test_index": int(test_index), "settings": settings,
        "ranking": hashlib.sha256(ranking.tobytes()).hexdigest(), "label": inputs["label"],
        "flip_class": inputs["flip_class"] if metric == "mislabel" else None,
        "queries": inputs["queries_hash"], "simattr_version": __version__, "protocol": PROTOCOL_VERSION}


def finished_answer(path: str | Path, a_hash: str) -> dict | None:
    """The answer stored at `path` if it is complete and has this identity."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        prev = store.read_json(path)
    except SimattrError:
        return None
    return prev if isinstance(prev, dict) and prev.get("settings_hash") == a_hash else None


# ----------------------------------------------------------------------------------------- the answer
def curve_record(bank: Bank, *, engine: str, bisection: int | None, probes: list[Probe], checks: list[Probe],
                 threshold: float, k_max: int, seed: int) -> dict:
    """The answer's figures from every model in `bank`: support (the bisection answer for the bisection engine,
    the fitted crossing for the adaptive one), both readings, the interpolated crossing, 90% / 95% intervals
    and the probability of censoring from the posterior draws, the curve (k, models, correct, accuracy,
    fitted) and where the models went (probes, checks), and monotonicity violations."""
    points = bank.points()
    est = flipcurve.estimate(points, threshold, n_draws=DRAWS, seed=seed)
    fitted = flipcurve.as_int(est.support)
    support = bisection if engine == "bisection" else fitted
    if engine == "bisection":
        violations = sum(not p.flipped for p in checks)
    else:   # probed k above the answer where the image's own models still say "not flipped"
        violations = 0 if fitted is None else int(sum(
            1 for k, n, c in zip(points.k, points.n, points.c) if k > fitted and c / n > threshold + 1e-12))

    def interval(level: float) -> list[int | None]:
        lo, hi = est.interval(level)
        return [flipcurve.as_int(lo), flipcurve.as_int(hi)]

    curve = []
    for k, n, c, g in zip(points.k, points.n, points.c, est.fitted):
        rec = {"k": int(k), "n_models": int(n), "n_correct": int(c), "accuracy": round(float(c / n), 6),
               "fitted": round(float(g), 6)}
        if bank.full_used(int(k)):
            rec["full_data_models"] = bank.full_used(int(k))
        curve.append(rec)
    return {"support": support, "support_bisection": bisection, "support_fitted": fitted,
            "crossing": None if est.crossing is None else round(est.crossing, 3),
            "support_ci90": interval(0.90), "support_ci95": interval(0.95), "p_censored": round(est.p_censored, 4),
            "k_max": k_max, "threshold": threshold, "trainings": int(bank.trainings), "curve": curve,
            "probes": [p.as_dict() for p in probes], "checks": [p.as_dict() for p in checks],
            "violations": violations}


def compute(inputs: dict, *, metric: str, test_index: int, settings: Settings, out_path: str | Path,
            started: float | None = None) -> dict:
    """Compute (or reuse) one test image's support answer from its answer_inputs; write it atomically to
    out_path (its journal beside it: journal_path). `started`: when the answer's work began (its wall_s; default
    now)."""
    t0 = time.perf_counter() if started is None else started
    a_hash = answer_hash(metric, test_index, settings, inputs)
    prev = finished_answer(out_path, a_hash)
    if prev is not None:
        return prev
    k_max = min(settings.k_max, len(inputs["ranking"]))
    flip = inputs["flip_class"] if metric == "mislabel" else None
    journal = Journal(journal_path(out_path), a_hash)
    bank = ModelBank.for_answer(inputs, metric=metric, recipe=settings.recipe, dataset=settings.dataset,
                                test_index=test_index, seed_set=settings.seed_set, journal=journal)
    checks: list[Probe] = []
    try:
        if settings.engine == "bisection":
            probe = bank_probe(bank, seeds=settings.seeds, threshold=settings.threshold,
                               early_stop=settings.early_stop)
            bisection, probes = search(probe, k_max, settings.bisection_steps)
            checks = monotone_checks(probe, bisection, k_max, probes, settings.monotone_checks)
        else:
            probes = adaptive_search(bank, k_max, threshold=settings.threshold, seeds_min=settings.seeds_min,
                                     seeds_max=settings.seeds_max, max_models=settings.max_models,
                                     confidence=settings.confidence)
            bisection = released_reading(probes)
    finally:
        journal.close()
    result = {
        "dataset": settings.dataset, "encoder": settings.encoder, "ranker": settings.ranker,
        "metric": metric, "test_index": int(test_index), "label": inputs["label"], "flip_class": flip,
        "engine": settings.engine, "seed_set": settings.seed_set,
        **curve_record(bank, engine=settings.engine, bisection=bisection, probes=probes, checks=checks,
                       threshold=settings.threshold, k_max=k_max,
                       seed=curve_seed(metric, test_index, settings, inputs)),
        "wall_s": round(time.perf_counter() - t0, 4), "settings_hash": a_hash, "models_reused": journal.reused,
    }
    if inputs.get("scores_source"):
        result["scores_sha256"] = inputs["scores_source"]
    store.write_json(out_path, result)
    return result
