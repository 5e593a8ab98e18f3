"""tests/conftest.py's collection guard: a test that runs a whole workflow (a fixture of its requests
`whole_workflow`) without the `slow` mark fails collection, naming it, so `make test-fast` never runs one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

WORKFLOW_TESTS = '''
import pytest


@pytest.fixture
def run(whole_workflow):
    return "a whole workflow"


@pytest.mark.slow
def test_marked(run):
    pass


def test_runs_no_workflow():
    pass
'''
MODULE_MARKED = '''
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def outside(whole_workflow):
    return "a whole workflow"


def test_marked_by_its_module(outside):
    pass
'''
UNMARKED = '''

def test_forgot_the_mark(run):
    pass
'''


def collect(folder: Path) -> subprocess.CompletedProcess:
    """`pytest --collect-only` in `folder`, with a copy of tests/conftest.py and the `slow` mark registered."""
    (folder / "conftest.py").write_text(CONFTEST.read_text())
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: whole workflow\n    cuda: CUDA\n")
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=folder, capture_output=True, text=True)


def test_a_whole_workflow_test_without_the_slow_mark_fails_collection_naming_it(tmp_path):
    (tmp_path / "test_module.py").write_text(MODULE_MARKED)
    (tmp_path / "test_wf.py").write_text(WORKFLOW_TESTS + UNMARKED)
    r = collect(tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 4, out                                  # pytest.ExitCode.USAGE_ERROR
    error = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(error) == 1 and "are not marked slow" in error[0], out
    assert error[0].rsplit(": ", 1)[1] == "test_wf.py::test_forgot_the_mark", error    # it alone, named


def test_marked_whole_workflow_tests_collect(tmp_path):
    (tmp_path / "test_module.py").write_text(MODULE_MARKED)
    (tmp_path / "test_wf.py").write_text(WORKFLOW_TESTS)
    r = collect(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 tests collected" in r.stdout, r.stdout
