"""envs/simattr.yaml (conda, for --software-deployment-method conda) must list pyproject's dependencies."""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}   # PyPI name -> conda-forge name where they differ
PIP_ONLY = {"traker"}                # not on conda-forge: installed by the environment's pip section


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_conda_env_lists_the_same_packages_as_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    want = {CONDA_NAMES.get(_name(d), _name(d)) for d in deps}
    env = yaml.safe_load((REPO / "envs" / "simattr.yaml").read_text())
    have = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert have | {_name(d) for d in pip[:-1]} == want and {_name(d) for d in pip[:-1]} == PIP_ONLY
    assert pip[-1] == "-e .."        # simattr itself, from the checkout (relative to envs/)


def test_every_rule_uses_the_conda_env():
    for f in (REPO / "workflow" / "rules").glob("*.smk"):
        text = f.read_text()
        assert text.count("conda:") == text.count("shell:"), f.name
