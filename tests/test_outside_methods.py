"""The README's "Evaluate your own method" round trip, run as written: `snakemake export`, two outside methods
computed from the export alone (a plain-numpy kNN and TRAK through traker's own API, saved in dattri's
train_by_test orientation), brought back as external methods. They must give the built-in rankers' answers
(knn_l2, trak) on the same models and seeds, and TRAK's LDS; replacing a scores file reruns exactly its jobs."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_workflow import REPO, job_counts

pytestmark = pytest.mark.slow
ROOT = Path("results") / "digits"
# fields of an answer that name the method or time it; every other field must be equal
NAMING = ("encoder", "ranker", "settings_hash", "scores_sha256", "wall_s", "models_reused")


def readme_block(title: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def env() -> dict:
    """The environment of a user whose virtual environment is active: its bin first on PATH."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="module")
def outside(tmp_path_factory, whole_workflow):
    """A copy of the workflow with the README's commands run in it, as a user runs them (the virtual
    environment's bin first on PATH)."""
    wd = tmp_path_factory.mktemp("outside")
    for d in ("workflow", "config", "examples", "envs"):
        shutil.copytree(REPO / d, wd / d)
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("Evaluate your own method")], cwd=wd,
                       env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def answers(wd: Path, method: str) -> dict:
    root = wd / ROOT / "support" / method
    got = {p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in root.glob("*/*.json")
           if "journal" not in p.name}
    assert len(got) == 2 * 4 * 2, sorted(got)            # 2 metrics x 4 sampled images x 2 seed sets
    return got


def assert_same_answers(wd: Path, builtin: str, ext: str) -> None:
    a, b = answers(wd, builtin), answers(wd, ext)
    assert a.keys() == b.keys()
    for name in a:
        assert b[name]["ranker"] == ext.split("/")[1] and b[name]["encoder"] == "external"
        strip = lambda d: {k: v for k, v in d.items() if k not in NAMING}  # noqa: E731
        assert strip(a[name]) == strip(b[name]), name
    assert any(x["support"] is not None for x in a.values())          # answers, not only censored ones


def test_the_export_holds_what_an_outside_method_needs(outside):
    import torch

    from simattr.models import Recipe, torch_module

    ex = outside / ROOT / "export"
    m = json.loads((ex / "manifest.json").read_text())
    assert (m["n_train"], m["n_test"], m["n_classes"]) == (1437, 360, 10)
    assert m["scores_shape"] == {"test_by_train": [360, 1437], "train_by_test": [1437, 360]}
    for name in ("train_labels", "test_labels", "train_images", "test_images", "train_inputs", "test_inputs",
                 "features/pixels_train", "features/pixels_test", "sampled_test_indices", "lds_masks",
                 "lds_margins"):
        a, t = np.load(ex / f"{name}.npy"), torch.load(ex / f"{name}.pt")
        assert np.array_equal(a, t.numpy()) and list(a.shape) == m["files"][name]["shape"], name
    assert np.load(ex / "lds_masks.npy").shape == (20, 1437) and np.load(ex / "lds_margins.npy").shape == (20, 360)
    sampled = np.loadtxt(ex / "sampled_test_indices.txt", dtype=np.int64)
    assert sampled.tolist() == np.load(ex / "sampled_test_indices.npy").tolist() and len(sampled) == 4
    assert json.loads((ex / "class_names.json").read_text()) == [str(c) for c in range(10)]
    # every checkpoint loads into the documented module and classifies the test images as a trained model does
    spec = json.loads((ex / "recipe.json").read_text())
    x, y = torch.load(ex / "test_inputs.pt"), torch.load(ex / "test_labels.pt")
    assert len(m["checkpoints"]) == 2
    for c in m["checkpoints"]:
        net = torch_module(Recipe.from_settings(spec["recipe"]), tuple(spec["input_shape"]), spec["n_classes"])
        net.load_state_dict(torch.load(ex / c["file"], weights_only=True))
        with torch.no_grad():
            assert (net(x).argmax(1) == y).float().mean() > 0.8


def test_outside_knn_gives_the_built_in_knn_answers(outside):
    assert_same_answers(outside, "pixels/knn_l2", "external/knn_numpy")


def test_outside_trak_gives_the_built_in_trak_answers_and_lds(outside):
    assert_same_answers(outside, "model/trak", "external/trak_outside")
    lds = {m: json.loads((outside / ROOT / "lds" / m).with_suffix(".json").read_text())
           for m in ("model/trak", "external/trak_outside")}
    assert lds["model/trak"]["per_test"] == lds["external/trak_outside"]["per_test"]
    assert lds["model/trak"]["mean"] == lds["external/trak_outside"]["mean"] is not None


def test_the_report_names_the_outside_methods_in_every_table(outside):
    rep = outside / ROOT / "report"
    methods = {"pixels/knn_l2", "model/trak", "external/knn_numpy", "external/trak_outside"}
    support = list(csv.DictReader((rep / "support.csv").open()))
    assert {r["method"] for r in support} == methods
    assert {r["method"] for r in csv.DictReader((rep / "lds.csv").open())} == methods
    cost = {r["method"]: r for r in csv.DictReader((rep / "cost.csv").open())}
    assert cost.keys() == methods
    for name in ("knn_numpy", "trak_outside"):
        side = f"results/digits/outside/{name}.cost.json"
        assert cost[f"external/{name}"]["sidecar"] == side
        assert float(cost[f"external/{name}"]["wall_s"]) > json.loads((outside / side).read_text())["wall_s"]
    overlap = [r for r in csv.DictReader((rep / "overlap.csv").open())
               if {r["method_a"], r["method_b"]} == {"pixels/knn_l2", "external/knn_numpy"}]
    assert overlap and all(float(r["jaccard"]) == 1.0 for r in overlap)
    assert "`external/trak_outside` (+ author's)" in (rep / "report.md").read_text()


def test_the_answers_carry_their_scores_files_hash_and_a_new_file_reruns_exactly_its_jobs(outside):
    f = outside / ROOT / "outside" / "knn_numpy.npy"
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert {a["scores_sha256"] for a in answers(outside, "external/knn_numpy").values()} == {sha}

    def dry_run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile",
                               "config/test.yaml", "examples/outside.yaml"], cwd=outside, env=env(),
                              capture_output=True, text=True)

    r = dry_run()
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    np.save(f, -np.load(f))                               # another method's scores in the same file
    counts = job_counts(dry_run().stdout)
    assert counts == {"score_external": 10, "support": 2, "lds": 1, "method_figures": 1, "report": 1, "all": 1}, \
        counts
