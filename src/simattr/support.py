"""Counterfactual evaluation: data removal and data mislabel support of one test image.

The search knows nothing about which ranker made the ranking or which dataset it came from: it gets a
ranked list of training indices (best first) and a recipe to retrain with.

Two engines (support.engine), both drawing their models from one ModelBank per answer:
* bisection, the released protocol (docs/method-notes.md): probe k_max first; if the image is not flipped there, the
  support is None (censored at k_max); then k = 0; then bisection over k with a fixed budget of probes. A
  probe at k retrains `seeds` models and calls the image flipped when their mean accuracy on it is
  <= threshold. With early stopping a probe stops training as soon as the remaining models cannot change the
  decision (the decision is the one the full set of models would give, with fewer models).
* adaptive: the same first probes, then models go where the decision is uncertain: each probe adds seeds
  while its posterior probability of "flipped" is between 1 - confidence and confidence (up to seeds_max),
  and the next k is where the fitted curve crosses the threshold, until the bracket is one image wide or
  the answer's budget (max_models) is spent. The support is the crossing of the isotonic fit of every
  model's outcome (simattr.flipcurve).

Every answer carries both readings (support_bisection: the released rule; support_fitted: the fitted
crossing), the fitted curve, and 90% / 95% intervals from the models' posterior draws. A model's seed is
derived from (dataset, test image, k, seed index, seed set): seed set 0 gives today's seeds, any other set
independent models for a test-retest of the whole evaluation.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, flipcurve, models, store
from .config import METRICS, check_support
from .errors import SimattrError
from .queries import load_queries
from .typed import Named

PROTOCOL_VERSION = 5   # 2: k = 0 is probed after a flipping k_max probe; 3: the k = 0 probe reuses the
                       # full-data models of the queries stage; 4: seed sets, the adaptive engine, fitted curves;
                       # 5: the posterior draws' seed leaves the method's name out (curve_seed)


@dataclass
class Probe:
    k: int
    accuracy: float
    n_models: int
    flipped: bool
    reused: int = 0          # of n_models, how many were already trained elsewhere (the full-data models)

    def as_dict(self) -> dict:
        d = {"k": self.k, "accuracy": round(self.accuracy, 6), "n_models": self.n_models, "flipped": self.flipped}
        if self.reused:
            d["full_data_models"] = self.reused
        return d


def bisect_support(probe: Callable[[int], Probe], k_max: int, budget: int, *, first: Probe | None = None
                   ) -> tuple[int | None, list[Probe]]:
    """Smallest flipping k in 1..k_max by bisection after a k_max probe; None when k_max does not flip.

    With budget >= ceil(log2(k_max)) and a monotone probe the answer is the exact minimum.
    With a smaller budget it is the smallest flipping k seen (an upper bound). `first`: the k_max probe,
    when it was already made.
    """
    if k_max < 1:
        return None, []
    first = first if first is not None else probe(k_max)
    probes = [first]
    if not first.flipped:
        return None, probes
    lo, hi = 0, k_max        # lo: largest k known not to flip (k = 0: the full data, correct by selection)
    for _ in range(budget):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        p = probe(mid)
        probes.append(p)
        if p.flipped:
            hi = mid
        else:
            lo = mid
    return hi, probes


def models_needed(n_correct: int, n_trained: int, n_total: int, threshold: float) -> int:
    """How many more models to train before the probe's decision could be settled (0: settled now).

    The image is flipped when (correct of n_total) / n_total <= threshold.
    """
    limit = math.floor(threshold * n_total + 1e-9)   # flipped iff final correct <= limit
    remaining = n_total - n_trained
    if n_correct + remaining <= limit or n_correct > limit:
        return 0
    to_flip = n_correct + remaining - limit           # this many wrong answers settle "flipped"
    to_keep = limit - n_correct + 1                   # this many right answers settle "not flipped"
    return max(1, min(to_flip, to_keep, remaining))


def log_odds(p: np.ndarray, label: int) -> float:
    """log(p_label / (1 - p_label)) of a probability vector, clipped away from 0 and 1: a model's margin."""
    p_y = min(max(float(p[label]), 1e-12), 1.0 - 1e-12)
    return math.log(p_y) - math.log(1 - p_y)


def model_seed(dataset: str, test_index: int, k: int, seed_index: int, seed_set: int = 0) -> int:
    """The seed of one retrained model. Seed set 0 gives the seeds of every earlier version (today's answers
    unchanged); any other set salts every seed, so a rerun with another set trains independent models."""
    if seed_set == 0:
        return store.seed_from("model", dataset, test_index, k, seed_index)
    return store.seed_from("model", dataset, test_index, k, seed_index, "seed_set", seed_set)


class Journal(store.Journal):
    """Every model trained for one answer (store.Journal keyed by (k, seed_index)): a task that dies and runs
    again retrains none of the models listed there."""

    def __init__(self, path: str | Path | None, identity: str):
        super().__init__(path, identity, key=("k", "seed_index"))
        self.reused = 0

    @property
    def models(self) -> dict[tuple[int, int], dict]:
        return self.entries

    def get(self, k: int, seed_index: int) -> dict | None:
        entry = self.entries.get((k, seed_index))
        if entry is not None:
            self.reused += 1
        return entry

    def add(self, k: int, seed_index: int, seed: int, pred: int, correct: bool, margin: float,
            resumed_at: list[int] | None = None) -> None:
        """One finished model; `resumed_at`: the epochs its training resumed at from its state (CNNs only; left
        out when it trained in one go)."""
        extra = {"resumed_at": list(resumed_at)} if resumed_at else {}
        super().add(k=k, seed_index=seed_index, seed=seed, pred=pred, correct=correct, margin=round(margin, 6),
                    **extra)


def state_path(journal: str | Path, k: int, seed_index: int) -> Path:
    """The training state of model (k, seed index) of an answer: {stem}.k{k}.s{seed_index}.state.pt beside its
    journal {stem}.journal.jsonl (stem: the answer's name without .json)."""
    p = Path(journal)
    return p.with_name(f"{p.name.removesuffix('.journal.jsonl')}.k{k}.s{seed_index}.state.pt")


def modified_training_set(X_train: np.ndarray, y_train: np.ndarray, ranking: np.ndarray, k: int, metric: str,
                          flip_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training set of a probe at k: the ranking's top k removed (removal) or relabelled to the flip
    class (mislabel)."""
    top = ranking[:k]
    if metric == "removal":
        keep = np.ones(len(y_train), bool)
        keep[top] = False
        return X_train[keep], y_train[keep]
    y = y_train.copy()
    y[top] = flip_class
    return X_train, y


class ModelBank:
    """Every model of one answer, by (k, seed index): whether it classifies the test image correctly.

    `ensure(k, indices)` makes those models known: the full-data models of the queries stage at k = 0 (seed set
    0 only: they were trained with today's seeds), the journal's, or freshly trained ones (one call to
    models.train_predict per batch, added to the journal as they finish; CNNs one model per call, each with a
    training state beside the journal (state_path) that a task requeued mid-model resumes from). A model's seed
    depends only on (dataset, test image, k, seed index, seed set), so the same model is the same bits in any search
    order.
    `trainings` counts the models used that the full-data ones are not (trained now or in an earlier run)."""

    def __init__(self, *, X_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, label: int,
                 ranking: np.ndarray, metric: str, flip_class: int | None, n_classes: int, recipe: models.Recipe,
                 dataset: str, test_index: int, seed_set: int = 0, journal: Journal | None = None,
                 full_correct: np.ndarray | None = None):
        if metric not in METRICS:
            raise SimattrError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
        self.X_train, self.y_train, self.x_query, self.label = X_train, y_train, x_query, label
        self.ranking, self.metric, self.flip_class = ranking, metric, flip_class
        self.n_classes, self.recipe, self.dataset, self.test_index = n_classes, recipe, dataset, test_index
        self.seed_set = int(seed_set)
        self.journal = journal if journal is not None else Journal(None, "")
        self.full = ({i: bool(c) for i, c in enumerate(full_correct)}
                     if full_correct is not None and self.seed_set == 0 else {})
        self.outcomes: dict[int, dict[int, bool]] = {}
        self.trainings = 0

    @classmethod
    def for_answer(cls, inputs: dict, *, metric: str, recipe: models.Recipe, dataset: str, test_index: int,
                   seed_set: int, journal: Journal | None) -> "ModelBank":
        """The bank of one answer from its answer_inputs (the flip class only for mislabel)."""
        return cls(X_train=inputs["X_train"], y_train=inputs["y_train"], x_query=inputs["x_query"],
                   label=inputs["label"], ranking=inputs["ranking"], metric=metric,
                   flip_class=inputs["flip_class"] if metric == "mislabel" else None,
                   n_classes=inputs["n_classes"], recipe=recipe, dataset=dataset, test_index=test_index,
                   seed_set=seed_set, journal=journal, full_correct=inputs["full_correct"])

    def ensure(self, k: int, indices) -> None:
        have = self.outcomes.setdefault(k, {})
        todo = []
        for i in indices:
            if i in have:
                continue
            if k == 0 and i in self.full:
                have[i] = self.full[i]
                continue
            self.trainings += 1
            entry = self.journal.get(k, i)
            if entry is not None:
                have[i] = bool(entry["correct"])
            else:
                todo.append(i)
        if not todo:
            return
        X, y = modified_training_set(self.X_train, self.y_train, self.ranking, k, self.metric, self.flip_class)
        cnn = self.recipe.name in models.CNN_MODELS
        for batch in ([[i] for i in todo] if cnn else [todo]):       # a CNN is journaled as soon as it is done
            s = [model_seed(self.dataset, self.test_index, k, i, self.seed_set) for i in batch]
            states = [self.training_state(k, i) for i in batch] if cnn else None
            probs = models.train_predict(X, y, self.x_query[None], seeds=s, n_classes=self.n_classes,
                                         recipe=self.recipe, states=states)
            for j, (i, seed, p) in enumerate(zip(batch, s, probs[:, 0])):
                ok = bool(p.argmax() == self.label)
                self.journal.add(k, i, seed, pred=int(p.argmax()), correct=ok, margin=log_odds(p, self.label),
                                 resumed_at=states[j].resumed_at if states and states[j] else None)
                have[i] = ok

    def training_state(self, k: int, seed_index: int) -> models.TrainingState | None:
        """Where model (k, seed index) saves its training state: beside the journal (none without a journal file).
        Its identity holds the answer's (the journal's: ranking, inputs, settings) and k; models adds the recipe,
        seed and training labels."""
        if self.journal.path is None:
            return None
        top = np.ascontiguousarray(self.ranking[:k], dtype=np.int64)
        data = store.config_hash({"answer": self.journal.identity, "k": int(k), "metric": self.metric,
                                  "changed": hashlib.sha256(top.tobytes()).hexdigest(),
                                  "flip_class": self.flip_class})
        return models.TrainingState(path=state_path(self.journal.path, k, seed_index), data=data,
                                    name=f"model k={k} seed={seed_index} of test image {self.test_index}")

    def count(self, k: int) -> tuple[int, int]:
        """(models, correct) at k."""
        have = self.outcomes.get(k, {})
        return len(have), int(sum(have.values()))

    def grow(self, k: int, n: int) -> tuple[int, int]:
        """Make at least n models known at k (seed indices 0..n-1); (models, correct) there."""
        self.ensure(k, range(n))
        return self.count(k)

    def points(self) -> flipcurve.Points:
        return flipcurve.Points.from_counts({k: self.count(k) for k in self.outcomes})

    def full_used(self, k: int) -> int:
        return sum(1 for i in self.outcomes.get(k, {}) if k == 0 and i in self.full)


def make_probe(*, X_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, label: int, ranking: np.ndarray,
               metric: str, flip_class: int | None, n_classes: int, recipe: models.Recipe, seeds: int,
               threshold: float, early_stop: bool, dataset: str, test_index: int,
               journal: Journal | None = None, full_correct: np.ndarray | None = None,
               seed_set: int = 0) -> Callable[[int], Probe]:
    """A probe(k) of the released protocol for one test image (bank_probe over a new ModelBank).

    Models already in `journal` are not trained again; new ones are added to it as they finish.
    `full_correct`: whether each full-data model of the queries stage gets this image right; at k = 0 the
    training set is the full one, so seed index i < len(full_correct) uses full-data model i instead of
    training a model (probe.reused counts them; seed set 0 only)."""
    bank = ModelBank(X_train=X_train, y_train=y_train, x_query=x_query, label=label, ranking=ranking,
                     metric=metric, flip_class=flip_class, n_classes=n_classes, recipe=recipe, dataset=dataset,
                     test_index=test_index, seed_set=seed_set, journal=journal, full_correct=full_correct)
    return bank_probe(bank, seeds=seeds, threshold=threshold, early_stop=early_stop)


def bank_probe(bank: ModelBank, *, seeds: int, threshold: float, early_stop: bool) -> Callable[[int], Probe]:
    """probe(k): `seeds` models of `bank` at k; flipped when their mean accuracy on the image is <= threshold.
    With early stopping it stops adding models once the decision is settled (the same decision, fewer
    models)."""
    if not 0.0 <= threshold < 1.0 or seeds < 1:
        raise SimattrError(f"support.threshold must be in [0, 1) and support.seeds >= 1 (got {threshold}, {seeds})")

    def probe(k: int) -> Probe:
        limit = math.floor(threshold * seeds + 1e-9)   # flipped iff correct models <= limit
        correct, trained = 0, 0
        pending = list(range(seeds))
        while pending:
            n_next = models_needed(correct, trained, seeds, threshold) if early_stop else len(pending)
            if n_next == 0:
                break
            batch, pending = pending[:n_next], pending[n_next:]
            bank.ensure(k, batch)
            correct += sum(bank.outcomes[k][i] for i in batch)
            trained += len(batch)
        # settled (or complete): the decision equals the one all `seeds` models would give
        reused = sum(1 for i in range(trained) if k == 0 and i in bank.full)
        return Probe(k=k, accuracy=correct / trained, n_models=trained, flipped=correct <= limit, reused=reused)

    return probe

def next_k(lo: int, hi: int, g_lo: float, g_hi: float, threshold: float) -> int:
    """The next k to probe inside the bracket (lo, hi) (hi - lo >= 2): where the fitted curve, drawn straight
    between the bracket's ends, crosses the threshold (regula falsi), kept within the bracket's middle half so
    that every probe at least quarters it (a sharp curve is probed as bisection would)."""
    t = (g_lo - threshold) / max(g_lo - g_hi, 1e-12)
    k = lo + min(max(t, 0.0), 1.0) * (hi - lo)
    quarter = (hi - lo) / 4.0
    k = min(max(k, lo + quarter), hi - quarter)
    return int(min(max(round(k), lo + 1), hi - 1))


def adaptive_search(bank: ModelBank, k_max: int, *, threshold: float, seeds_min: int, seeds_max: int,
                    max_models: int, confidence: float) -> list[Probe]:
    """Spend at most `max_models` models of one answer where its decision is uncertain.

    A probe at k starts with `seeds_min` models and adds two at a time while the posterior probability that
    the image is flipped there (flipcurve.flip_probability) lies strictly between 1 - confidence and
    confidence, up to `seeds_max`. Order: k_max (not flipped by the fitted curve: censored, stop); k = 0 when
    the full-data models answer it for free (seed set 0), else only once k = 1 is flipped (the sampled images
    are the ones the full-data models get right, so below the smallest probed k the fit assumes an accuracy of
    1 at k = 0 until models there say otherwise); then, while the fitted curve's bracket (lo, hi] around its
    crossing is wider than one image, the k where the fitted curve crosses the threshold inside it (next_k). The answer itself is the fitted curve's crossing
    (flipcurve.estimate); the returned probes record where the models went, in order."""
    probes: list[Probe] = []

    def left() -> int:
        return max_models - bank.trainings

    def sure(n: int, c: int) -> bool:
        p = flipcurve.flip_probability(n, c, threshold)
        return p <= 1.0 - confidence or p >= confidence

    def sequential(k: int) -> None:
        n, c = bank.count(k)
        want = max(n, seeds_min)
        free = sum(1 for i in range(n, want) if not (k == 0 and i in bank.full))
        if free > left():
            want = n + left() + sum(1 for i in range(n, want) if k == 0 and i in bank.full)
        n, c = bank.grow(k, want) if want > n else (n, c)
        while n and not sure(n, c) and n < seeds_max and left() > 0:
            n, c = bank.grow(k, min(n + 2, seeds_max, n + left()))
        if n:
            probes.append(Probe(k=k, accuracy=c / n, n_models=n, flipped=c / n <= threshold + 1e-12,
                                reused=bank.full_used(k)))

    sequential(k_max)
    if not probes:
        return probes
    fit = flipcurve.estimate(bank.points(), threshold, n_draws=0)
    if not math.isfinite(fit.support):
        return probes
    if bank.full:           # the full-data models answer k = 0 for free; otherwise k = 0 waits until it matters
        sequential(0)
    while left() > 0:
        pts = bank.points()
        fit = flipcurve.estimate(pts, threshold, n_draws=0)
        if not math.isfinite(fit.support) or fit.lo < 0:        # censored, or flipped at k = 0
            break
        if fit.hi - fit.lo <= 1:
            if fit.lo == 0 and 0 not in bank.outcomes:         # flipped at k = 1: is it flipped at k = 0?
                sequential(0)
                continue
            break
        j = int(np.searchsorted(pts.k, fit.hi))
        g_lo = float(fit.fitted[j - 1]) if j > 0 else 1.0        # nothing probed below: correct at k = 0
        sequential(next_k(int(fit.lo), int(fit.hi), g_lo, float(fit.fitted[j]), threshold))
    return probes


def load_scores(path: str) -> dict:
    return {"path": str(path), **store.read_scores(path)}


def answer_inputs(queries: dict, scores: dict, test_index: int) -> dict:
    """Everything one answer reads: the retraining data, the image, its label and flip class, its ranking.
    `queries` and `scores` come from load_queries / load_scores (read once, shared by many images)."""
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


def answer_hash(metric: str, test_index: int, settings: dict, inputs: dict) -> str:
    """The identity of an answer: its settings, the exact ranking and query it was computed from, and the
    code version. A stored answer with the same hash is reused, never recomputed; any change recomputes."""
    identity = _answer_identity(metric, test_index, settings, inputs)
    if inputs.get("scores_source"):       # an external method's scores file (its content hash)
        identity["scores_source"] = inputs["scores_source"]
    return store.config_hash(identity)


def curve_seed(metric: str, test_index: int, settings: dict, inputs: dict) -> int:
    """The seed of an answer's posterior draws: its identity without the method's name, so that two methods
    with the same ranking of an image (an external method's copy of a built-in one) give the same answer, as
    they train the same models."""
    plain = {k: v for k, v in settings.items() if k not in ("encoder", "ranker")}
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


def expected_answer(*, queries_path: str, scores_path: str, out_path: str, test_index: int, metric: str,
                    settings: dict, queries: dict | None = None, scores: dict | None = None) -> dict | None:
    """The stored answer if it is still valid for these inputs, else None (the task must run).
    `queries` / `scores`: the files already loaded, when the caller checks many images."""
    inputs = answer_inputs(queries or load_queries(queries_path), scores or load_scores(scores_path), test_index)
    return finished_answer(out_path, answer_hash(metric, test_index, engine_settings(settings), inputs))


def check_k(support: int, k_max: int, probed: set[int], n: int) -> list[int]:
    """Up to n values of k in (support, k_max) not probed yet, evenly spread, to test the monotonicity that
    bisection assumes (an image flipped at `support` should stay flipped at every larger k)."""
    free = [k for k in range(support + 1, k_max) if k not in probed]
    if n <= 0 or not free:
        return []
    picks = np.linspace(0, len(free) - 1, num=min(n, len(free)) + 2)[1:-1] if len(free) > n else range(len(free))
    return sorted({free[int(round(i))] for i in picks})


def monotone_checks(probe: Callable[[int], Probe], support: int | None, k_max: int, probes: list[Probe],
                    n: int) -> list[Probe]:
    """Probe up to n unprobed k above the support; each one that is not flipped is a monotonicity violation
    (flipped at the support, not at a larger k). Nothing to check when the support is None."""
    if support is None:
        return []
    return [probe(k) for k in check_k(support, k_max, {p.k for p in probes}, n)]


def search(probe: Callable[[int], Probe], k_max: int, budget: int) -> tuple[int | None, list[Probe]]:
    """The protocol: k_max first (not flipped: None); then k = 0 (flipped already without any change: 0,
    the image sits on a seed-noise boundary and bisection's assumption fails); then bisection."""
    if k_max < 1:
        return None, []
    first = probe(k_max)
    if not first.flipped:
        return None, [first]
    zero = probe(0)
    if zero.flipped:
        return 0, [first, zero]
    support, rest = bisect_support(probe, k_max, budget, first=first)
    return support, [first, zero] + rest[1:]


ENGINES = ("adaptive", "bisection")
DRAWS = 1000                    # posterior draws of an answer's curve (flipcurve.estimate)
ENGINE_KEYS = {                 # the settings each engine reads (only these enter an answer's identity)
    "bisection": ("bisection_steps", "seeds", "early_stop", "monotone_checks"),
    "adaptive": ("seeds_min", "seeds_max", "max_models", "confidence"),
}
COMMON_KEYS = ("dataset", "encoder", "ranker", "k_max", "threshold", "seed_set", "engine", "model")


@dataclass(frozen=True)
class Settings(Named):
    """An answer's settings: the method, the metric's k_max, the config's `support` keys its engine reads
    (COMMON_KEYS and ENGINE_KEYS; the other engine's are None) and the retrained model's identity. No defaults
    here: the schema has them. identity() is what every answer's hash holds."""
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
        check_settings(self.identity())


def engine_settings(settings: dict) -> dict:
    """The settings an answer depends on, picked from `settings` (which may hold more: the other engine's
    keys, the config's other support keys): the common ones and its engine's (a change to the other engine's
    keys recomputes nothing). Checked (Settings); one line for a missing key."""
    return Settings.from_config(settings).identity()


def check_settings(s: dict) -> None:
    """One-line errors for settings no search can use."""
    if not 0.0 <= float(s["threshold"]) < 1.0:
        raise SimattrError(f"support.threshold must be in [0, 1) (got {s['threshold']})")
    if int(s["seed_set"]) < 0:
        raise SimattrError(f"support.seed_set must be >= 0 (got {s['seed_set']})")
    if s["engine"] == "bisection" and int(s["seeds"]) < 1:
        raise SimattrError(f"support.seeds must be >= 1 (got {s['seeds']})")
    if s["engine"] == "adaptive":
        if int(s["seeds_min"]) < 1:
            raise SimattrError(f"support.seeds_min must be >= 1 (got {s['seeds_min']})")
        check_support(s)                  # the keys that bound each other, as the config is checked
        if not 0.5 < float(s["confidence"]) < 1.0:
            raise SimattrError(f"support.confidence must be in (0.5, 1) (got {s['confidence']})")


def released_reading(probes: list[Probe]) -> int | None:
    """The released protocol's rule read off a search's probes: None when the first probe (k_max) is not
    flipped by its own models, else the smallest probed k that is."""
    if not probes or not probes[0].flipped:
        return None
    return min(p.k for p in probes if p.flipped)


def curve_record(bank: ModelBank, *, engine: str, bisection: int | None, probes: list[Probe], checks: list[Probe],
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


def answer(*, queries_path: str, scores_path: str, out_path: str, test_index: int, metric: str,
           settings: dict) -> dict:
    """Compute (or reuse) one test image's support answer; write it atomically to out_path.

    settings: dataset, encoder, ranker, k_max, threshold, seed_set, engine, model {name, ...}, and the engine's
    own keys (ENGINE_KEYS): bisection (the released protocol) bisection_steps, seeds, early_stop,
    monotone_checks; adaptive seeds_min, seeds_max, max_models, confidence.
    """
    t0 = time.perf_counter()
    settings = engine_settings(settings)
    inputs = answer_inputs(load_queries(queries_path), load_scores(scores_path), test_index)
    a_hash = answer_hash(metric, test_index, settings, inputs)
    prev = finished_answer(out_path, a_hash)
    if prev is not None:
        return prev
    k_max = int(min(settings["k_max"], len(inputs["ranking"])))
    flip = inputs["flip_class"] if metric == "mislabel" else None
    threshold = float(settings["threshold"])
    journal = Journal(journal_path(out_path), a_hash)
    bank = ModelBank.for_answer(inputs, metric=metric, recipe=models.Recipe.from_settings(settings["model"]),
                                dataset=settings["dataset"], test_index=test_index,
                                seed_set=int(settings["seed_set"]), journal=journal)
    checks: list[Probe] = []
    try:
        if settings["engine"] == "bisection":
            probe = bank_probe(bank, seeds=int(settings["seeds"]), threshold=threshold,
                               early_stop=bool(settings["early_stop"]))
            bisection, probes = search(probe, k_max, int(settings["bisection_steps"]))
            checks = monotone_checks(probe, bisection, k_max, probes, int(settings["monotone_checks"]))
        else:
            probes = adaptive_search(bank, k_max, threshold=threshold, seeds_min=int(settings["seeds_min"]),
                                     seeds_max=int(settings["seeds_max"]), max_models=int(settings["max_models"]),
                                     confidence=float(settings["confidence"]))
            bisection = released_reading(probes)
    finally:
        journal.close()
    result = {
        "dataset": settings["dataset"], "encoder": settings["encoder"], "ranker": settings["ranker"],
        "metric": metric, "test_index": int(test_index), "label": inputs["label"], "flip_class": flip,
        "engine": settings["engine"], "seed_set": int(settings["seed_set"]),
        **curve_record(bank, engine=settings["engine"], bisection=bisection, probes=probes, checks=checks,
                       threshold=threshold, k_max=k_max,
                       seed=curve_seed(metric, test_index, settings, inputs)),
        "wall_s": round(time.perf_counter() - t0, 4), "settings_hash": a_hash, "models_reused": journal.reused,
    }
    if inputs.get("scores_source"):
        result["scores_sha256"] = inputs["scores_source"]
    store.write_json(out_path, result)
    return result
