"""envs/simattr.yaml (conda, for --software-deployment-method conda) must list pyproject's dependencies."""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}   # PyPI name -> conda-forge name where they differ
PIP_ONLY = {"traker"}                # not on conda-forge: installed by the environment's pip section
CONDA_ONLY = {"cuda-version"}        # pins the CUDA runtime of the CUDA build of pytorch


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_conda_env_lists_the_same_packages_as_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    want = {CONDA_NAMES.get(_name(d), _name(d)) for d in deps}
    env = yaml.safe_load((REPO / "envs" / "simattr.yaml").read_text())
    have = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"} - CONDA_ONLY
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert have | {_name(d) for d in pip[:-1]} == want and {_name(d) for d in pip[:-1]} == PIP_ONLY
    assert pip[-1] == "-e .."        # simattr itself, from the checkout (relative to envs/)


def test_every_rule_uses_the_conda_env():
    for f in (REPO / "workflow" / "rules").glob("*.smk"):
        text = f.read_text()
        assert text.count("conda:") == text.count("shell:"), f.name


def test_the_conda_env_asks_for_a_cuda_build_of_pytorch():
    env = yaml.safe_load((REPO / "envs" / "simattr.yaml").read_text())
    torch = [d for d in env["dependencies"] if isinstance(d, str) and _name(d) == "pytorch"]
    keys = dict(re.findall(r"(\w+)='([^']*)'", torch[0]))     # conda MatchSpec: name[key='value', ...]
    assert keys == {"version": ">=2.4", "build": "cuda*"}, torch
    assert any(isinstance(d, str) and _name(d) == "cuda-version" for d in env["dependencies"])


def test_the_peers_env_is_simattrs_with_the_peers_extra():
    """Rule outside_scores runs dattri (examples/dattri_scores.py) in envs/peers.yaml: envs/simattr.yaml's packages,
    simattr installed with its `peers` extra, which pyproject defines."""
    env = yaml.safe_load((REPO / "envs" / "simattr.yaml").read_text())
    peers = yaml.safe_load((REPO / "envs" / "peers.yaml").read_text())
    assert peers["channels"] == env["channels"]
    plain = lambda e: [d for d in e["dependencies"] if isinstance(d, str)]  # noqa: E731
    pip = lambda e: [d for d in e["dependencies"] if isinstance(d, dict)][0]["pip"]  # noqa: E731
    assert plain(peers) == plain(env) and pip(peers)[:-1] == pip(env)[:-1] and pip(peers)[-1] == "-e ..[peers]"
    assert "peers" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert '"../../envs/peers.yaml"' in (REPO / "workflow" / "rules" / "export.smk").read_text()
