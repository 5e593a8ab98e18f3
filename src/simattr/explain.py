"""Attribution for images from outside the dataset: which training images a similarity method ranks first for an
image you have in hand, from what a finished workflow left in `results/`.

    from simattr import Attributor
    att = Attributor.from_results("results", method="simclr/esvm")       # config: the schema's defaults, or a file
    records = att.explain(["my_digit.png"], k=16)       # one record per image: its class, the top-k training images
    att.figure(records[0])                              # the image beside its top-k (a matplotlib Figure)
    att.support(52)                                     # a test image's stored answer, with its curve

The image is read as the dataset stores its own (datasets.read_image), embedded by the method's encoder (its state
from results/, or pixels fitted on the train split as the embed stage fits it), and its class's training images
(all of them with score.class_conditioned false) ranked by the method's ranker with the config's settings, against
the training embeddings in results/. Its class is the one given, or the full-data models' prediction: the TRAK
checkpoints in results/ when they are there, else (the numpy MLP) the queries stage's full-data models trained
again from their seeds. An image equal to a test image of the dataset gets that image's stored support answers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import backbones, datasets, embedding, models, store
from . import config as sconfig
from .errors import SimattrError
from .images import to_unit

#: the rankers that rank one image's class from its features alone (config.Ranker.explain: the model-based ones need
#: retraining, the random one ranks nothing, esvm_signed scores other classes too)
RANKERS = sconfig.EXPLAIN_RANKERS
DEFAULT_METHOD = "simclr/esvm"
DEFAULT_K = 16


def _need(path: Path) -> Path:
    """`path`, or one line naming the snakemake target that makes it."""
    if not path.exists():
        raise SimattrError(f"{path}: not in the results yet; run `snakemake {path}` (or the whole workflow) first")
    return path


class Attributor:
    """One method's attribution for new images, from a finished workflow's results (see the module docstring)."""

    def __init__(self, config: dict, method: str = DEFAULT_METHOD, *, device=None):
        self.config = sconfig.validate(config)
        encoder, _, ranker = method.partition("/")
        if encoder not in sconfig.FEATURE_ENCODERS or ranker not in RANKERS:
            raise SimattrError(f"method '{method}': explain ranks with a feature encoder and a similarity ranker "
                               f"(ENCODER/RANKER: {', '.join(sconfig.FEATURE_ENCODERS)} / {', '.join(RANKERS)})")
        self.method, self.encoder, self.ranker = method, encoder, ranker
        self.data = datasets.Spec.from_config(self.config["dataset"])
        self.root = Path(self.config["results"])
        self.ranker_settings = sconfig.ranker_settings(self.config, ranker)
        self.class_conditioned = bool(self.config["score"]["class_conditioned"])
        state = None
        if encoder in sconfig.STATE_ENCODERS:
            state = str(_need(self._path(store.ENCODER_STATE, encoder=encoder)))
        index = _need(self._path(store.EMBED_INDEX, encoder=encoder, split="train"))
        self.net, made_with = embedding.load_encoder(self.data, encoder, state)
        self.net = self.net.to(device)
        self.features, self.labels, _ = store.read_embeddings(index, expect_hash=store.config_hash(made_with))
        self.train = datasets.load_split(self.data, "train")
        self.class_names = self.train.class_names
        self._models = None
        self._test_raw = None            # the test split's stored images, read once (_test_index)

    @classmethod
    def from_results(cls, path: str | os.PathLike = "results", method: str = DEFAULT_METHOD,
                     config: str | os.PathLike | dict | None = None, **kw) -> "Attributor":
        """The Attributor of `method` over the results under `path`, made with `config` (a YAML file, a dict, or
        None: the schema's defaults, i.e. config/config.yaml's digits run)."""
        if config is None:
            c: dict = {}
        elif isinstance(config, dict):
            c = dict(config)
        else:
            c = sconfig.load(config)
        return cls({**c, "results": str(path)}, method, **kw)

    def _path(self, template: str, **fields) -> Path:
        return self.root / store.fill(template, dataset=self.data.name, **fields)

    # ----------------------------------------------------------------------------------------- classes
    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C) of raw images (as datasets.read_image gives them) by the full-data models."""
        recipe = models.Recipe.from_config(self.config["model"])
        if recipe.name in models.STREAMED_MODELS:
            raise SimattrError(f"model {recipe.name}: explain predicts with in-memory recipes only; pass the class "
                               "(--label)")
        x_train, x = models.prepare_inputs(recipe, self.train.images, to_unit(raw))
        n_classes = len(self.class_names)
        if self._models is None:
            self._models = self._full_models(recipe, x_train, n_classes)
        import torch

        probs = []
        for state in self._models:
            net = models.torch_module(recipe, tuple(x_train.shape[1:]), n_classes)
            net.load_state_dict(state)
            with torch.no_grad():
                probs.append(torch.softmax(net.eval()(torch.as_tensor(np.asarray(x, np.float32))), -1).numpy())
        return np.mean(probs, axis=0)

    def _full_models(self, recipe, x_train: np.ndarray, n_classes: int) -> list[dict]:
        """State dicts of full-data models: TRAK's checkpoints when results/ has them (for this data and recipe),
        else the queries stage's MLPs trained again from their seeds; a CNN without checkpoints is one line."""
        ck = self._path(store.TRAK_CHECKPOINTS)
        if ck.exists():
            saved = backbones.torch_load(ck, "not found", "not a checkpoints file")
            identity = json.loads(saved["identity"])
            if identity.get("recipe") == recipe.identity() and \
                    {k: identity.get(k) for k in self.data.identity()} == self.data.identity():
                return list(saved["states"])
        if recipe.name in models.CNN_MODELS:
            raise SimattrError(f"{ck}: no full-data models to predict the class with; run `snakemake {ck}` or pass "
                               "the class (--label)")
        seeds = [store.seed_from("full", self.data.name, i) for i in range(self.config["support"]["flip_models"])]
        return [models.train_state(x_train, self.train.labels, s, n_classes, recipe) for s in seeds]

    # ----------------------------------------------------------------------------------------- explain
    def explain(self, images: Sequence, *, k: int = DEFAULT_K, label: int | str | None = None,
                as_frame: bool = False):
        """One record per image (a path, or an array as datasets.read_image gives it): `name`, `label` and
        `class_name` (given, or the full-data models' prediction, with its `probability`), `label_source`, `top`
        (the k best training images: `rank`, `train_index`, `class`, `class_name`, `score`), `test_index` and
        `answers` (when the image is a test image of the dataset: its stored support answers per metric). With
        `as_frame`, a pandas DataFrame of the top-k rows (one per image and rank)."""
        from . import rankers

        if k < 1:
            raise SimattrError(f"k must be >= 1, got {k}")
        raws, names = [], []
        for i, im in enumerate(images):
            if isinstance(im, (str, os.PathLike)):
                raws.append(datasets.read_image(self.data, im))
                names.append(Path(im).stem)
            else:
                raws.append(np.asarray(im))
                names.append(f"image-{i}")
        raw = np.stack(raws) if raws else np.zeros((0,), np.float32)
        feats = self.net.encode(to_unit(raw), batch_size=256) if len(raws) else raw
        given = None if label is None else self._class(label)
        probs = self.predict(raw) if len(raws) else None
        records = []
        for i, name in enumerate(names):
            cls = given if given is not None else int(probs[i].argmax())
            cand = np.flatnonzero(self.labels == cls) if self.class_conditioned else np.arange(len(self.labels))
            if len(cand) == 0:
                raise SimattrError(f"class {cls} has no training images to rank")
            scores = rankers.score(self.ranker, feats[i:i + 1], self.features[cand], progress=False,
                                   **self.ranker_settings)[0]
            order = rankers.topk(scores[None], k)[0]
            test_index = self._test_index(raw[i])
            records.append({
                "name": name, "image": str(images[i]) if isinstance(images[i], (str, os.PathLike)) else None,
                "method": self.method, "label": cls, "class_name": self.class_names[cls],
                "label_source": "given" if given is not None else "predicted",
                "probability": None if probs is None else round(float(probs[i][cls]), 6),
                "top": [{"rank": r + 1, "train_index": int(cand[j]), "class": int(self.labels[cand[j]]),
                         "class_name": self.class_names[int(self.labels[cand[j]])], "score": float(scores[j])}
                        for r, j in enumerate(order)],
                "test_index": test_index,
                "answers": None if test_index is None else self._answers(test_index)})
        if as_frame:
            return frame(records)
        return records

    def _class(self, label: int | str) -> int:
        if isinstance(label, str) and label in self.class_names:
            return self.class_names.index(label)
        try:
            c = int(label)
        except (TypeError, ValueError):
            c = -1
        if not 0 <= c < len(self.class_names):
            raise SimattrError(f"label {label!r}: expected a class index 0..{len(self.class_names) - 1} or a class "
                               f"name ({', '.join(self.class_names[:10])}{', ...' if len(self.class_names) > 10 else ''})")
        return c

    def _test_index(self, raw: np.ndarray) -> int | None:
        """The test image whose stored pixels equal `raw` exactly, if one does (in-memory datasets)."""
        if self._test_raw is None:
            te = datasets.load_split(self.data, "test")
            self._test_raw = np.zeros((0,)) if te.sources is not None else te.load_raw(np.arange(len(te)))
        stored = self._test_raw
        if stored.ndim < 2:                  # a folder dataset: its test images are files, not compared
            return None
        if stored.shape[1:] != raw.shape:
            return None
        hit = np.flatnonzero((stored == raw[None]).reshape(len(stored), -1).all(1))
        return int(hit[0]) if len(hit) else None

    def _answers(self, test_index: int) -> dict | None:
        out = {}
        for metric in self.config["support"]["metrics"]:
            p = store.answer_path(self._path(store.SUPPORT_DIR, encoder=self.encoder, ranker=self.ranker,
                                             metric=metric), test_index)
            if p.exists():
                a = store.read_json(p)
                out[metric] = {k: a.get(k) for k in ("support", "support_ci90", "support_ci95", "p_censored",
                                                     "k_max", "flip_class")}
        return out or None

    def support(self, test_index: int, metric: str = "removal") -> dict:
        """A sampled test image's stored answer for this method (support, intervals, the curve: probed k against
        accuracy and the fitted curve); one line naming the target when it is not there."""
        if metric not in sconfig.METRICS:
            raise SimattrError(f"unknown metric '{metric}'; valid: {', '.join(sconfig.METRICS)}")
        d = self._path(store.SUPPORT_DIR, encoder=self.encoder, ranker=self.ranker, metric=metric)
        p = store.answer_path(d, int(test_index))
        if not p.exists():
            gather = self._path(store.SUPPORT_GATHER, encoder=self.encoder, ranker=self.ranker, metric=metric)
            raise SimattrError(f"{p}: no stored answer (test image {test_index} is not a sampled one, or run "
                               f"`snakemake {gather}`)")
        return store.read_json(p)

    def figure(self, record: dict, path: str | os.PathLike | None = None):
        """The record's image beside its top-k training images, each labelled with its index, class and score (a
        matplotlib Figure; also saved as PNG at `path`)."""
        from .report.figures import plot_explanation

        raw = datasets.read_image(self.data, record["image"]) if record.get("image") else None
        return plot_explanation(raw, self.train, record, path)

    def write(self, record: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """DIR/NAME.png (figure) and DIR/NAME.json (the record), each written atomically."""
        out = Path(out_dir)
        png, js = out / f"{record['name']}.png", out / f"{record['name']}.json"
        self.figure(record, png)
        store.write_json(js, record)
        return png, js


def frame(records: list[dict]):
    """The records' top-k as a pandas DataFrame: one row per image and rank (pandas must be installed)."""
    try:
        import pandas as pd
    except ImportError:
        raise SimattrError("a DataFrame needs pandas (pip install pandas); explain(...) returns records without "
                           "it") from None
    rows = [{"name": r["name"], "method": r["method"], "label": r["label"], "class_name": r["class_name"],
             "probability": r["probability"], "test_index": r["test_index"], **t} for r in records for t in r["top"]]
    return pd.DataFrame(rows)


def explain_command(*, config: dict, method: str, images: list[str], k: int, label: Any, out_dir: str,
                    log=None) -> list[dict]:
    """`simattr explain`: each image's record and figure in out_dir, a line each on stdout."""
    att = Attributor(config, method)
    records = att.explain(images, k=k, label=label)
    for r in records:
        png, js = att.write(r, out_dir)
        how = "given" if r["label_source"] == "given" else "predicted"
        prob = "" if r["probability"] is None else f", p = {r['probability']:.3f}"
        top = ", ".join(f"#{t['train_index']}" for t in r["top"][:5])
        print(f"{r['image']}: class {r['class_name']} ({how}{prob}); top training images by {method}: {top}"
              f"{' ...' if len(r['top']) > 5 else ''} -> {png}, {js}")
        if r["test_index"] is not None:
            ans = r["answers"] or {}
            got = "; ".join(f"{m} support {a['support'] if a['support'] is not None else '> ' + str(a['k_max'])}"
                            f" (90% {a['support_ci90']})" for m, a in ans.items())
            print(f"  it is test image {r['test_index']} of the dataset" +
                  (f": stored answers: {got}" if got else " (not among the sampled images answered)"))
    return records
