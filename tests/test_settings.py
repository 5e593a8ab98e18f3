"""Settings come from the schema alone: every job's settings are made in one place (simattr.settings), travel as
one JSON param, and parse back into typed objects; a command run by hand with --config gets what the workflow
passes; no typed settings object has defaults of its own."""
import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simattr import config as sconfig
from simattr import settings
from simattr.cli import COMMANDS, build_parser
from simattr.datasets import Spec
from simattr.errors import SimattrError
from simattr.launch import LaunchSettings
from simattr.models import Recipe
from simattr.support.answer import Settings as SupportSettings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
WILDCARDS = {"encoder": "simclr", "ranker": "esvm", "metric": "removal", "purpose": "lds"}


def load(path, scores=None):
    """A shipped config, validated; with `scores`, an external method named `outside` reading that file."""
    raw = yaml.safe_load(path.read_text())
    if raw.get("encoders", {}).get("resnet", {}).get("checkpoint") is None:
        raw.setdefault("encoders", {}).setdefault("resnet", {})["checkpoint"] = "ck.pth"
    if scores is not None:
        raw["methods"] = list(raw.get("methods", sconfig.defaults()["methods"])) + [
            {"encoder": "external", "ranker": "scores", "name": "outside", "path": str(scores)}]
    return sconfig.validate(raw)


@pytest.fixture
def scores_file(tmp_path):
    import numpy as np

    p = tmp_path / "outside.npy"
    np.save(p, np.zeros((3, 4), np.float32))
    return p


def test_every_command_has_a_job_and_every_job_a_command():
    assert set(COMMANDS) == set(settings.JOBS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_jobs_settings_round_trip_through_json_into_typed_objects(path, scores_file):
    config = load(path, scores_file)
    for job, (_, names) in settings.JOBS.items():
        kw = {k: WILDCARDS[k] if job != "score-external" else "outside" for k in names}
        made = settings.for_job(job, config, **kw)
        parsed = settings.parse(job, settings.as_json(made), **kw)
        if "dataset" in made:
            assert isinstance(parsed.dataset, Spec) and parsed.dataset.identity() == made["dataset"]
            assert parsed.dataset.identity() == Spec.from_config(config["dataset"]).identity()
        if "model" in made:
            assert isinstance(parsed.model, Recipe) and parsed.model.identity() == made["model"]
        typed = ("dataset", "model") + (("support",) if job == "support" else ())
        if job == "support":
            assert isinstance(parsed.support, SupportSettings) and parsed.support.identity() == made["support"]
        rest = {k: v for k, v in vars(parsed).items() if k not in typed}
        assert rest == {k: v for k, v in made.items() if k not in typed}, job


def test_a_setting_reaches_only_the_jobs_that_read_it(scores_file):
    base = sconfig.validate({"methods": [{"encoder": "external", "ranker": "scores", "name": "outside",
                                                   "path": str(scores_file)}]})

    def changed(section, key, value):
        """The jobs (score jobs: score:RANKER) whose settings change with one config value."""
        c = json.loads(json.dumps(base))
        c[section][key] = value
        out = set()
        for job, (_, names) in settings.JOBS.items():
            rankers = {"score": ("esvm", "esvm_signed", "esvm_reference", "knn_l2", "knn_cos", "random"),
                       "score-model": ("trak", "datamodels"), "score-external": ("outside",)}.get(job, ("esvm",))
            for ranker in rankers:
                kw = {k: ({**WILDCARDS, "ranker": ranker})[k] for k in names}
                if settings.for_job(job, c, **kw) != settings.for_job(job, base, **kw):
                    out.add(f"{job}:{ranker}" if job.startswith("score") else job)
        return out

    assert changed("esvm", "C", 1.0) == {"score:esvm", "score:esvm_signed", "score:esvm_reference"}
    assert changed("esvm", "tol", 1e-3) == {"score:esvm_reference"}
    assert changed("esvm", "device", "cpu") == {"score:esvm", "score:esvm_signed", "score:knn_l2", "score:knn_cos"}
    assert changed("datamodels", "n_alphas", 4) == {"score-model:datamodels"}
    assert changed("score", "random_seed", 4) == {"score:random"}
    assert changed("trak", "proj_dim", 64) == {"trak"}
    assert changed("report", "grid_images", 2) == {"report"}
    assert changed("report", "n_boot", 50) == {"report", "lds"}
    assert changed("support", "seeds", 5) == set()            # the adaptive engine does not read it
    assert changed("support", "confidence", 0.95) == {"support"}
    assert changed("launch", "parallelism", 8) == set()       # a resource of the support rule, not a setting
    assert changed("dataset", "bad_images", "skip") == set()  # digits does not read it
    assert "queries" in changed("model", "lr", 0.1) and "score" not in changed("model", "lr", 0.1)
    assert "score-external:outside" in changed("score", "topk", 8)
    assert "export" in changed("model", "lr", 0.1) and "export" in changed("dataset", "test_fraction", 0.3)


def test_an_external_methods_score_jobs_read_its_files_content_not_its_path(scores_file, tmp_path):
    import numpy as np

    def made(path, **entry):
        c = sconfig.validate({"methods": [{"encoder": "external", "ranker": "scores", "name": "outside",
                                                    "path": str(path), **entry}]})
        return settings.for_job("score-external", c, ranker="outside")

    first = made(scores_file)
    copy = tmp_path / "elsewhere" / "copy.npy"
    copy.parent.mkdir()
    copy.write_bytes(scores_file.read_bytes())
    assert made(copy) == first                                  # the same bytes elsewhere: nothing reruns
    np.save(scores_file, np.ones((3, 4), np.float32))
    assert made(scores_file)["source"]["sha256"] != first["source"]["sha256"]   # new content: its jobs rerun
    assert made(copy, sign=-1)["source"]["sign"] == -1 and made(copy, layout="train_by_test") != first
    with pytest.raises(SimattrError, match="gone.npy: scores file not found"):
        made(tmp_path / "gone.npy")
    with pytest.raises(SimattrError, match="no external method named 'other'"):
        settings.for_job("score-external", sconfig.defaults(), ranker="other")


def test_a_float_setting_written_as_a_whole_number_makes_the_same_settings():
    """C, tol and val_fraction are floats whatever the YAML wrote (config.FLOAT_KEYWORDS): esvm.C: 1 and 1.0 name
    the same score files."""
    d = sconfig.defaults()
    whole = {**d, "esvm": {**d["esvm"], "C": 1, "tol": 1}, "datamodels": {**d["datamodels"], "val_fraction": 1}}
    real = {**d, "esvm": {**d["esvm"], "C": 1.0, "tol": 1.0}, "datamodels": {**d["datamodels"], "val_fraction": 1.0}}
    for job, ranker in (("score", "esvm"), ("score", "esvm_reference"), ("score-model", "datamodels")):
        a, b = (settings.as_json(settings.for_job(job, c, ranker=ranker)) for c in (whole, real))
        assert a == b, (job, ranker)


def test_hand_run_with_a_config_gets_the_workflows_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("support: {n_test: 7}\nmodel: {hidden: 8}\n")
    a = build_parser().parse_args(["queries", "--config", str(cfg), "--out", "q.h5"])
    from simattr.cli import job_settings

    s = job_settings(a, "queries", ())
    assert s.n_test == 7 and s.model == Recipe.of(hidden=8) and s.flip_models == sconfig.defaults()["support"][
        "flip_models"]


def test_a_settings_object_with_a_missing_or_unknown_key_is_one_line():
    good = settings.for_job("lds", sconfig.defaults())
    with pytest.raises(SimattrError, match=r"^--settings of `simattr lds`: lacks seed$"):
        settings.parse("lds", {"n_boot": 10})
    with pytest.raises(SimattrError, match=r"has unknown keys topk"):
        settings.parse("lds", {**good, "topk": 3})
    with pytest.raises(SimattrError, match=r"^--settings: not valid JSON"):
        settings.parse("lds", "{")
    with pytest.raises(SimattrError, match=r"^--settings: expected a JSON object, got list"):
        settings.parse("lds", "[1]")
    with pytest.raises(SimattrError, match=r"model: lacks steps"):
        settings.parse("queries", {**settings.for_job("queries", sconfig.defaults()),
                                   "model": {"name": "mlp", "hidden": 8, "lr": 0.1, "weight_decay": 0.0}})
    with pytest.raises(SimattrError, match=r"dataset: unknown dataset 'mnist'"):
        settings.parse("queries", {**settings.for_job("queries", sconfig.defaults()), "dataset": {"name": "mnist"}})


def test_the_cli_reports_bad_settings_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "simattr", "lds", "--settings", '{"n_boot": 3}', "--scores", "a.h5",
                        "--subsets", "s.h5", "--out", str(tmp_path / "l.json")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "simattr: error: --settings of `simattr lds`: lacks seed"


def test_typed_settings_have_no_defaults_of_their_own():
    for cls in (Spec, Recipe, LaunchSettings):
        with_default = [f.name for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert with_default == [], cls


def test_of_takes_the_schemas_defaults():
    d = sconfig.defaults()
    assert Recipe.of().identity() == {k: d["model"][k] for k in ("name", "hidden", "steps", "lr", "weight_decay")}
    assert LaunchSettings.of(folder="f").images_per_task == d["launch"]["images_per_task"]
    assert Recipe.of(lr=1).lr == 1.0 and isinstance(Recipe.of(lr=1).lr, float)   # a float field stays a float


def test_no_flag_stands_for_a_config_key_but_the_resources():
    """Settings travel in --settings; the flags left are paths, wildcards and resources (which change no
    result). The one resource flag with a config key defaults to the schema's value; `calibrate --device` is
    where the calibration runs (a machine's fact, as --gpus is), not esvm.device."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {f for p in sub.choices.values() for a in p._actions for f in a.option_strings}
    keys = {k for section in sconfig.defaults().values() if isinstance(section, dict) for k in section}
    named = {f for f in flags if f.lstrip("-").replace("-", "_") in keys}
    assert named == {"--workers", "--device"}
    calibrate = sub.choices["calibrate"]
    assert {f for a in calibrate._actions for f in a.option_strings} & named == {"--device"}


def test_the_embed_workers_resource_defaults_from_the_config_or_the_schema(tmp_path):
    from simattr.cli import _workers

    cfg = tmp_path / "c.yaml"
    cfg.write_text("embed: {workers: 3}\n")
    p = build_parser()
    args = ["embed", "--encoder", "pixels", "--split", "train", "--out-dir", "x"]
    assert _workers(p.parse_args([*args, "--config", str(cfg)])) == 3
    assert _workers(p.parse_args([*args, "--config", str(cfg), "--workers", "1"])) == 1
    assert _workers(p.parse_args([*args, "--settings", "{}"])) == sconfig.defaults()["embed"]["workers"]


def test_the_support_rules_launch_words_parse_to_the_configs_launch_settings():
    """The support rule passes `launch` as KEY=VALUE words from its resources; an empty partition (the resource's
    "" for null) is no partition, not the partition named ''."""
    from simattr.cli import _launch

    want = {**sconfig.defaults()["launch"], "mem_gb": 2.5}
    words = [f"{k}={'' if v is None else v}" for k, v in want.items()]
    a = build_parser().parse_args(["support", "--settings", "{}", "--encoder", "e", "--ranker", "esvm", "--metric",
                                   "removal", "--queries", "q", "--scores", "s", "--submitit-dir", "sub",
                                   "--answers-dir", "a", "--out", "o", "--launch", *words])
    got = _launch(a)
    assert got == LaunchSettings.from_settings(want, folder="sub") and got.slurm_partition is None
    assert got.mem_gb == 2.5 and isinstance(got.images_per_task, int)
    assert LaunchSettings.from_settings({**want, "slurm_partition": ""}).slurm_partition is None   # config's ""
