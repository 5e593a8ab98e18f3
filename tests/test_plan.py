"""`simattr plan` and `simattr calibrate`: the bill before the run. The plan's job counts are the workflow's (a dry
run's Job stats), its model bound is never exceeded, its expected model count and its predicted support wall hold
against a run of config/test.yaml, and bad inputs are one line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simattr import config as sconfig
from simattr import plan, settings
from simattr.errors import SimattrError
from simattr.support.answer import ENGINE_KEYS, Settings
from simattr.support.stage import answer
from test_workflow import REPO, TEST_CFG, job_counts, smk, with_fake_inputs

EXPECTED_TOLERANCE = 0.25          # the expected model count within 25% of what the run trained
WALL_FACTOR = 2.0                  # the predicted support wall within a factor 2 of the measured one


def simattr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from simattr.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=cwd)


def plan_of(config: Path | dict, **kw) -> dict:
    c = sconfig.load(str(config)) if isinstance(config, Path) else sconfig.validate(config)
    return plan.make_plan(settings.for_job("plan", c), settings.launch(c), **kw)


# ------------------------------------------------------------------------------------- the bound, per answer
@pytest.mark.parametrize("engine,metric,seed_set,extra", [
    ("bisection", "removal", 0, {"seeds": 3, "monotone_checks": 2, "early_stop": False}),
    ("bisection", "mislabel", 1, {"seeds": 3, "monotone_checks": 1, "early_stop": False}),
    ("bisection", "removal", 0, {"seeds": 7, "monotone_checks": 0, "early_stop": False}),   # seeds > flip_models
    ("adaptive", "removal", 1, {"seeds_min": 3, "seeds_max": 7, "max_models": 10, "confidence": 0.9}),
    ("adaptive", "mislabel", 0, {"seeds_min": 3, "seeds_max": 5, "max_models": 8, "confidence": 0.95}),
])
def test_no_answer_trains_more_models_than_its_bound(tmp_path, support_inputs, engine, metric, seed_set, extra):
    from datafiles import SUPPORT_SETTINGS

    queries, files = support_inputs
    base = {k: v for k, v in SUPPORT_SETTINGS.items() if k not in ENGINE_KEYS["bisection"]}
    s = {**base, "engine": engine, "seed_set": seed_set, "bisection_steps": 6, **extra}
    plan_s = {**s, "flip_models": 5, metric: {"bisection_steps": 6}}     # the toy queries hold 5 full-data models
    bound = plan.answer_bound(plan_s, metric, s["k_max"], seed_set)
    trained = []
    for t, f in zip(range(4), [files[0], files[1], files[2], files[0]]):
        a = answer(queries_path=queries, scores_path=f, out_path=str(tmp_path / f"{t}.json"), test_index=t,
                   metric=metric, settings=Settings.from_config(s))
        trained.append(a["trainings"])
    assert max(trained) <= bound, (trained, bound)
    if engine == "bisection":           # a found answer without early stopping fills every probe but k = 0's free ones
        assert bound == extra["seeds"] * (2 + 6 + extra["monotone_checks"]) - (min(extra["seeds"], 5) if seed_set == 0
                                                                                else 0)


# --------------------------------------------------------------------------- job counts against dry runs
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10.yaml", "imagenet.yaml", "cifar10-peers.yaml"])
def test_the_plans_jobs_are_a_dry_runs_jobs_for_the_cluster_configs(tmp_path, name):
    cfg_path, cfg = with_fake_inputs(REPO / "config" / name, tmp_path)
    p = plan_of(cfg_path)
    dry = smk("-n", "--cores", "2", workdir=tmp_path, configfile=cfg_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert p["rules"] == job_counts(dry.stdout)
    by_stage = {r["stage"]: r for r in p["stages"]}
    assert sum(r["jobs"] for r in p["stages"]) == sum(job_counts(dry.stdout).values())
    m, metrics, n = len(cfg["methods"]), len(cfg["support"]["metrics"]), cfg["support"]["n_test"]
    assert by_stage["support"]["jobs"] == m * metrics and by_stage["support"]["tasks"] == m * metrics * n
    assert by_stage["support"]["models_bound"] == m * metrics * n * cfg["support"]["max_models"]
    made = sum(1 for x in cfg["methods"] if x.get("command"))   # outside methods made from the export: their jobs
    assert by_stage["score"]["jobs"] == m * p["classes"] + (made + 1 if made else 0)
    assert p["time_per_model_s"] is None and "simattr calibrate" in p["time_source"]


def test_a_given_time_per_model_prices_the_models(tmp_path):
    cfg = yaml.safe_load(TEST_CFG.read_text())
    p = plan_of(cfg, time_per_model_s=2.0, history=False)
    sup = next(r for r in p["stages"] if r["stage"] == "support")
    assert p["time_source"] == "given (--time-per-model)"
    assert sup["cpu_h"] == pytest.approx(sup["models_expected"] * 2.0 / 3600, rel=1e-3)
    assert sup["wall_s"] == pytest.approx(sup["models_expected"] * 2.0 / cfg["launch"]["parallelism"], rel=1e-3)
    assert sup["gpu_h"] == 0.0 and sup["device"] == "cpu"
    q = next(r for r in p["stages"] if r["stage"] == "queries")
    assert q["models_bound"] == q["models_expected"] == cfg["support"]["flip_models"]


def test_plan_and_calibrate_commands_print_and_write(tmp_path):
    cfg = yaml.safe_load(TEST_CFG.read_text())
    cfg["results"] = str(tmp_path / "results")
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump(cfg))
    r = simattr("calibrate", "--config", str(c))
    assert r.returncode == 0, r.stderr
    calib = json.loads((tmp_path / "results" / "digits" / "plan" / "calibration.json").read_text())
    assert calib["device"] == "cpu" and calib["time_per_model_s"] > 0 and calib["task_start_s"] > 0
    r = simattr("plan", "--config", str(c), "--json", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "plan.json").read_text())
    assert p["time_per_model_s"] == calib["time_per_model_s"] and p["time_source"].startswith("calibration ")
    assert "support" in r.stdout and "time per model:" in r.stdout and "calibration" in r.stdout
    # another recipe: the calibration no longer applies, and the plan says how to get a time
    cfg["model"]["steps"] = 80
    c.write_text(yaml.safe_dump(cfg))
    r = simattr("plan", "--config", str(c))
    assert r.returncode == 0 and "GPU/CPU hours unknown" in r.stdout and "simattr calibrate" in r.stdout


# ------------------------------------------------------------------------------------------- bad inputs
def _one_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_missing_root_or_checkpoint_or_cuda_is_one_line(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "cifar10.yaml").read_text())
    cfg["dataset"]["root"] = str(tmp_path / "nowhere")
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump(cfg))
    _one_line(simattr("plan", "--config", str(c)), str(tmp_path / "nowhere"))
    _one_line(simattr("calibrate", "--config", str(c)), str(tmp_path / "nowhere"))
    fake, _ = with_fake_inputs(REPO / "config" / "cifar10.yaml", tmp_path / "fake")
    cfg = yaml.safe_load(fake.read_text())
    cfg["encoders"]["resnet"]["checkpoint"] = str(tmp_path / "missing.pth")
    c.write_text(yaml.safe_dump(cfg))
    _one_line(simattr("plan", "--config", str(c)), "encoders.resnet.checkpoint", str(tmp_path / "missing.pth"))
    _one_line(simattr("calibrate", "--config", str(TEST_CFG), "--device", "cuda", "--out", str(tmp_path / "x.json")),
              "cuda")
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(SimattrError, match="time-per-model"):
        plan.time_per_model(given=0.0, calibration=None, answers=[])


# ------------------------------------------------------------------ against a run of the test config
@pytest.fixture(scope="module")
def run(tmp_path_factory, whole_workflow):
    """config/test.yaml calibrated on this machine, then run whole (its report has the planned-vs-spent table)."""
    wd = tmp_path_factory.mktemp("plan-run")
    r = simattr("calibrate", "--config", str(TEST_CFG), cwd=wd)
    assert r.returncode == 0, r.stderr
    r = smk("--cores", "2", workdir=wd)
    assert r.returncode == 0, r.stderr[-4000:]
    return wd


def _answers(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / "support").glob("*/*/*/*.json")]


@pytest.mark.slow
def test_the_run_stays_under_the_bound_and_near_the_expected_count(run):
    root = run / "results" / "digits"
    p = plan_of(TEST_CFG, history=False, calibration_path=str(root / "plan" / "calibration.json"))
    sup = next(r for r in p["stages"] if r["stage"] == "support")
    answers = _answers(root)
    assert len(answers) == p["answers"] == 7 * 2 * 4 * 2
    cap = yaml.safe_load(TEST_CFG.read_text())["support"]["max_models"]
    assert max(a["trainings"] for a in answers) <= cap
    trained = sum(a["trainings"] for a in answers)
    assert trained <= sup["models_bound"]
    assert abs(sup["models_expected"] - trained) <= EXPECTED_TOLERANCE * trained, (sup["models_expected"], trained)
    # the report's table: planned vs spent, the plan made as before the run (same numbers as this one)
    with open(root / "report" / "plan.csv") as f:
        rows = {r["stage"]: r for r in csv.DictReader(f)}
    assert int(rows["support"]["trained_models"]) == trained
    assert int(rows["support"]["planned_models_expected"]) == sup["models_expected"]
    assert int(rows["support"]["planned_models_bound"]) == sup["models_bound"]
    for st in ("embed", "score", "queries", "trak", "subsets", "support", "lds"):
        assert int(rows[st]["planned_jobs"]) == int(rows[st]["spent_jobs"]), st
    assert "## Planned vs spent" in (root / "report" / "report.md").read_text()


@pytest.mark.slow
def test_the_predicted_support_wall_is_within_a_factor_2_of_the_measured_one(run):
    """Calibrated time per model x expected models (+ task starts) / launch.parallelism against the support jobs'
    summed benchmark wall: within a factor WALL_FACTOR either way. Both are measured on this machine minutes apart
    (the fixture calibrates, then runs): the check assumes its load stays about the same meanwhile."""
    with open(run / "results" / "digits" / "report" / "plan.csv") as f:
        sup = next(r for r in csv.DictReader(f) if r["stage"] == "support")
    predicted, measured = float(sup["planned_wall_s"]), float(sup["spent_wall_s"])
    assert measured / WALL_FACTOR <= predicted <= measured * WALL_FACTOR, (predicted, measured)


@pytest.mark.slow
def test_an_earlier_runs_answers_give_the_expected_count_and_time(run):
    p = plan_of(yaml.safe_load(TEST_CFG.read_text()) | {"results": str(run / "results")})
    answers = _answers(run / "results" / "digits")
    sup = next(r for r in p["stages"] if r["stage"] == "support")
    assert "earlier run" in p["expected_basis"]
    assert sup["models_expected"] == pytest.approx(sum(a["trainings"] for a in answers), abs=sup["jobs"])  # rounding
