"""The peers' round trip on the test config: dattri's attributors (examples/dattri_scores.py) made by the workflow
from the export (rule outside_scores, a method entry's `command`) and judged as every method is; dattri's own
LDS (`dattri.metric.lds`, an independent implementation of the metric) on the export's masks and margins agrees
with simattr's, on simattr's TRAK scores and on a dattri method's; a bad dattri output is one line."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_workflow import REPO, TEST_CFG, job_counts, smk

pytestmark = pytest.mark.slow
ROOT = Path("results") / "digits"
PEERS = {"dattri_tracin": "tracin", "dattri_trak": "trak"}     # the two fastest of dattri's methods


def peers_config(wd: Path, extra: list[dict] | None = None) -> Path:
    methods = [{"encoder": "pixels", "ranker": "knn_l2"}, {"encoder": "model", "ranker": "trak"}]
    methods += [{"encoder": "external", "ranker": "scores", "name": n, "path": str(ROOT / "outside" / f"{n}.pt"),
                 "command": f"python examples/dattri_scores.py --method {m}"} for n, m in PEERS.items()]
    f = wd / "peers.yaml"
    f.write_text(yaml.safe_dump({"methods": methods + (extra or [])}))
    return f


@pytest.fixture(scope="module")
def peers(tmp_path_factory, whole_workflow):
    """The test config with two of dattri's methods beside simattr's TRAK and kNN, run whole by one command."""
    wd = tmp_path_factory.mktemp("peers")
    shutil.copytree(REPO / "examples", wd / "examples")
    r = smk("--cores", "2", workdir=wd, configfile=[TEST_CFG, peers_config(wd)])
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def lds_json(wd: Path, method: str) -> dict:
    return json.loads((wd / ROOT / "lds" / f"{method}.json").read_text())


def dattri_lds(wd: Path, scores_train_by_test: np.ndarray, tests: np.ndarray) -> np.ndarray:
    """dattri.metric.lds on the export's LDS masks (as the kept training images' indices) and margins."""
    import torch
    from dattri.metric import lds

    ex = wd / ROOT / "export"
    masks, margins = np.load(ex / "lds_masks.npy"), np.load(ex / "lds_margins.npy")
    kept = torch.from_numpy(np.stack([np.flatnonzero(m) for m in masks]))      # the same size for every model
    corr, _ = lds(torch.from_numpy(scores_train_by_test[:, tests]), (torch.from_numpy(margins[:, tests]), kept))
    return corr.numpy()


def assert_same_lds(ours: dict, theirs: np.ndarray) -> None:
    mine = np.array([np.nan if r["spearman"] is None else r["spearman"] for r in ours["per_test"]])
    assert np.array_equal(np.isnan(mine), np.isnan(theirs))
    assert np.allclose(mine[~np.isnan(mine)], theirs[~np.isnan(theirs)], atol=1e-5)
    assert ours["mean"] == pytest.approx(float(np.nanmean(theirs)), abs=1e-5)


def test_dattris_lds_equals_simattrs_on_simattrs_trak_scores(peers):
    from simattr import store

    rows, tests = [], []
    for f in sorted((peers / ROOT / "scores" / "model" / "trak").glob("class-*.h5")):
        sc = store.read_scores(str(f), extras=True)
        rows.append(np.asarray(sc["full_scores"], np.float64))
        tests.append(sc["test_indices"])
    full, tests = np.concatenate(rows), np.concatenate(tests)
    ours = lds_json(peers, "model/trak")
    assert [r["test_index"] for r in ours["per_test"]] == tests.tolist()
    scores = np.zeros((full.shape[1], int(tests.max()) + 1))
    scores[:, tests] = full.T                                  # dattri's (n_train, n_test) orientation
    assert_same_lds(ours, dattri_lds(peers, scores, tests))
    assert ours["n_test"] == 360 and ours["mean"] > 0


@pytest.mark.parametrize("name", PEERS)
def test_a_dattri_method_made_by_the_workflow_is_judged_as_every_method(peers, name):
    import torch

    f = peers / ROOT / "outside" / f"{name}.pt"
    scores = torch.load(f, weights_only=True).numpy()
    assert scores.shape == (1437, 360) and scores.dtype == np.float32 and np.isfinite(scores).all()
    cost = json.loads((peers / ROOT / "outside" / f"{name}.cost.json").read_text())
    assert cost["wall_s"] > 0 and cost["models_trained"] == 0
    # simattr's LDS of the file is dattri's
    ours = lds_json(peers, f"external/{name}")
    tests = np.array([r["test_index"] for r in ours["per_test"]])
    assert_same_lds(ours, dattri_lds(peers, scores.astype(np.float64), tests))
    # every table names it, with its support answers and its cost sidecar
    rep = peers / ROOT / "report"
    support = [r for r in csv.DictReader((rep / "support.csv").open()) if r["method"] == f"external/{name}"]
    assert {r["metric"] for r in support} == {"removal", "mislabel"} and all(int(r["n_test"]) == 4 for r in support)
    cost_row = {r["method"]: r for r in csv.DictReader((rep / "cost.csv").open())}[f"external/{name}"]
    assert cost_row["sidecar"] == str(ROOT / "outside" / f"{name}.cost.json")
    assert float(cost_row["wall_s"]) > cost["wall_s"]
    log = (peers / ROOT / "logs" / "export" / f"outside-{name}.log").read_text()
    assert f"--method {PEERS[name]}" in log or PEERS[name] in log


def test_a_new_command_remakes_only_its_method(peers):
    methods = yaml.safe_load((peers / "peers.yaml").read_text())["methods"]
    for m in methods:
        if m.get("name") == "dattri_tracin":
            m["command"] += " --batch-size 64"
    (peers / "peers2.yaml").write_text(yaml.safe_dump({"methods": methods}))
    r = smk("-n", "--cores", "2", workdir=peers, configfile=[TEST_CFG, peers / "peers2.yaml"])
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    assert counts["outside_scores"] == 1 and counts["score_external"] == 10, counts
    assert counts.get("score", 0) == 0 and counts.get("trak", 0) == 0, counts
    r = smk("-n", "--cores", "2", workdir=peers, configfile=[TEST_CFG, peers / "peers.yaml"])
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


@pytest.mark.parametrize("bad, expected", [
    ("nan", "score(s) are NaN or infinite"),
    ("orientation", "shape (1437, 360), expected (360, 1437) for layout test_by_train"),
])
def test_a_bad_dattri_output_is_one_line(peers, bad, expected):
    import torch

    good = torch.load(peers / ROOT / "outside" / "dattri_trak.pt", weights_only=True)
    f = peers / f"bad_{bad}.pt"
    entry = {"encoder": "external", "ranker": "scores", "name": f"bad_{bad}", "path": str(f.name)}
    if bad == "nan":
        good = good.clone()
        good[3, 7] = float("nan")
    else:
        entry["layout"] = "test_by_train"                     # dattri's file is train_by_test
    torch.save(good, f)
    cfg = peers / f"bad_{bad}.yaml"
    cfg.write_text(yaml.safe_dump({"methods": [entry]}))
    target = str(ROOT / "scores" / "external" / f"bad_{bad}" / "class-0.h5")
    r = smk("--cores", "1", target, workdir=peers, configfile=[TEST_CFG, cfg])
    assert r.returncode != 0
    log = (peers / ROOT / "logs" / "score" / f"external-bad_{bad}-class-0.log").read_text()
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in log, log[-2000:]
    assert not (peers / target).exists()
