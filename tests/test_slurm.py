"""The support engine on a real SLURM cluster (the local one-node cluster of scripts/slurm/start-local.sh).

These tests need `sinfo` to answer. When it does not and we are root on Debian, the session fixture starts the
local cluster with scripts/slurm/start-local.sh (and stops what it started at the end); otherwise they skip
with the reason. CI sets SIMATTR_REQUIRE_SLURM=1, which turns a skip into a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from simattr import launch
from simattr import queries as queries_mod
from simattr.launch import LaunchSettings
from simattr.support import stage as support_stage
from simattr.support.answer import Settings, journal_path

sys.path.insert(0, str(Path(__file__).parent))
from datafiles import SUPPORT_SETTINGS as SETTINGS, support_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
pytestmark = pytest.mark.slurm


def _cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and any(s.strip(" *~#") in ("idle", "mix", "alloc") for s in r.stdout.split())


@pytest.fixture(scope="session")
def slurm():
    """A SLURM cluster that answers; started (and stopped afterwards) by this session when needed and possible."""
    if _cluster_answers():
        yield
        return
    started = False
    if os.geteuid() == 0 and Path("/etc/debian_version").exists():
        r = subprocess.run(["bash", str(SCRIPTS / "start-local.sh")], capture_output=True, text=True, timeout=900)
        started = r.returncode == 0 and _cluster_answers()
        reason = ("scripts/slurm/start-local.sh did not bring a cluster up: "
                  + ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1])
    else:
        reason = ("no SLURM cluster answers `sinfo`, and only root on Debian can start the local one "
                  "(bash scripts/slurm/start-local.sh)")
    if not started:
        if os.environ.get("SIMATTR_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-local.sh")], capture_output=True, timeout=120)


def _settings(**model) -> Settings:
    return Settings.from_settings({**SETTINGS, "monotone_checks": 1, "model": {**SETTINGS["model"], **model}})


def _unit(queries: str, files: list[str], out_dir: Path, test_index: int, settings: Settings,
          metric="removal") -> dict:
    arrays = queries_mod.load_queries(queries)["arrays"]
    cls = int(arrays["y_query"][arrays["test_indices"].tolist().index(test_index)])   # files[c]: class c
    return {"queries_path": queries, "scores_path": files[cls], "out_path": str(out_dir / f"{test_index}.json"),
            "test_index": test_index, "metric": metric, "settings": settings}


def _strip(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}


def _journal_keys(answer_path: str) -> list[tuple[int, int]]:
    lines = journal_path(answer_path).read_text().splitlines()
    return [(e["k"], e["seed_index"]) for e in map(json.loads, lines)]


def _slurm_launch(tmp: Path, **kw) -> LaunchSettings:
    base = dict(cluster="slurm", folder=str(tmp / "submitit"), parallelism=4, timeout_min=10, mem_gb=0.5,
                signal_delay_s=30, images_per_task=1)       # one array task per test image
    return LaunchSettings.of(**{**base, **kw})


def _sacct(job: str, fields: str) -> list[str]:
    r = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", fields], capture_output=True, text=True,
                       timeout=30)
    return [ln for ln in r.stdout.splitlines() if ln.strip()]


def _sacct_runs(job: str) -> list[str]:
    """The states of every run of a (possibly requeued) job, oldest first (sacct --duplicates)."""
    r = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State"], capture_output=True,
                       text=True, timeout=30)
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


def _run_in_thread(fn, *args, **kw):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _job_of(name: str, timeout: float = 120) -> str:
    """The SLURM job id of the running task named `name` (%A: unique per array task)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = subprocess.run(["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%A"], capture_output=True,
                           text=True, timeout=20)
        ids = r.stdout.split()
        if ids:
            return ids[0]
        time.sleep(1)
    raise AssertionError(f"no running SLURM task named {name} after {timeout} s")


def _wait_for(cond, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_support_stage_runs_as_a_slurm_array_with_the_same_answers(slurm, tmp_path):
    queries, files = support_inputs(tmp_path)
    settings = _settings()
    common = dict(queries=queries, score_files=files, metric="removal", settings=settings, progress=False,
                  replicates=1)
    t0 = time.perf_counter()
    on_slurm = support_stage.support_stage(answers_dir=str(tmp_path / "slurm"),
                                           gather_out=str(tmp_path / "slurm.json"), launch=_slurm_launch(tmp_path),
                                           **common)
    wall = time.perf_counter() - t0
    local = support_stage.support_stage(answers_dir=str(tmp_path / "debug"), gather_out=str(tmp_path / "debug.json"),
                                        launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "dbg")),
                                        **common)
    assert [_strip(a) for a in on_slurm["answers"]] == [_strip(a) for a in local["answers"]]
    # the tasks really were one SLURM array (submitit's folder holds one log per array task)
    logs = sorted((tmp_path / "submitit").glob("*_*_log.out"))
    assert len(logs) == 4, logs
    array = logs[0].name.split("_")[0]
    _wait_for(lambda: len(_sacct(array, "JobID,State")) == 4, 60, "accounting of the 4 array tasks")
    states = _sacct(array, "JobID,State")
    assert sorted(s.split("|")[0] for s in states) == [f"{array}_{i}" for i in range(4)], states
    assert all(s.endswith("|COMPLETED") for s in states), states
    print(f"support stage as a SLURM array: 4 tasks in {wall:.1f} s")


def test_a_task_that_raises_is_reported_with_its_log_while_the_rest_complete(slurm, tmp_path):
    queries, files = support_inputs(tmp_path)
    settings = _settings()
    units = [_unit(queries, files, tmp_path / "ans", t, settings) for t in (0, 1)]
    units.append({**units[0], "test_index": 999, "out_path": str(tmp_path / "ans" / "999.json")})
    results, failures = launch.run_tasks(support_stage.answer_task, units, ["image 0", "image 1", "image 999"],
                                         _slurm_launch(tmp_path), name=f"simattr-fail-{uuid.uuid4().hex[:6]}",
                                         progress=False)
    assert results[0]["test_index"] == 0 and results[1]["test_index"] == 1 and results[2] is None
    assert len(failures) == 1 and failures[0].label == "image 999"
    assert "test image 999 is not among the sampled queries" in failures[0].error
    log = Path(failures[0].log)
    assert log.exists() and "test image 999 is not among the sampled queries" in log.read_text()
    assert str(log) in str(failures[0])


# An answer that takes tens of seconds: long enough to requeue it, or to reach a one-minute limit, midway.
SLOW = {"steps": 80000}


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory):
    """The uninterrupted answer of the slow unit, computed in this process."""
    tmp = tmp_path_factory.mktemp("slow")
    queries, files = support_inputs(tmp)
    unit = _unit(queries, files, tmp / "ref", 1, _settings(**SLOW))
    t0 = time.perf_counter()
    ref = support_stage.answer_task(**unit)
    return ref, time.perf_counter() - t0


def _check_resumed(answer: dict, ref: dict, out_path: str) -> None:
    assert _strip(answer) == _strip(ref)
    keys = _journal_keys(out_path)
    assert len(keys) == len(set(keys)), "a model was trained twice"
    assert len(keys) == ref["trainings"]
    assert answer["models_reused"] > 0          # the second run started from the journal


def test_scontrol_requeue_of_a_running_task_resumes_from_its_journal(slurm, slow_reference, tmp_path):
    ref, ref_s = slow_reference
    queries, files = support_inputs(tmp_path)
    unit = _unit(queries, files, tmp_path / "ans", 1, _settings(**SLOW))
    name = f"simattr-requeue-{uuid.uuid4().hex[:6]}"
    th, box = _run_in_thread(launch.run_tasks, support_stage.answer_task, [unit], ["image 1"],
                             _slurm_launch(tmp_path), name=name, progress=False)
    job = _job_of(name)
    journal = journal_path(unit["out_path"])
    _wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 3, 120, "3 journaled models")
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    t0 = time.perf_counter()
    th.join(timeout=600)
    assert not th.is_alive(), "the requeued task did not finish within 10 minutes"
    assert "error" not in box, box.get("error")
    results, failures = box["result"]
    assert not failures, failures
    _check_resumed(results[0], ref, unit["out_path"])
    runs = _sacct_runs(job)
    assert runs[0] == "REQUEUED" and runs[-1] == "COMPLETED", runs     # SLURM ran it twice
    print(f"requeue: reference {ref_s:.1f} s in-process; requeued task finished {time.perf_counter() - t0:.1f} s "
          f"after the requeue; {results[0]['models_reused']} of {ref['trainings']} models reused")


def test_a_task_reaching_its_time_limit_is_checkpointed_and_resumed(slurm, slow_reference, tmp_path):
    ref, ref_s = slow_reference
    assert ref_s > 40, f"the slow unit took only {ref_s:.0f} s: too short to reach a one-minute limit"
    queries, files = support_inputs(tmp_path)
    unit = _unit(queries, files, tmp_path / "ans", 1, _settings(**SLOW))
    t0 = time.perf_counter()
    results, failures = launch.run_tasks(support_stage.answer_task, [unit], ["image 1"],
                                         # SLURM checks limits every 30 s, so the signal may come up to 30 s early:
                                         # with a 20 s delay it comes 10-40 s into each run, before the kill
                                         _slurm_launch(tmp_path, timeout_min=1, signal_delay_s=20, max_requeues=10),
                                         name=f"simattr-timeout-{uuid.uuid4().hex[:6]}", progress=False)
    wall = time.perf_counter() - t0
    assert not failures, failures
    _check_resumed(results[0], ref, unit["out_path"])
    logs = sorted((tmp_path / "submitit").glob("*_log.err"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "timed-out" in text.lower() or "timeout" in text.lower() or "requeu" in text.lower(), text[-2000:]
    print(f"time limit: reference {ref_s:.1f} s; with a 1-minute limit the task finished after {wall:.1f} s, "
          f"{results[0]['models_reused']} of {ref['trainings']} models reused")


def test_the_test_workflow_runs_as_slurm_jobs_through_the_repo_profile(slurm, tmp_path):
    import re

    import yaml
    from test_workflow import TEST_CFG, smk_cmd, variant

    # embed.gpu: the embed stage's network jobs ask for a (fake) GPU; with no CUDA here they would stop in one
    # line (accel), unless SIMATTR_ALLOW_CPU lets them run on the CPU (sbatch --export=ALL carries it)
    cfg_path = variant(tmp_path, lambda c: c["embed"].update(gpu=True))
    cmd, env = smk_cmd("--profile", str(REPO / "profiles" / "slurm"), workdir=tmp_path, configfile=cfg_path)
    env["SIMATTR_ALLOW_CPU"] = "1"
    t0, since = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert list(tmp_path.glob("results/*/report/report.md")), out[-2000:]
    # a rule's job logs under rule_RULE/, a group job's (profiles/slurm: groups named after their rule) under
    # group_GROUP_RULE/
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(?:rule_|group_([a-z_]+?)_(?=\2/))([a-z_]+)/",
                           out)
    jobs = {rule: job for job, _, rule in submitted}
    grouped = {rule: job for job, group, rule in submitted if group}
    assert {"train_encoder", "embed_shard", "queries", "report"} <= set(jobs), sorted(jobs)
    assert set(grouped) == {"score", "score_model", "embed_index", "lds", "method_figures"}, sorted(grouped)
    for rule, job in grouped.items():        # members one after another: one CPU, not one per member
        assert _sacct(job, "ReqCPUS") == ["1"], (rule, _sacct(job, "ReqCPUS"))
        assert _sacct(job, "State") == ["COMPLETED"], (rule, _sacct(job, "State"))
    assert len(submitted) < 50, len(submitted)        # 36 (121 one job per rule instance, before grouping)
    tres = _sacct(jobs["train_encoder"], "AllocTRES")
    assert tres and "gres/gpu=1" in tres[0], tres                 # the training rule got a (fake) GPU
    assert "gres/gpu" not in (_sacct(jobs["queries"], "AllocTRES") or [""])[0]    # the MLP's retrains: none
    assert "support" not in jobs                                   # a local rule ...
    cfg = yaml.safe_load(TEST_CFG.read_text())
    names = {f"support-{m['encoder']}-{m['ranker']}-{metric}" for m in cfg["methods"] for metric in cfg["support"]["metrics"]}
    arrays = [ln for ln in subprocess.run(["sacct", "-n", "-P", "-X", "-S", since, "-o", "JobID,JobName"],
                                          capture_output=True, text=True, timeout=30).stdout.splitlines()
              if ln.split("|")[1] in names and "_" in ln.split("|")[0]]
    assert arrays, "no submitit support array tasks in sacct"      # ... whose tasks were SLURM array tasks
    print(f"test workflow through profiles/slurm: {wall:.0f} s, {len(submitted)} SLURM jobs of {len(jobs)} rules "
          f"({len(grouped)} group jobs), {len(arrays)} support array tasks")


N_TRAIN = 196        # the resume test's training images: 192 after k_max = 4 are removed, 6 batches of 32 an epoch
BATCH = 32


def _epoch_seconds() -> float:
    """Seconds per epoch of the resume test's model, trained here on one thread: the difference of a two-epoch
    and a one-epoch training, after a small one that warms torch up."""
    import torch

    from simattr import models
    from test_resume import RECIPE, tiny_cifar

    X, y, Xe = tiny_cifar(N_TRAIN - 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        took = []
        for n, epochs in ((BATCH, 1), (len(y), 1), (len(y), 2)):
            r = models.Recipe.of(**{**RECIPE.__dict__, "epochs": epochs, "batch_size": BATCH})
            t0 = time.perf_counter()
            models.train_predict(X[:n], y[:n], Xe, seeds=[0], n_classes=10, recipe=r, device="cpu")
            took.append(time.perf_counter() - t0)
        return max(0.1, took[2] - took[1])
    finally:
        torch.set_num_threads(threads)


def test_a_cnn_model_longer_than_the_time_limit_resumes_mid_training_after_each_requeue(slurm, tmp_path):
    """A resnet9 answer whose one model trains for longer than its task's two-minute limit, states saved at every
    epoch boundary: each requeued run resumes the model where the last saved it (never from epoch 0 again), and
    the answer, and the model's journal line, are those of an uninterrupted run on the local executor (run at the
    same time). Two minutes, not one: SLURM signals a task 10-40 s before the limit it checks every 30 s, and a
    run must outlast its start (torch's import) and an epoch to make progress on a loaded machine."""
    import re

    from test_resume import cnn_settings, cnn_support_inputs, journal_models

    per_epoch = _epoch_seconds()
    # about 200 s of training on SLURM, where the uninterrupted run shares the cores: two runs or more (a run trains
    # for 60-90 s); epochs of seconds, so that every run makes progress and the saves (52 MB each) stay few
    epochs = int(min(60, max(8, round(200 / (2 * per_epoch)))))
    queries, files = cnn_support_inputs(tmp_path, N_TRAIN)
    settings = Settings.from_settings({**cnn_settings(epochs), "model": {**cnn_settings(epochs)["model"],
                                                                        "batch_size": BATCH}})
    unit = {"queries_path": queries, "scores_path": files[0], "out_path": str(tmp_path / "slurm" / "0.json"),
            "test_index": 0, "metric": "removal", "settings": settings}
    ref_unit = {**unit, "out_path": str(tmp_path / "local" / "0.json")}
    local = LaunchSettings.of(cluster="local", folder=str(tmp_path / "local-submitit"), parallelism=1,
                              cpus_per_task=1, timeout_min=30, state_every_s=0)
    t0 = time.perf_counter()
    ref_th, ref_box = _run_in_thread(launch.run_tasks, support_stage.answer_task, [ref_unit], ["image 0"], local,
                                     name="simattr-resume-ref", progress=False)
    results, failures = launch.run_tasks(support_stage.answer_task, [unit], ["image 0"],
                                         _slurm_launch(tmp_path, timeout_min=2, signal_delay_s=20, max_requeues=10,
                                                       cpus_per_task=1, mem_gb=2, state_every_s=0),
                                         name=f"simattr-resume-{uuid.uuid4().hex[:6]}", progress=False)
    wall = time.perf_counter() - t0
    ref_th.join(timeout=900)
    assert not ref_th.is_alive() and "error" not in ref_box, ref_box.get("error")
    (ref,), ref_failures = ref_box["result"]
    assert not failures and not ref_failures, (failures, ref_failures)
    assert _strip(results[0]) == _strip(ref) and ref["trainings"] == 1
    (want,), (got,) = journal_models(ref_unit["out_path"]), journal_models(unit["out_path"])
    resumed_at = got.pop("resumed_at", [])
    assert got == want                                       # the same model: seed, prediction, margin
    logs = sorted((tmp_path / "submitit").glob("*_0_log.err"))
    assert len(logs) == 1, logs
    text = logs[0].read_text(errors="replace")
    started = re.findall(r"training model k=4 seed=0 of test image 0 from epoch 0", text)
    resumes = [int(e) for e in re.findall(r"resumed model k=4 seed=0 of test image 0 at epoch (\d+)", text)]
    job = logs[0].name.split("_")[0]                         # a one-task array: sacct names it by its job id
    _wait_for(lambda: (_sacct_runs(job) or [""])[-1] == "COMPLETED", 60, "the accounting of the finished run")
    runs = _sacct_runs(job)
    assert len(started) == 1, text[-3000:]                   # never trained from its first epoch again
    assert resumes and all(e > 0 for e in resumes) and resumes == sorted(set(resumes)), (resumes, text[-3000:])
    assert resumed_at == resumes                             # the journal records each resume, as logged
    assert runs[-1] == "COMPLETED" and len(runs) >= 2, runs  # SLURM ran it more than once
    assert not list((tmp_path / "slurm").glob("*.state.pt"))
    print(f"CNN resume: {epochs} epochs of {per_epoch:.2f} s measured here; uninterrupted local answer in "
          f"{ref['wall_s']:.0f} s; on SLURM with a 2-minute limit: {len(runs)} runs ({', '.join(runs)}), resumed at "
          f"epochs {resumes}, {wall:.0f} s wall")
