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
    s = LaunchSettings(cluster=cluster, folder=str(tmp_path / "submitit"), parallelism=2, timeout_min=5)
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
    s = LaunchSettings(cluster=cluster, folder=str(tmp_path / "submitit"), parallelism=1, timeout_min=5,
                       cpus_per_task=1)
    results, failures = run_tasks(torch_threads, [{}], ["unit"], s, name="t", progress=False)
    assert not failures and results == [1]
    assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "2"
