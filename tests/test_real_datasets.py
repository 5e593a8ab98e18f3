"""The workflow end to end on a tiny CIFAR-10 root and a tiny ImageFolder tree, with a ResNet-18 from a tiny
MoCo-layout checkpoint: several embedding shards per split, scores, a few support answers, the report."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torchvision
import yaml
from datafiles import make_cifar_root, make_image_folder
from test_workflow import TEST_CFG, job_counts, smk


def moco_checkpoint(path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    sd = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd.update({f"module.encoder_k.{k}": v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")})
    sd["module.encoder_q.fc.0.weight"] = torch.randn(128, 512)
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd}, path)
    return path


def reduced(tmp_path, dataset: dict, shard_size: int, model: dict | None = None) -> tuple:
    cfg = yaml.safe_load(TEST_CFG.read_text())
    cfg["dataset"] = dataset
    cfg["embed"] = {"shard_size": shard_size}
    cfg["encoders"]["resnet"] = {"arch": "resnet18", "checkpoint": str(moco_checkpoint(tmp_path / "moco.pth.tar")),
                                 "batch_size": 16}
    cfg["methods"] = [{"encoder": "resnet", "ranker": "esvm"}, {"encoder": "pixels", "ranker": "knn_l2"}]
    cfg["support"].update(n_test=2, seeds=2, flip_models=2, removal={"k_max": 16, "bisection_steps": 3},
                          mislabel={"k_max": 8, "bisection_steps": 2})
    cfg["model"] = model or {**cfg["model"], "steps": 30}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p, cfg


@pytest.mark.parametrize("kind", ["cifar10", "imagefolder"])
def test_end_to_end_on_a_real_dataset_layout(tmp_path, kind):
    if kind == "cifar10":
        root = make_cifar_root(tmp_path / "cifar", per_batch=30, n_test=40)      # 150 train, 40 test, 10 classes
        dataset, n_train, n_test, n_cls = {"name": "cifar10", "root": str(root)}, 150, 40, 10
    else:
        root = make_image_folder(tmp_path / "folder", per_class=12, val_per_class=4)
        dataset = {"name": "imagefolder", "root": str(root), "image_size": 24}
        n_train, n_test, n_cls = 36, 12, 3
    # the CIFAR-10 recipe (data resident) and the ImageNet one (streamed from the folder), at toy size
    if kind == "cifar10":
        model = {"name": "resnet9", "epochs": 1, "batch_size": 50, "lr": 0.2, "weight_decay": 5e-4}
    else:
        model = {"name": "resnet18", "epochs": 10, "batch_size": 12, "lr": 0.005, "weight_decay": 5e-5}
    cfg_path, cfg = reduced(tmp_path, dataset, shard_size=32, model=model)
    cfg["support"]["metrics"] = ["removal"]           # CNN retraining is the slow part on CPU: one metric,
    cfg["launch"]["images_per_task"] = 2              # two answers per task
    cfg_path.write_text(yaml.safe_dump(cfg))
    metrics = cfg["support"]["metrics"]
    wd = tmp_path / "run"
    wd.mkdir()
    dry = smk("-n", "--cores", "2", workdir=wd, configfile=cfg_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    shards = -(-n_train // 32) + -(-n_test // 32)
    assert job_counts(dry.stdout) == {"import_resnet": 1, "embed_shard": 2 * shards, "embed_index": 4,
                                      "score": 2 * n_cls, "queries": 1, "support": 2 * len(metrics), "report": 1,
                                      "all": 1}
    r = smk("--cores", "2", workdir=wd, configfile=cfg_path)
    assert r.returncode == 0, r.stderr[-4000:]
    out = wd / "results" / kind
    m = json.loads((out / "embeddings" / "resnet" / "train" / "index.json").read_text())
    assert m["n"] == n_train and len(m["shards"]) == -(-n_train // 32) and m["feature_dim"] == 512
    assert len(m["class_names"]) == n_cls
    with h5py.File(out / "embeddings" / "resnet" / "train" / m["shards"][1]["file"]) as f:
        assert f["indices"][0] == 32 and json.loads(f.attrs["class_names"]) == m["class_names"]
    for method in cfg["methods"]:
        for metric in metrics:
            g = json.loads((out / "support" / method["encoder"] / method["ranker"] / f"{metric}.json").read_text())
            assert len(g["answers"]) == 2
            assert all(a["support"] is None or 0 <= a["support"] <= a["k_max"] for a in g["answers"])
    with h5py.File(out / "support" / "queries.h5") as f:
        if kind == "cifar10":                         # resident: normalised float16 images
            assert f["X_train"].shape == (n_train, 3, 32, 32) and f["X_train"].dtype == np.float16
        else:                                         # streamed: the dataset is named, not copied
            assert "X_train" not in f and json.loads(f.attrs["data_spec"])["root"] == str(root)
            assert f["X_query"].shape == (2, 3, 24, 24)
    md = (out / "report" / "report.md").read_text()
    assert "resnet/esvm" in md and "pixels/knn_l2" in md
    with h5py.File(out / "scores" / "resnet" / "esvm" / "class-0.h5") as f:
        assert np.isfinite(f["scores"][()]).all()
