"""The queries stage: models trained on all the training data, the sample of test images they classify
correctly (the images every method is evaluated on), and each one's flip class (its runner-up: the mislabel
target); queries.h5 also holds what the support tasks retrain with (the training images, or for streamed
recipes the dataset that holds them). `load_queries` reads it back."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import datasets, models, store
from .errors import SimattrError

QUERY_KEYS = ("y_train", "test_indices", "X_query", "y_query", "flip_class")


def load_queries(path: str) -> dict:
    """queries.h5; the training images are its X_train, or (streamed recipes) the dataset its data_spec names."""
    arrays, attrs = store.read_arrays(path, QUERY_KEYS, optional=("full_correct", "X_train"))
    if "X_train" not in arrays:
        if "data_spec" not in attrs:
            raise SimattrError(f"{path}: holds neither X_train nor data_spec (the training images)")
        arrays["X_train"] = datasets.load_split(datasets.Spec.from_config(json.loads(attrs["data_spec"])), "train")
    return {"path": str(path), "arrays": arrays, "attrs": attrs}


def prepare_queries(*, data, n_test: int, sample_seed: int,
                    flip_models: int, recipe: models.Recipe, out_path: str, log=None) -> dict:
    """Train `flip_models` models on the full training data; sample the test images to evaluate.

    Only test images the full-data models classify correctly (mean accuracy > 0.5) are eligible: for the
    others the support is trivially 0. Each sampled image's flip class is the runner-up class of the
    averaged predictions (the top one if the runner-up is its own label). Writes the retraining inputs too,
    so that support workers need nothing but this file and a score file. A CNN full-data model saves its
    training state beside out_path ({stem}.m{i}.state.pt, models.TrainingState): a rerun resumes it mid-training.
    """
    tr = datasets.load_split(data, "train")
    te = datasets.load_split(data, "test")
    n_classes = len(tr.class_names)
    dataset = data.name
    streamed = recipe.name in models.STREAMED_MODELS
    X_train, X_test = models.prepare_inputs(recipe, *((tr, te) if streamed else (tr.images, te.images)))
    seeds = [store.seed_from("full", dataset, i) for i in range(flip_models)]
    out = Path(out_path)
    states = [models.TrainingState(path=out.with_name(f"{out.stem}.m{i}.state.pt"), name=f"full-data model {i}",
                                   data=store.config_hash({**data.identity(), "purpose": "queries"}))
              for i in range(flip_models)]
    probs = models.train_predict(X_train, tr.labels, X_test, seeds=seeds, n_classes=n_classes, recipe=recipe,
                                 states=states)
    mean_probs = probs.mean(0)
    correct = probs.argmax(-1) == te.labels[None]                  # (models, test images)
    acc = correct.mean(0)                                          # per test image, over models
    eligible = np.flatnonzero(acc > 0.5)
    if len(eligible) < n_test:
        raise SimattrError(f"support.n_test={n_test} but only {len(eligible)} of {len(te.labels)} test images are "
                           "classified correctly by the full-data models; lower support.n_test")
    rng = np.random.default_rng(store.seed_from("queries", dataset, sample_seed))
    chosen = np.sort(rng.choice(eligible, size=n_test, replace=False))
    order = np.argsort(-mean_probs[chosen], axis=1, kind="stable")
    flip = np.where(order[:, 1] == te.labels[chosen], order[:, 0], order[:, 1])
    identity = {**data.identity(), "n_test": n_test,
                "sample_seed": sample_seed, "flip_models": flip_models, "recipe": recipe.identity()}
    attrs = {"dataset": dataset, "config_hash": store.config_hash(identity), "n_classes": n_classes, "n_eligible": int(len(eligible)),
             "full_model_accuracy": float(correct.mean()),
             "flip_models": flip_models}
    arrays = {
        "test_indices": chosen.astype(np.int64), "y_query": te.labels[chosen].astype(np.int64),
        "flip_class": flip.astype(np.int64), "full_accuracy": acc[chosen].astype(np.float32),
        "mean_probs": mean_probs[chosen].astype(np.float32),
        "X_query": X_test.load(chosen).astype(np.float16) if streamed else X_test[chosen],
        "full_correct": correct[:, chosen].astype(np.uint8), "y_train": tr.labels.astype(np.int64)}
    if streamed:        # the workers read the training images from the dataset itself
        attrs["data_spec"] = json.dumps(asdict(data), sort_keys=True)
    else:
        arrays["X_train"] = X_train
    store.write_arrays(out_path, arrays, attrs)
    if log:
        log.info("full-data models: test accuracy %.4f; %d eligible test images; sampled %d",
                 attrs["full_model_accuracy"], len(eligible), n_test)
    return attrs
