import os
from pathlib import Path

import pytest

from simattr.launch import LaunchSettings, run_tasks


def square_or_fail(x: int, out: str) -> int:
    if x == 3:
        raise ValueError(f"unit {x} is broken")
    Path(out).write_text(str(x * x))
    return x * x


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_tasks_run_and_a_failure_is_reported_with_its_log(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))   # local workers unpickle this module
    units = [{"x": i, "out": str(tmp_path / f"{i}.txt")} for i in range(5)]
    s = LaunchSettings.of(cluster=cluster, folder=str(tmp_path / "submitit"), parallelism=2, timeout_min=5)
    results, failures = run_tasks(square_or_fail, units, [f"unit {i}" for i in range(5)], s, name="t",
                                  progress=False)
    assert results == [0, 1, 4, None, 16]
    assert len(failures) == 1 and failures[0].label == "unit 3"
    assert "unit 3 is broken" in failures[0].error
    if cluster == "local":
        assert Path(failures[0].log).exists() and "unit 3 is broken" in Path(failures[0].log).read_text()
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["0.txt", "1.txt", "2.txt", "4.txt"]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_a_task_runs_torch_on_its_cpus_per_task(cluster, tmp_path, monkeypatch):
    """Snakemake sets OMP_NUM_THREADS to the support job's threads (parallelism x cpus_per_task); a task that
    imports torch must still use only its own cores."""
    import torch

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    s = LaunchSettings.of(cluster=cluster, folder=str(tmp_path / "submitit"), parallelism=1, timeout_min=5,
                       cpus_per_task=1)
    results, failures = run_tasks(torch_threads, [{}], ["unit"], s, name="t", progress=False)
    assert not failures and results == [1]
    assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "2"


def visible_gpus(wait: float = 0.0) -> str | None:
    import time

    time.sleep(wait)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_local_task_with_gpus_per_node_sees_its_gpu(tmp_path, monkeypatch):
    """submitit's local executor gives a task CUDA_VISIBLE_DEVICES="" unless told its GPUs: a workstation's GPUs
    would then go unused. Holds on the CPU and on a GPU machine (no CUDA call is made)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = LaunchSettings.of(cluster="local", folder=str(tmp_path / "submitit"), parallelism=1, timeout_min=5,
                       gpus_per_node=1)
    results, failures = run_tasks(visible_gpus, [{}], ["unit"], s, name="t", progress=False)
    assert not failures and results[0] not in (None, ""), results
    s0 = LaunchSettings.of(cluster="local", folder=str(tmp_path / "submitit0"), parallelism=1, timeout_min=5)
    assert run_tasks(visible_gpus, [{}], ["unit"], s0, name="t", progress=False)[0] == [""]


def test_local_tasks_are_spread_over_the_gpus_and_share_them_beyond_one_each(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    s = LaunchSettings.of(cluster="local", folder=str(tmp_path / "submitit"), parallelism=4, timeout_min=5,
                       gpus_per_node=1)
    results, failures = run_tasks(visible_gpus, [{"wait": 2.0}] * 4, [f"u{i}" for i in range(4)], s, name="t",
                                  progress=False)
    assert not failures
    assert sorted(results) == ["3", "3", "5", "5"]      # physical ids kept; two tasks per GPU


def test_gpu_slots_refuse_more_gpus_per_task_than_the_machine_shows(monkeypatch):
    from simattr.launch import GpuSlots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ValueError, match="gpus_per_node is 2 but this machine shows 1 GPU"):
        GpuSlots(2)


def network_device() -> str:
    from simattr.accel import default_device

    return str(default_device())


def test_a_local_network_task_given_a_gpu_without_cuda_fails_in_one_line(tmp_path, monkeypatch):
    """CUDA faked absent in the task (a sitecustomize on its path), so this holds on a GPU machine too."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "sitecustomize.py").write_text(
        "import torch\ntorch.cuda.is_available = lambda: False\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}{os.pathsep}{Path(__file__).parent}")
    monkeypatch.delenv("SIMATTR_ALLOW_CPU", raising=False)
    monkeypatch.setenv("SIMATTR_DEVICE", "auto")          # the suite runs with cpu (conftest)
    s = LaunchSettings.of(cluster="local", folder=str(tmp_path / "submitit"), parallelism=1, timeout_min=5,
                       gpus_per_node=1)
    results, failures = run_tasks(network_device, [{}], ["image 7"], s, name="support-x", progress=False)
    assert results == [None] and len(failures) == 1
    err = failures[0].error
    assert "SimattrError: job 'support-x task' was given a GPU" in err and "\n" not in err, err
    assert "CUDA_VISIBLE_DEVICES='0'" in err and "torch " in err and "install" in err
    monkeypatch.setenv("SIMATTR_ALLOW_CPU", "1")
    s1 = LaunchSettings.of(cluster="local", folder=str(tmp_path / "submitit1"), parallelism=1, timeout_min=5,
                        gpus_per_node=1)
    assert run_tasks(network_device, [{}], ["image 7"], s1, name="support-x", progress=False)[0] == ["cpu"]
