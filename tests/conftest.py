"""The suite's device: the CPU, wherever it runs (SIMATTR_DEVICE=cpu unless set), so that its exact-bit checks
(the same seed gives the same bits, resumed answers equal fresh ones) hold on a GPU machine too; subprocesses
(Snakemake, submitit tasks) inherit it. Tests marked `cuda` hold for a CUDA device: they choose it themselves
and are skipped where torch sees none (scripts/gpu-check runs them on the GPU)."""
import os

import pytest

os.environ.setdefault("SIMATTR_DEVICE", "cpu")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
