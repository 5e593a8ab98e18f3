import math

import numpy as np
import pytest

from simattr import models, support
from simattr.support import Probe, bisect_support, models_needed

from datafiles import SUPPORT_SETTINGS, toy_blobs


def oracle(true_k, calls=None):
    def probe(k):
        if calls is not None:
            calls.append(k)
        return Probe(k=k, accuracy=0.0 if k >= true_k else 1.0, n_models=1, flipped=k >= true_k)
    return probe


@pytest.mark.parametrize("k_max", [1, 2, 7, 64, 100, 128, 144])
def test_bisection_finds_the_true_minimum_on_a_monotone_oracle(k_max):
    budget = math.ceil(math.log2(k_max)) if k_max > 1 else 0
    for true_k in range(1, k_max + 1):
        calls = []
        found, probes = bisect_support(oracle(true_k, calls), k_max, budget)
        assert found == true_k
        assert calls[0] == k_max and len(calls) <= 1 + budget
        assert [p.k for p in probes] == calls


def test_bisection_returns_none_when_k_max_does_not_flip():
    calls = []
    found, probes = bisect_support(oracle(10**9, calls), 64, 6)
    assert found is None and calls == [64] and len(probes) == 1


def test_small_budget_gives_an_upper_bound():
    found, probes = bisect_support(oracle(5), 64, 2)
    assert found is not None and found >= 5 and len(probes) == 3


def test_check_k_spreads_unprobed_values_above_the_support():
    assert support.check_k(4, 16, {16, 0, 8, 4, 6, 5}, 1) == [12]     # the middle of 7, 9, 10, ..., 15
    ks = support.check_k(4, 16, {16, 0, 8, 4, 6, 5}, 3)
    assert len(ks) == 3 and all(4 < k < 16 and k not in {8, 6, 5} for k in ks) and ks == sorted(ks)
    assert support.check_k(4, 16, set(), 100) == list(range(5, 16))      # fewer free values than asked
    assert support.check_k(15, 16, set(), 2) == [] and support.check_k(3, 16, set(), 0) == []


def test_monotone_checks_count_a_violation_bisection_cannot_see():
    def probe(k):                       # flipped from 4 on, except at 10 (a non-monotone image)
        flipped = k >= 4 and k != 10
        return Probe(k=k, accuracy=0.0 if flipped else 1.0, n_models=1, flipped=flipped)
    found, probes = support.search(probe, 16, 4)
    assert found == 4 and all(p.flipped == (p.k >= 4) for p in probes)     # bisection saw nothing wrong
    assert sorted(p.k for p in probes) == [0, 2, 3, 4, 8, 16]
    checks = support.monotone_checks(probe, found, 16, probes, 1)
    assert [c.k for c in checks] == [10] and not checks[0].flipped
    assert support.monotone_checks(oracle(4), found, 16, probes, 3) and \
        all(c.flipped for c in support.monotone_checks(oracle(4), found, 16, probes, 3))
    assert support.monotone_checks(probe, None, 16, probes, 3) == []


def test_models_needed_matches_training_every_model():
    rng = np.random.default_rng(0)
    for n_total in range(1, 8):
        for threshold in (0.0, 0.25, 0.5, 0.75):
            for _ in range(50):
                outcomes = rng.random(n_total) < 0.5      # True = the model is right on the query
                full = outcomes.mean() <= threshold
                correct, trained = 0, 0
                while True:
                    need = models_needed(correct, trained, n_total, threshold)
                    if need == 0:
                        break
                    correct += int(outcomes[trained:trained + need].sum())
                    trained += need
                limit = math.floor(threshold * n_total + 1e-9)
                assert (correct <= limit) == full
                assert trained <= n_total


def test_k0_probe_reuses_the_full_data_models_and_trains_nothing(monkeypatch):
    X, y = toy_blobs()
    calls = []
    real = models.train_predict
    monkeypatch.setattr(models, "train_predict", lambda *a, **kw: calls.append(kw["seeds"]) or real(*a, **kw))
    kw = dict(X_train=X, y_train=y, x_query=X[0], label=0, ranking=np.arange(40), metric="removal", flip_class=None,
              n_classes=3, recipe=models.Recipe.of(hidden=8, steps=20, lr=0.05), threshold=0.5, dataset="toy",
              test_index=0)
    journal = support.Journal(None, "")
    p = support.make_probe(seeds=3, early_stop=True, full_correct=np.array([0, 0, 1, 1, 1], bool),
                           journal=journal, **kw)(0)
    assert (p.flipped, p.n_models, p.reused) == (True, 2, 2) and calls == [] and not journal.models
    p = support.make_probe(seeds=5, early_stop=False, full_correct=np.array([1, 0, 1], bool), **kw)(0)
    assert (p.n_models, p.reused) == (5, 3) and len(calls) == 1 and len(calls[0]) == 2   # 2 seeds beyond them
    assert p.as_dict()["full_data_models"] == 3
    support.make_probe(seeds=3, early_stop=True, full_correct=np.ones(5, bool), **kw)(4)  # k > 0: trained
    assert len(calls) == 2


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_early_stopping_keeps_every_decision(metric):
    X, y = toy_blobs()
    q = X[0] + 0.1
    ranking = np.argsort(((X - q) ** 2).sum(1))
    ranking = ranking[y[ranking] == 0]
    kw = dict(X_train=X, y_train=y, x_query=q, label=0, ranking=ranking, metric=metric, flip_class=1,
              n_classes=3, recipe=models.Recipe.of(hidden=8, steps=40, lr=0.05), seeds=5, threshold=0.5,
              dataset="toy", test_index=0)
    slow = support.make_probe(early_stop=False, **kw)
    fast = support.make_probe(early_stop=True, **kw)
    for k in (1, 5, 10, 20, 30, 40):
        a, b = slow(k), fast(k)
        assert a.flipped == b.flipped
        assert a.n_models == 5 and 1 <= b.n_models <= 5


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_support_stage_answers_every_image_and_resumes_without_retraining(metric, tmp_path, support_inputs):
    from simattr import answers, store
    from simattr.launch import LaunchSettings

    queries, files = support_inputs
    launch = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "submitit"))
    kw = dict(queries=queries, score_files=files, answers_dir=str(tmp_path / "answers"), metric=metric,
              settings=SUPPORT_SETTINGS, launch=launch, progress=False, replicates=1)
    g1 = answers.support_stage(gather_out=str(tmp_path / "g1.json"), **kw)
    assert [a["test_index"] for a in g1["answers"]] == [0, 1, 2, 3]
    for a in g1["answers"]:
        assert a["support"] is None or 1 <= a["support"] <= 40
        # every model counted once; the full-data models reused at k = 0 are not trainings
        assert a["trainings"] == sum(p["n_models"] - p.get("full_data_models", 0) for p in a["probes"] + a["checks"])
    # a finished answer is kept as it is; a missing one is recomputed, identically
    kept = tmp_path / "answers" / "1.json"
    marked = store.read_json(kept)
    marked["wall_s"] = -1.0
    store.write_json(kept, marked)
    (tmp_path / "answers" / "2.json").unlink()
    g2 = answers.support_stage(gather_out=str(tmp_path / "g2.json"), **kw)
    assert g2["answers"][1]["wall_s"] == -1.0
    strip = lambda a: {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}
    assert strip(g2["answers"][2]) == strip(g1["answers"][2])
    assert g2["answers"][2]["models_reused"] == g2["answers"][2]["trainings"]   # all from its journal
    # other settings: recomputed, not reused
    g3 = answers.support_stage(gather_out=str(tmp_path / "g3.json"), **{**kw, "settings": {**SUPPORT_SETTINGS, "seeds": 5}})
    assert g3["answers"][1]["wall_s"] != -1.0


def test_several_images_per_task_give_the_same_answers_and_isolate_a_failing_image(tmp_path, monkeypatch,
                                                                                   support_inputs):
    from simattr import answers
    from simattr.errors import SimattrError
    from simattr.launch import LaunchSettings

    queries, files = support_inputs
    kw = dict(queries=queries, score_files=files, metric="removal", settings=SUPPORT_SETTINGS, progress=False,
              replicates=1)
    one = answers.support_stage(answers_dir=str(tmp_path / "a1"), gather_out=str(tmp_path / "g1.json"),
                               launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s1"),
                                                        images_per_task=1), **kw)
    three = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s3"), images_per_task=3)
    got = answers.support_stage(answers_dir=str(tmp_path / "a3"), gather_out=str(tmp_path / "g3.json"),
                               launch=three, **kw)
    strip = lambda a: {k: v for k, v in a.items() if k != "wall_s"}
    assert [strip(a) for a in got["answers"]] == [strip(a) for a in one["answers"]]
    # two of a task's three images at once, in processes of their own (sharing its GPU where it has one)
    shared = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s2"), images_per_task=3, answers_at_once=2,
                            cpus_per_task=2)
    got = answers.support_stage(answers_dir=str(tmp_path / "a2"), gather_out=str(tmp_path / "g2.json"),
                               launch=shared, **kw)
    assert [strip(a) for a in got["answers"]] == [strip(a) for a in one["answers"]]
    # image 1 raises inside the first task (images 0, 1, 2): 0 and 2 are still answered and kept
    real = answers.answer_task

    def flaky(**u):
        if u["test_index"] == 1:
            raise ValueError("disk on fire")
        return real(**u)

    monkeypatch.setattr(answers, "answer_task", flaky)
    with pytest.raises(SimattrError, match=r"test image 1: ValueError: disk on fire"):
        answers.support_stage(answers_dir=str(tmp_path / "af"), gather_out=str(tmp_path / "gf.json"),
                             launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "sf"), images_per_task=3),
                             **kw)
    assert sorted(p.name for p in (tmp_path / "af").glob("*.json")) == ["0.json", "2.json", "3.json"]


def test_search_reports_zero_when_the_image_flips_without_any_change():
    calls = []

    def always(k):
        calls.append(k)
        return Probe(k=k, accuracy=0.0, n_models=3, flipped=True)

    found, probes = support.search(always, 64, 6)
    assert found == 0 and calls == [64, 0] and [p.k for p in probes] == [64, 0]
    found, probes = support.search(oracle(9), 64, 6)
    assert found == 9 and [p.k for p in probes][:2] == [64, 0]
    found, probes = support.search(oracle(10**6), 64, 6)
    assert found is None and [p.k for p in probes] == [64]


def test_an_answer_is_recomputed_when_its_ranking_changes(tmp_path, support_inputs):
    from simattr import store

    queries, files = support_inputs
    unit = dict(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / "a" / "0.json"),
                test_index=0, metric="removal", settings=SUPPORT_SETTINGS)
    first = support.answer(**unit)
    assert support.expected_answer(**unit) == first
    sc = store.read_scores(files[0])
    store.write_scores(files[0], test_indices=sc["test_indices"], train_indices=sc["train_indices"],
                       scores=-sc["scores"], topk=sc["topk"], attrs=sc["attrs"])       # the reverse ranking
    assert support.expected_answer(**unit) is None
    second = support.answer(**unit)
    assert second["settings_hash"] != first["settings_hash"]


def test_threshold_of_one_is_refused():
    from simattr.errors import SimattrError

    X, y = toy_blobs()
    with pytest.raises(SimattrError, match="threshold"):
        support.make_probe(X_train=X, y_train=y, x_query=X[0], label=0, ranking=np.arange(10), metric="removal",
                           flip_class=None, n_classes=3, recipe=models.Recipe.of(), seeds=3, threshold=1.0,
                           early_stop=True, dataset="toy", test_index=0)


@pytest.mark.parametrize("engine", ["bisection", "adaptive"])
def test_a_task_killed_midway_resumes_from_its_journal_without_training_a_model_twice(engine, tmp_path, monkeypatch,
                                                                                     support_inputs):
    import json

    queries, files = support_inputs
    settings = SUPPORT_SETTINGS if engine == "bisection" else ADAPTIVE
    unit = dict(queries_path=queries, scores_path=files[0], test_index=0, metric="removal", settings=settings)
    clean = support.answer(out_path=str(tmp_path / "clean" / "0.json"), **unit)
    assert clean["trainings"] > 4

    real = models.train_predict
    calls = {"n": 0}

    def dies_on_the_fourth_call(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    out = tmp_path / "crash" / "0.json"
    monkeypatch.setattr(models, "train_predict", dies_on_the_fourth_call)
    with pytest.raises(KeyboardInterrupt):
        support.answer(out_path=str(out), **unit)
    assert not out.exists()
    journal = support.journal_path(out)
    done_before = len(journal.read_text().splitlines())
    assert done_before >= 3
    with journal.open("a") as f:
        f.write('{"identity": "cut by the cr')                    # a torn last line is ignored
    monkeypatch.setattr(models, "train_predict", real)
    resumed = support.answer(out_path=str(out), **unit)
    strip = lambda a: {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}
    assert strip(resumed) == strip(clean)
    assert resumed["models_reused"] == done_before
    entries = [json.loads(ln) for ln in journal.read_text().splitlines()]
    keys = [(e["k"], e["seed_index"]) for e in entries]
    assert len(keys) == len(set(keys)) == clean["trainings"]       # no model trained twice


ADAPTIVE = {**{k: v for k, v in SUPPORT_SETTINGS.items() if k not in ("bisection_steps", "seeds", "early_stop",
                                                                 "monotone_checks")},
            "engine": "adaptive", "seeds_min": 3, "seeds_max": 7, "max_models": 24, "confidence": 0.9}


def test_seed_set_changes_every_model_seed_and_nothing_else(tmp_path, monkeypatch, support_inputs):
    assert support.model_seed("toy", 3, 5, 1) == support.model_seed("toy", 3, 5, 1, seed_set=0)
    queries, files = support_inputs
    seen = {}
    real = models.train_predict

    def spy(X, y, Xq, **kw):
        seen.setdefault(current[0], []).append((len(y), tuple(kw["seeds"])))
        return real(X, y, Xq, **kw)

    monkeypatch.setattr(models, "train_predict", spy)
    answers = {}
    for s in (0, 1):
        current = [s]
        answers[s] = support.answer(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / f"{s}.json"),
                                    test_index=0, metric="removal", settings={**ADAPTIVE, "seed_set": s})
    seeds = {s: {x for _, ss in seen[s] for x in ss} for s in (0, 1)}
    assert seeds[0] and seeds[1] and not seeds[0] & seeds[1]           # every model seed differs
    same = ("label", "flip_class", "k_max", "test_index", "metric", "threshold")
    assert all(answers[0][k] == answers[1][k] for k in same)            # the question is the same
    assert answers[0]["seed_set"] == 0 and answers[1]["seed_set"] == 1
    assert answers[0]["settings_hash"] != answers[1]["settings_hash"]   # part of the answer's identity
    # seed set 0 answers k = 0 with the full-data models; another seed set trains its own there, if it needs k = 0
    k0 = {s: next((p for p in answers[s]["curve"] if p["k"] == 0), None) for s in (0, 1)}
    assert k0[0]["full_data_models"] == k0[0]["n_models"] and (k0[1] is None or "full_data_models" not in k0[1])


def test_an_adaptive_answer_records_its_curve_interval_and_both_readings(tmp_path, support_inputs):
    queries, files = support_inputs
    a = support.answer(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / "0.json"), test_index=0,
                       metric="removal", settings=ADAPTIVE)
    assert a["engine"] == "adaptive" and a["trainings"] <= ADAPTIVE["max_models"]
    assert a["support"] == a["support_fitted"]
    ks = [p["k"] for p in a["curve"]]
    assert ks == sorted(ks) and sum(p["n_models"] - p.get("full_data_models", 0) for p in a["curve"]) == a["trainings"]
    fitted = [p["fitted"] for p in a["curve"]]
    assert all(x >= y - 1e-9 for x, y in zip(fitted, fitted[1:]))        # non-increasing
    lo, hi = a["support_ci90"]
    lo95, hi95 = a["support_ci95"]
    if a["support"] is not None:
        assert lo <= a["support"] and (hi is None or a["support"] <= hi)
    assert lo95 <= lo and (hi95 is None or (hi is not None and hi <= hi95))
    assert all(3 <= p["n_models"] <= 7 for p in a["probes"][:-1])


@pytest.mark.parametrize("change, message", [
    ({"seed_set": -1}, "support.seed_set"), ({"seeds_min": 0}, "support.seeds_min"),
    ({"seeds_min": 5, "seeds_max": 3}, "support.seeds_max"), ({"max_models": 2}, "support.max_models"),
    ({"threshold": 1.0}, "support.threshold"), ({"threshold": -0.1}, "support.threshold"),
    ({"seeds": 0}, "support.seeds"), ({"confidence": 0.4}, "support.confidence"), ({"replicates": 0}, "support.replicates"),
    ({"engine": "bisect"}, "support.engine")])
def test_bad_support_settings_are_one_line_config_errors(change, message):
    from pathlib import Path

    from simattr import config
    from simattr.errors import SimattrError

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    with pytest.raises(SimattrError, match=message) as e:
        config.validate({"support": change}, schema)
    assert "\n" not in str(e.value)


def test_replicates_answer_every_image_under_each_seed_set_and_resume(tmp_path, support_inputs):
    from simattr import answers, store
    from simattr.launch import LaunchSettings

    queries, files = support_inputs
    kw = dict(queries=queries, score_files=files, answers_dir=str(tmp_path / "answers"), metric="removal",
              settings={**ADAPTIVE, "seed_set": 4}, progress=False,
              launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "submitit")))
    g = answers.support_stage(gather_out=str(tmp_path / "g.json"), replicates=2, **kw)
    assert g["seed_sets"] == [4, 5] and len(g["replicates"]) == 1
    assert [a["seed_set"] for a in g["answers"]] == [4] * 4 and [a["seed_set"] for a in g["replicates"][0]] == [5] * 4
    assert [a["test_index"] for a in g["replicates"][0]] == [0, 1, 2, 3]
    for t in range(4):
        assert store.read_json(store.answer_path(tmp_path / "answers", t, 1)) == g["replicates"][0][t]
    # one replicate alone: the first seed set's answers are kept, not recomputed
    again = answers.support_stage(gather_out=str(tmp_path / "g1.json"), replicates=1, **kw)
    assert again["answers"] == g["answers"] and "replicates" not in again
