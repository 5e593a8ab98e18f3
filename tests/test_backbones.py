"""Pretrained ResNet backbones from checkpoints in the common self-supervised layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from simattr import backbones, encoders
from simattr.errors import SimattrError


def reference_net(arch="resnet18", cifar=False, seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    if cifar:
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    for m in net.modules():                       # non-trivial BN statistics, so a mix-up would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def moco_v2(net):
    """What facebookresearch/moco saves: both encoders under module., an MLP head as fc.0 / fc.2."""
    sd = {}
    for k, v in net.state_dict().items():
        if not k.startswith("fc."):
            sd[f"module.encoder_q.{k}"] = v
            sd[f"module.encoder_k.{k}"] = v + 1
    for enc in ("encoder_q", "encoder_k"):
        sd[f"module.{enc}.fc.0.weight"] = torch.randn(512, 512)
        sd[f"module.{enc}.fc.2.weight"] = torch.randn(128, 512)
    sd["module.queue"] = torch.randn(128, 64)
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def moco_v3(net):
    sd = {f"module.base_encoder.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd.update({f"module.momentum_encoder.{k}": v for k, v in net.state_dict().items()})
    sd["module.base_encoder.fc.0.weight"] = torch.randn(4096, 512)
    sd["module.predictor.0.weight"] = torch.randn(4096, 256)
    return {"epoch": 100, "arch": "resnet18", "state_dict": sd}


def simclr(net):
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd["projector.0.weight"] = torch.randn(2048, 512)
    sd["classifier.weight"] = torch.randn(10, 512)
    return {"epoch": 999, "state_dict": sd}


def lightly(net):
    children = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    sd = {}
    for k, v in net.state_dict().items():
        head, rest = k.split(".", 1)
        if head in children:
            sd[f"backbone.{children.index(head)}.{rest}"] = v
    sd["projection_head.layers.0.weight"] = torch.randn(512, 512)
    return sd


def torchvision_plain(net):
    return net.state_dict()


@pytest.mark.parametrize("wrap, layout", [(moco_v2, "moco_v2"), (moco_v3, "moco_v3"), (simclr, "simclr"),
                                          (lightly, "lightly"), (torchvision_plain, "torchvision")])
def test_every_layout_gives_the_backbones_features(tmp_path, wrap, layout):
    cifar = layout == "simclr"                     # SimCLR on CIFAR: 3x3 stem, no max-pool
    net = reference_net(cifar=cifar)
    ckpt = tmp_path / "model.pth"
    torch.save(wrap(net), ckpt)
    sd, found = backbones.load_checkpoint(ckpt, "resnet18", "auto")
    assert found["layout"] == layout and found["cifar_stem"] == cifar
    assert backbones.load_checkpoint(ckpt, "resnet18", layout)[1]["layout"] == layout
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    feats = backbones.Features("resnet18", sd, cifar, "pool", "imagenet", device="cpu")(x)
    net.fc = torch.nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = net((torch.from_numpy(x) - mean) / std).numpy()
    assert feats.shape == (4, 512)
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)


def test_encoder_state_round_trip_and_grayscale(tmp_path):
    ckpt = tmp_path / "moco.pth.tar"
    torch.save(moco_v2(reference_net()), ckpt)
    params = {"arch": "resnet18", "checkpoint": str(ckpt), "layout": "auto", "feature": "pool3",
              "normalize": "imagenet"}
    enc = encoders.ResNet.from_checkpoint(params)
    enc.save(tmp_path / "resnet.pt")
    raw = torch.load(tmp_path / "resnet.pt", weights_only=True)
    assert list(raw) == ["encoder", "params", "input_shape", "seed", "backbone", "cifar_stem", "layout_found"]
    assert raw["layout_found"] == "moco_v2" and raw["cifar_stem"] is False and raw["input_shape"] == [3, 1, 1]
    loaded = encoders.ResNet.from_state(tmp_path / "resnet.pt")
    gray = np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32)
    f1 = loaded.encode(gray, batch_size=2)
    f2 = enc.encode(np.repeat(gray, 3, axis=1))
    assert f1.shape == (3, 256) and loaded.dim == 256 and np.allclose(f1, f2, atol=1e-5)
    with pytest.raises(SimattrError, match="pretrained"):
        encoders.ResNet.fit(gray, np.zeros(3, int), params, seed=0)


def test_foreign_keys_are_named(tmp_path):
    net = reference_net()
    sd = {f"encoder.blocks.{i}.weight": torch.randn(3) for i in range(4)}
    torch.save({"state_dict": sd}, tmp_path / "vit.pth")
    with pytest.raises(SimattrError, match=r"vit\.pth: keys do not fit resnet18 under any layout \(.*\); closest is "
                                           r".*: missing \d+ \(e\.g\. bn1\.bias.*unexpected 4 \(e\.g\. "
                                           r".*blocks\.0\.weight.*keys start with encoder\."):
        backbones.load_checkpoint(tmp_path / "vit.pth", "resnet18", "auto")
    partial = {k: v for k, v in moco_v3(net)["state_dict"].items() if "layer4" not in k}
    torch.save({"state_dict": partial}, tmp_path / "partial.pth")
    with pytest.raises(SimattrError, match=r"closest is moco_v3 \(prefix 'module\.base_encoder\.'\): missing \d+ "
                                           r"\(e\.g\. layer4\."):
        backbones.load_checkpoint(tmp_path / "partial.pth", "resnet18", "auto")
    torch.save(moco_v3(net), tmp_path / "r18.pth")
    with pytest.raises(SimattrError, match="closest is moco_v3"):
        backbones.load_checkpoint(tmp_path / "r18.pth", "resnet50", "auto")
    with pytest.raises(SimattrError, match=r"no resnet18 backbone under layout simclr; its keys start with module\."):
        backbones.load_checkpoint(tmp_path / "r18.pth", "resnet18", layout="simclr")


class Custom:                                      # arbitrary pickled objects are refused by weights_only
    pass


def test_unloadable_checkpoints(tmp_path):
    with pytest.raises(SimattrError, match="checkpoint not found"):
        backbones.load_checkpoint(tmp_path / "none.pth", "resnet18", "auto")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(SimattrError, match=r"junk\.pth: not loadable with torch\.load\(weights_only=True\)"):
        backbones.load_checkpoint(tmp_path / "junk.pth", "resnet18", "auto")
    torch.save({"state_dict": reference_net().state_dict(), "args": Custom()}, tmp_path / "pickled.pth")
    with pytest.raises(SimattrError, match=r"pickled\.pth: not loadable with torch\.load\(weights_only=True\)"):
        backbones.load_checkpoint(tmp_path / "pickled.pth", "resnet18", "auto")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(SimattrError, match="no tensor mapping"):
        backbones.load_checkpoint(tmp_path / "empty.pth", "resnet18", "auto")
    with pytest.raises(SimattrError, match="unknown ResNet arch 'vit_b_16'"):
        backbones.load_checkpoint(tmp_path / "empty.pth", "vit_b_16", "auto")
