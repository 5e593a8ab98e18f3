"""accel: a job given a GPU that finds no usable CUDA stops in one line. CUDA is faked absent (monkeypatched),
so these hold on the CPU and on a GPU machine alike."""
import subprocess
import sys

import pytest
import torch

from simattr import accel
from simattr.errors import SimattrError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("SIMATTR_ALLOW_CPU", raising=False)
    monkeypatch.setenv("SIMATTR_DEVICE", "auto")          # the suite runs with cpu (conftest)
    monkeypatch.setattr(accel, "_job", {"name": "simattr", "gpus": 0})


@pytest.mark.parametrize("env", [None, "", "-1", "NoDevFiles"])
def test_without_a_gpu_given_network_work_runs_on_the_cpu(no_cuda, monkeypatch, env):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert accel.default_device() == torch.device("cpu")


def test_a_gpu_named_by_the_environment_without_cuda_is_one_line(no_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(SimattrError) as e:
        accel.default_device()
    msg = str(e.value)
    assert "\n" not in msg and "CUDA_VISIBLE_DEVICES='2'" in msg and f"torch {torch.__version__}" in msg
    assert ("CPU-only build" in msg) == (torch.version.cuda is None) and "SIMATTR_ALLOW_CPU=1" in msg
    monkeypatch.setenv("SIMATTR_ALLOW_CPU", "1")
    assert accel.default_device() == torch.device("cpu")


def test_the_cli_given_gpus_stops_before_reading_anything(tmp_path):
    """`simattr --gpus 1 queries ...` on a machine whose torch finds no CUDA (faked absent in the child)."""
    (tmp_path / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available = lambda: False\n")
    (tmp_path / "c.yaml").write_text("dataset: {name: cifar10, root: /nonexistent}\n")
    code = "import sys; from simattr.cli import main; sys.exit(main(['--gpus', '1', 'queries', '--config', " \
           "'c.yaml', '--out', 'q.h5']))"
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "SIMATTR_DEVICE": "auto"}
    env.pop("SIMATTR_ALLOW_CPU", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simattr: error: job 'simattr queries' was given a GPU "
                                                   "(workflow gpus=1, CUDA_VISIBLE_DEVICES=''"), r.stderr
    assert "nonexistent" not in r.stderr                     # stopped before the dataset was looked at


def test_configure_is_a_no_op_on_the_cpu():
    before = torch.are_deterministic_algorithms_enabled()
    accel.configure(True, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() == before


def test_simattr_device_chooses_outright(no_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SIMATTR_DEVICE", "cpu")               # asked for: no error though a GPU was given
    assert accel.default_device() == torch.device("cpu")
    monkeypatch.setenv("SIMATTR_DEVICE", "cuda")
    with pytest.raises(SimattrError, match=r"^SIMATTR_DEVICE=cuda but torch .* finds no usable CUDA device"):
        accel.default_device()
    monkeypatch.setenv("SIMATTR_DEVICE", "tpu")
    with pytest.raises(SimattrError, match="SIMATTR_DEVICE='tpu': expected auto, cpu or cuda"):
        accel.default_device()
