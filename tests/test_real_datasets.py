"""The workflow end to end from the shipped configs config/cifar10.yaml and config/imagenet.yaml, shrunk to toy
size on the CPU: a tiny CIFAR-10 root and a tiny ImageNet-layout folder, a tiny checkpoint in the layout each
config names (a solo-learn CIFAR-stem ResNet-18; MoCo v3's ResNet-50), embedding shards (several for the train
split), scores, a few support answers with the config's retrained model (ResNet-9 resident; ResNet-18 streamed
from the folder), the LDS table where the config asks for one, the report.

Only what cannot run here is changed: data and checkpoint paths, image size, GPUs and workers, the support and
LDS sizes, the model's epochs, batch size and learning rate, and CIFAR-10's methods cut to the first two (each
method costs a score job per class)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
import yaml
from datafiles import CIFAR_CLASSES, make_cifar_root, make_image_folder
from test_workflow import job_counts, smk

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def solo_learn_checkpoint(path: Path) -> Path:
    """A ResNet-18 with the CIFAR stem (3x3 conv1, no max-pool) as solo-learn saves it: backbone.*, projector.*."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd["projector.0.weight"] = torch.randn(128, 512)
    torch.save({"epoch": 1, "state_dict": sd}, path)
    return path


def moco_v3_checkpoint(path: Path) -> Path:
    """A ResNet-50 as MoCo v3 saves it: module.base_encoder.* with its fc head, a predictor (both ignored)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    sd = {f"module.base_encoder.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd["module.base_encoder.fc.0.weight"] = torch.randn(64, 2048)
    sd["module.predictor.0.weight"] = torch.randn(64, 256)
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd}, path)
    return path


def shrunk(shipped: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """The shipped config with only what must change to run here, and what the run should find."""
    cfg = yaml.safe_load((REPO / "config" / shipped).read_text())
    if cfg["dataset"]["name"] == "cifar10":
        root = make_cifar_root(tmp_path / "cifar", per_batch=20, n_test=30)        # 100 train, 30 test, 10 classes
        cfg["dataset"]["root"] = str(root)
        ckpt = solo_learn_checkpoint(tmp_path / "solo-learn-resnet18.ckpt")
        expect = {"n_train": 100, "n_test": 30, "class_names": CIFAR_CLASSES, "dim": 512, "shard": 40}
        cfg["model"].update(epochs=1, batch_size=50, lr=0.2)      # at lr 0.5 a few steps got no test image right
        cfg["methods"] = cfg["methods"][:2]                       # a score job per class and method: 10 classes
        cfg["lds"].update(models=4, shard_size=4)                 # on in the shipped config: 4 models, one job
    else:
        root = make_image_folder(tmp_path / "imagenet", per_class=12, val_per_class=4)     # 36 train, 12 val
        cfg["dataset"].update(root=str(root), image_size=24)
        ckpt = moco_v3_checkpoint(tmp_path / "moco_v3.pth.tar")
        expect = {"n_train": 36, "n_test": 12, "class_names": ["cat", "dog", "eel"], "dim": 2048, "shard": 32}
        cfg["model"].update(epochs=4, batch_size=12, lr=0.005)     # lr 1.0 is for batches of 512, not of 12
    cfg["encoders"]["resnet"]["checkpoint"] = str(ckpt)
    cfg["embed"].update(shard_size=expect["shard"], gpu=False, workers=min(cfg["embed"]["workers"], 1))
    small = {"k_max": 8, "bisection_steps": 2}
    cfg["support"].update(metrics=["removal"], n_test=2, seeds=2, seeds_min=2, seeds_max=3, max_models=8,
                          flip_models=2, removal=small, mislabel=dict(small))
    cfg["launch"].update(cluster="local", parallelism=2, cpus_per_task=1, gpus_per_node=0, images_per_task=2)
    p = tmp_path / shipped
    p.write_text(yaml.safe_dump(cfg))
    return p, cfg, expect


@pytest.mark.parametrize("shipped", ["cifar10.yaml", "imagenet.yaml"])
def test_end_to_end_from_a_shipped_config(tmp_path, shipped):
    cfg_path, cfg, expect = shrunk(shipped, tmp_path)
    kind, metrics = cfg["dataset"]["name"], cfg["support"]["metrics"]
    n_train, n_test, n_cls = expect["n_train"], expect["n_test"], len(expect["class_names"])
    shard = cfg["embed"]["shard_size"]
    encoders = {m["encoder"] for m in cfg["methods"]}
    assert encoders == {"resnet"}
    wd = tmp_path / "run"
    wd.mkdir()
    dry = smk("-n", "--cores", "2", workdir=wd, configfile=cfg_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    shards = -(-n_train // shard) + -(-n_test // shard)
    lds = cfg["lds"]["models"]
    assert job_counts(dry.stdout) == {"import_resnet": 1, "embed_shard": shards, "embed_index": 2,
                                      "score": len(cfg["methods"]) * n_cls, "queries": 1,
                                      "support": len(cfg["methods"]) * len(metrics), "report_manifest": 1, "report": 1, "all": 1,
                                      "method_figures": len(cfg["methods"]),
                                      **({"subsets": -(-lds // cfg["lds"]["shard_size"]),
                                          "lds": len(cfg["methods"])} if lds else {})}
    r = smk("--cores", "2", workdir=wd, configfile=cfg_path)
    assert r.returncode == 0, r.stderr[-4000:]
    out = wd / "results" / kind
    m = json.loads((out / "embeddings" / "resnet" / "train" / "index.json").read_text())
    assert m["n"] == n_train and len(m["shards"]) == -(-n_train // shard) and m["feature_dim"] == expect["dim"]
    assert m["class_names"] == expect["class_names"]
    with h5py.File(out / "embeddings" / "resnet" / "train" / m["shards"][1]["file"]) as f:
        assert f["indices"][0] == shard and json.loads(f.attrs["class_names"]) == m["class_names"]
        assert f["features"].dtype == (np.float16 if cfg["embed"]["float16"] else np.float32)
    for method in cfg["methods"]:
        for metric in metrics:
            g = json.loads((out / "support" / method["encoder"] / method["ranker"] / f"{metric}.json").read_text())
            assert len(g["answers"]) == 2
            assert all(a["support"] is None or 0 <= a["support"] <= a["k_max"] for a in g["answers"])
    with h5py.File(out / "support" / "queries.h5") as f:
        if cfg["model"]["name"] == "resnet9":          # resident: normalised float16 images
            assert f["X_train"].shape == (n_train, 3, 32, 32) and f["X_train"].dtype == np.float16
        else:                                          # streamed: the dataset is named, not copied
            assert "X_train" not in f and json.loads(f.attrs["data_spec"])["root"] == cfg["dataset"]["root"]
            assert f["X_query"].shape == (2, 3, 24, 24)
    md = (out / "report" / "report.md").read_text()
    names = sorted(f"{x['encoder']}/{x['ranker']}" for x in cfg["methods"])
    assert all(name in md for name in names)
    if lds:
        rows = {row["method"]: row for row in csv.DictReader((out / "report" / "lds.csv").open())}
        assert sorted(rows) == names and all(int(row["n_models"]) == lds for row in rows.values())
        for name, row in rows.items():       # the table's mean is the mean of the method's per-test LDS values
            encoder, ranker = name.split("/")
            per = json.loads((out / "lds" / encoder / f"{ranker}.json").read_text())["per_test"]
            vals = [r["spearman"] for r in per if r["spearman"] is not None]
            assert int(row["n_test"]) == len(per) and int(row["n_undefined"]) == len(per) - len(vals)
            if vals:                          # lds.csv writes 3 decimals
                assert float(row["mean"]) == pytest.approx(np.mean(vals), abs=6e-4)
            else:
                assert row["mean"] == ""
    with h5py.File(out / "scores" / "resnet" / "esvm" / "class-0.h5") as f:
        assert np.isfinite(f["scores"][()]).all()
