"""Shared test settings. The tiers: `make test` runs everything (.ci/run, with a one-node SLURM cluster);
`make test-fast` (.github/workflows/ci.yml) leaves out the tests marked `slow` (whole workflow runs) and `slurm`
(a real cluster): the unit tests and the static workflow checks.
A test says it is slow itself (`@pytest.mark.slow`, or `pytestmark` for a module); a fixture that runs a whole
workflow requests `whole_workflow`, and collection fails where a test uses such a fixture without the mark
(tests/test_conftest.py checks that it does).
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


@pytest.fixture(scope="session")
def whole_workflow():
    """Requested by every fixture that runs a whole workflow (test_workflow's and test_plan's `run`, test_outside_
    methods' `outside`): a test that uses one must be marked `slow`, or collection fails (pytest_collection_
    modifyitems), so that `make test-fast` never runs a workflow because a mark was forgotten."""


def pytest_collection_modifyitems(config, items):
    """Collection fails, naming them, where tests use a whole-workflow fixture without the `slow` mark; `cuda`
    tests skip where torch sees no CUDA device."""
    unmarked = [item.nodeid for item in items
                if "whole_workflow" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests run a whole workflow (a fixture of theirs requests `whole_workflow`) "
                                "but are not marked slow; add @pytest.mark.slow (or pytestmark = pytest.mark.slow "
                                "for the module): " + ", ".join(unmarked))
    cuda = _cuda()
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check runs these on one)")
    for item in items:
        if "cuda" in item.keywords and not cuda:
            item.add_marker(skip)
