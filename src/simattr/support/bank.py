"""The models of one support answer: a search.Bank whose models are trained (simattr.models) and journaled.

A model's seed depends only on (dataset, test image, k, seed index, seed set), so the same model is the same
bits in any search order, and a task that dies and runs again retrains none of the models its journal lists.
Seed set 0 gives the seeds of every earlier version; any other set independent models (a test-retest of the
whole evaluation).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np

from .. import models, store
from ..config import METRICS
from ..errors import SimattrError
from .search import Bank, Probe, bank_probe


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


class ModelBank(Bank):
    """The Bank of one answer whose models are real: the full-data models of the queries stage at k = 0 (seed set
    0 only: they were trained with today's seeds), the journal's, or freshly trained ones (one call to
    models.train_predict per batch, added to the journal as they finish; CNNs one model per call, each with a
    training state beside the journal (state_path) that a task requeued mid-model resumes from).
    `trainings` counts the models used that the full-data ones are not (trained now or in an earlier run)."""

    def __init__(self, *, X_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, label: int,
                 ranking: np.ndarray, metric: str, flip_class: int | None, n_classes: int, recipe: models.Recipe,
                 dataset: str, test_index: int, seed_set: int = 0, journal: Journal | None = None,
                 full_correct: np.ndarray | None = None):
        if metric not in METRICS:
            raise SimattrError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
        super().__init__(self._train, {i: bool(c) for i, c in enumerate(full_correct)}
                         if full_correct is not None and seed_set == 0 else {})
        self.X_train, self.y_train, self.x_query, self.label = X_train, y_train, x_query, label
        self.ranking, self.metric, self.flip_class = ranking, metric, flip_class
        self.n_classes, self.recipe, self.dataset, self.test_index = n_classes, recipe, dataset, test_index
        self.seed_set = seed_set
        self.journal = journal if journal is not None else Journal(None, "")

    @classmethod
    def for_answer(cls, inputs: dict, *, metric: str, recipe: models.Recipe, dataset: str, test_index: int,
                   seed_set: int, journal: Journal | None) -> "ModelBank":
        """The bank of one answer from its answer_inputs (the flip class only for mislabel)."""
        return cls(X_train=inputs["X_train"], y_train=inputs["y_train"], x_query=inputs["x_query"],
                   label=inputs["label"], ranking=inputs["ranking"], metric=metric,
                   flip_class=inputs["flip_class"] if metric == "mislabel" else None,
                   n_classes=inputs["n_classes"], recipe=recipe, dataset=dataset, test_index=test_index,
                   seed_set=seed_set, journal=journal, full_correct=inputs["full_correct"])

    def _train(self, k: int, indices: list[int]) -> list[bool]:
        """Bank's train: the journal's models, then the others trained (and journaled) in order."""
        known = {i: self.journal.get(k, i) for i in indices}
        out = {i: bool(e["correct"]) for i, e in known.items() if e is not None}
        todo = [i for i in indices if known[i] is None]
        if todo:
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
                    out[i] = ok
        return [out[i] for i in indices]

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


def make_probe(*, X_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, label: int, ranking: np.ndarray,
               metric: str, flip_class: int | None, n_classes: int, recipe: models.Recipe, seeds: int,
               threshold: float, early_stop: bool, dataset: str, test_index: int,
               journal: Journal | None = None, full_correct: np.ndarray | None = None,
               seed_set: int = 0) -> Callable[[int], Probe]:
    """A probe(k) of the released protocol for one test image (search.bank_probe over a new ModelBank).

    Models already in `journal` are not trained again; new ones are added to it as they finish.
    `full_correct`: whether each full-data model of the queries stage gets this image right; at k = 0 the
    training set is the full one, so seed index i < len(full_correct) uses full-data model i instead of
    training a model (probe.reused counts them; seed set 0 only)."""
    bank = ModelBank(X_train=X_train, y_train=y_train, x_query=x_query, label=label, ranking=ranking,
                     metric=metric, flip_class=flip_class, n_classes=n_classes, recipe=recipe, dataset=dataset,
                     test_index=test_index, seed_set=seed_set, journal=journal, full_correct=full_correct)
    return bank_probe(bank, seeds=seeds, threshold=threshold, early_stop=early_stop)
