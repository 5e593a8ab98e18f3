"""Shared test settings. The tiers: `make test` runs everything (CI); `make test-fast` leaves out the tests
marked `slow` (whole workflow runs) and `slurm` (a real cluster): the unit tests and the static workflow checks.
Shared fixtures live here; the small data files they and the tests make, in tests/datafiles.py.

The suite's device: the CPU, wherever it runs (SIMATTR_DEVICE=cpu unless set), so that its exact-bit checks
(the same seed gives the same bits, resumed answers equal fresh ones) hold on a GPU machine too; subprocesses
(Snakemake, submitit tasks) inherit it. Tests marked `cuda` hold for a CUDA device: they choose it themselves
and are skipped where torch sees none (scripts/gpu-check runs them on the GPU)."""
import os

import pytest

os.environ.setdefault("SIMATTR_DEVICE", "cpu")


@pytest.fixture
def support_inputs(tmp_path):
    """(queries.h5, score files by class) of the toy support problem (datafiles.support_inputs) in tmp_path."""
    from datafiles import support_inputs as make

    return make(tmp_path)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests that run a whole workflow (the `run` fixture) are `slow` (make test-fast leaves them out); `cuda`
    tests skip where torch sees no CUDA device."""
    cuda = _cuda()
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check runs these on one)")
    for item in items:
        if "run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if "cuda" in item.keywords and not cuda:
            item.add_marker(skip)
