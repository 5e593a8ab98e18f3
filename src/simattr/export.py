"""The export stage: what an outside attribution method needs to attribute the very models simattr evaluates, on
the same data, in formats its tools read (numpy and torch), so that its scores come back as an external method
(simattr.external) and meet the same counterfactual evaluation.

One folder, {dataset}/export/ (EXPORT_FORMAT; docs/data-contract.md), written whole or not at all:

    manifest.json                        what is here: sizes, shapes, the recipe, the checkpoints' seeds
    class_names.json                     class index -> name
    {train,test}_labels.{npy,pt}         int64, simattr's index order (the order every scores file must use)
    {train,test}_images.{npy,pt}         the images as stored (digits: float32 in [0, 1]; CIFAR-10: uint8),
                                         (N, C, H, W); datasets of image files: {train,test}_files.txt instead
    {train,test}_inputs.{npy,pt}         what the retrained model takes (models.prepare_inputs); not for
                                         streamed recipes (resnet18 normalises while reading the files)
    features/{encoder}_{train,test}.{npy,pt}   the embeddings of each feature encoder the config's methods use
    sampled_test_indices.{npy,pt,txt}    the test images the support stage answers (an external method may score
                                         only these: its `index` file)
    recipe.json                          the retrained model: recipe, input_shape, n_classes
    checkpoints/model-{i}.pt             full-data models (TRAK's checkpoints): state dicts for
                                         simattr.models.torch_module(Recipe.from_settings(recipe), input_shape,
                                         n_classes)
    lds_masks.{npy,pt}, lds_margins.{npy,pt}   the LDS subset models: which training images each saw (bool,
                                         models x n_train) and its margin on every test image (models x n_test)
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from . import backbones, datasets, models, store, subsets
from .errors import SimattrError
from .queries import load_queries

log = logging.getLogger("simattr")
EXPORT_FORMAT = 1


def _save(folder: Path, name: str, a: np.ndarray, files: dict, *, text: bool = False) -> None:
    """`a` as name.npy and name.pt (a tensor), with name.txt too when `text` (one integer per line)."""
    import torch

    a = np.ascontiguousarray(a)
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", a, allow_pickle=False)
    torch.save(torch.from_numpy(a.copy()), folder / f"{name}.pt")
    if text:
        (folder / f"{name}.txt").write_text("".join(f"{int(x)}\n" for x in a))
    files[name] = {"shape": list(a.shape), "dtype": str(a.dtype)}


def export_stage(*, data: datasets.Spec, recipe: models.Recipe, queries: str, checkpoints: str,
                 lds_shards: list[str], embeddings: list[tuple[str, str, str]], out_dir: str) -> dict:
    """Write the export folder (atomically: built beside it, then renamed into place). `embeddings`: (encoder,
    split, index.json) of the features to include."""
    import torch

    t0 = time.perf_counter()
    out = Path(out_dir)
    tr, te = datasets.load_split(data, "train"), datasets.load_split(data, "test")
    streamed = recipe.name in models.STREAMED_MODELS or tr.sources is not None
    q = load_queries(queries)
    if not np.array_equal(q["arrays"]["y_train"], tr.labels):
        raise SimattrError(f"{queries}: made for another split of the data; rerun the queries rule")
    ck = backbones.torch_load(checkpoints, "full-data checkpoints not found (rule trak_checkpoints makes them)",
                              "not a checkpoints file; rerun rule trak_checkpoints")
    identity = json.loads(ck["identity"])
    if identity["recipe"] != recipe.identity() or {k: identity.get(k) for k in data.identity()} != data.identity():
        raise SimattrError(f"{checkpoints}: made for other data or another model; rerun rule trak_checkpoints")
    files: dict[str, dict] = {}
    with store.atomic_dir(out) as tmp:
        for split, s in (("train", tr), ("test", te)):
            _save(tmp, f"{split}_labels", s.labels.astype(np.int64), files)
            if s.sources is not None:
                (tmp / f"{split}_files.txt").write_text("".join(f"{p}\n" for p in s.sources))
                files[f"{split}_files"] = {"lines": len(s.sources), "root": str(data.root)}
            else:
                _save(tmp, f"{split}_images", s.load_raw(np.arange(len(s))), files)
        if streamed:
            input_shape = tuple(int(x) for x in np.shape(tr[0])) if len(tr) else ()
        else:
            X_train, X_test = models.prepare_inputs(recipe, tr.images, te.images)
            _save(tmp, "train_inputs", X_train, files)
            _save(tmp, "test_inputs", X_test, files)
            input_shape = tuple(int(x) for x in X_train.shape[1:])
        for encoder, split, index in embeddings:
            feats, labels, _ = store.read_embeddings(index)
            if not np.array_equal(labels, (tr if split == "train" else te).labels):
                raise SimattrError(f"{index}: made for another split of the data; rerun the embed stage")
            _save(tmp, f"features/{encoder}_{split}", feats.astype(np.float32), files)
        _save(tmp, "sampled_test_indices", q["arrays"]["test_indices"].astype(np.int64), files, text=True)
        n_classes = len(tr.class_names)
        store.write_json(tmp / "class_names.json", list(tr.class_names))
        store.write_json(tmp / "recipe.json", {"recipe": recipe.identity(), "input_shape": list(input_shape),
                                               "n_classes": n_classes})
        (tmp / "checkpoints").mkdir()
        ck_files = []
        for i, (state, seed) in enumerate(zip(ck["states"], ck["seeds"])):
            torch.save(state, tmp / "checkpoints" / f"model-{i}.pt")
            ck_files.append({"file": f"checkpoints/model-{i}.pt", "seed": int(seed)})
        lds = None
        if lds_shards:
            masks, margins, sattrs = subsets.read_shards(list(lds_shards), "lds")
            _save(tmp, "lds_masks", masks, files)
            _save(tmp, "lds_margins", margins.astype(np.float32), files)
            lds = {"models": int(len(masks)), "alpha": float(sattrs["alpha"])}
        manifest = {"export_format": EXPORT_FORMAT, "contract_version": store.CONTRACT_VERSION,
                    "dataset": data.identity(), "n_train": len(tr), "n_test": len(te), "n_classes": n_classes,
                    "recipe": recipe.identity(), "input_shape": list(input_shape),
                    "checkpoints": ck_files, "checkpoints_hash": ck["config_hash"], "lds": lds,
                    "scores_shape": {"test_by_train": [len(te), len(tr)], "train_by_test": [len(tr), len(te)]},
                    "files": files}
        store.write_json(tmp / "manifest.json", manifest)
    log.info("export: %d train / %d test images, %d checkpoints, %s LDS models, %d features -> %s in %.1f s",
             len(tr), len(te), len(ck_files), lds["models"] if lds else "no", len(embeddings), out,
             time.perf_counter() - t0)
    return manifest
