"""simattr.support.answer: one answer's settings, identity, resume and figures (through stage.answer, which reads
the answer's files)."""
import json
import pickle
from pathlib import Path

import pytest

from simattr import config, models, store
from simattr.errors import SimattrError
from simattr.support.answer import Settings, journal_path
from simattr.support.bank import model_seed
from simattr.support.stage import answer, expected_answer

from datafiles import SUPPORT_SETTINGS

BISECTION = Settings.from_settings(SUPPORT_SETTINGS)
ADAPTIVE_KEYS = {**{k: v for k, v in SUPPORT_SETTINGS.items() if k not in ("bisection_steps", "seeds", "early_stop",
                                                                      "monotone_checks")},
                 "engine": "adaptive", "seeds_min": 3, "seeds_max": 7, "max_models": 24, "confidence": 0.9}
ADAPTIVE = Settings.from_settings(ADAPTIVE_KEYS)


def test_an_answer_is_recomputed_when_its_ranking_changes(tmp_path, support_inputs):
    queries, files = support_inputs
    unit = dict(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / "a" / "0.json"),
                test_index=0, metric="removal", settings=BISECTION)
    first = answer(**unit)
    assert expected_answer(**unit) == first
    sc = store.read_scores(files[0])
    store.write_scores(files[0], test_indices=sc["test_indices"], train_indices=sc["train_indices"],
                       scores=-sc["scores"], topk=sc["topk"], attrs=sc["attrs"])       # the reverse ranking
    assert expected_answer(**unit) is None
    second = answer(**unit)
    assert second["settings_hash"] != first["settings_hash"]


@pytest.mark.parametrize("engine", ["bisection", "adaptive"])
def test_a_task_killed_midway_resumes_from_its_journal_without_training_a_model_twice(engine, tmp_path, monkeypatch,
                                                                                     support_inputs):
    queries, files = support_inputs
    settings = BISECTION if engine == "bisection" else ADAPTIVE
    unit = dict(queries_path=queries, scores_path=files[0], test_index=0, metric="removal", settings=settings)
    clean = answer(out_path=str(tmp_path / "clean" / "0.json"), **unit)
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
        answer(out_path=str(out), **unit)
    assert not out.exists()
    journal = journal_path(out)
    done_before = len(journal.read_text().splitlines())
    assert done_before >= 3
    with journal.open("a") as f:
        f.write('{"identity": "cut by the cr')                    # a torn last line is ignored
    monkeypatch.setattr(models, "train_predict", real)
    resumed = answer(out_path=str(out), **unit)
    strip = lambda a: {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}
    assert strip(resumed) == strip(clean)
    assert resumed["models_reused"] == done_before
    entries = [json.loads(ln) for ln in journal.read_text().splitlines()]
    keys = [(e["k"], e["seed_index"]) for e in entries]
    assert len(keys) == len(set(keys)) == clean["trainings"]       # no model trained twice


def test_seed_set_changes_every_model_seed_and_nothing_else(tmp_path, monkeypatch, support_inputs):
    assert model_seed("toy", 3, 5, 1) == model_seed("toy", 3, 5, 1, seed_set=0)
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
        answers[s] = answer(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / f"{s}.json"),
                            test_index=0, metric="removal", settings=Settings.from_settings({**ADAPTIVE_KEYS,
                                                                                             "seed_set": s}))
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
    a = answer(queries_path=queries, scores_path=files[0], out_path=str(tmp_path / "0.json"), test_index=0,
               metric="removal", settings=ADAPTIVE)
    assert a["engine"] == "adaptive" and a["trainings"] <= ADAPTIVE.max_models
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
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    with pytest.raises(SimattrError, match=message) as e:
        config.validate({"support": change}, schema)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------- Settings
@pytest.mark.parametrize("keys, change, message", [
    (SUPPORT_SETTINGS, {"seeds": "3"}, r"^support\.seeds must be an integer \(got '3'\)$"),
    (SUPPORT_SETTINGS, {"k_max": 40.0}, r"^support\.k_max must be an integer"),
    (SUPPORT_SETTINGS, {"early_stop": 1}, r"^support\.early_stop must be true or false"),
    (SUPPORT_SETTINGS, {"monotone_checks": True}, r"^support\.monotone_checks must be an integer"),
    (SUPPORT_SETTINGS, {"threshold": "0.5"}, r"^support\.threshold must be a number"),
    (SUPPORT_SETTINGS, {"seeds": 0}, r"^support\.seeds must be >= 1 \(got 0\)$"),
    (SUPPORT_SETTINGS, {"threshold": 1.0}, r"^support\.threshold must be in \[0, 1\)"),
    (ADAPTIVE_KEYS, {"max_models": 2}, r"support\.max_models': 2 is below support\.seeds_min"),
    (ADAPTIVE_KEYS, {"confidence": 0.5}, r"^support\.confidence must be in \(0\.5, 1\)"),
    (SUPPORT_SETTINGS, {"model": {"name": "mlp"}}, r"^support model: lacks"),
    (SUPPORT_SETTINGS, {"seeds_min": 3}, r"^support: has unknown keys seeds_min$"),
])
def test_settings_are_typed_and_checked_once_as_they_are_built(keys, change, message):
    with pytest.raises(SimattrError, match=message) as e:
        Settings.from_settings({**keys, **change})
    assert "\n" not in str(e.value)


def test_settings_keep_their_identity_through_json_and_a_pickle_with_their_recipe():
    d = json.loads(json.dumps({**SUPPORT_SETTINGS, "threshold": 0}))     # a whole-number float, as JSON writes it
    s = Settings.from_settings(d)
    assert s.threshold == 0.0 and isinstance(s.threshold, float)
    assert s.identity() == {**SUPPORT_SETTINGS, "threshold": 0.0} and list(s.identity()) == list(Settings.FIELDS[
        "bisection"])
    assert s.recipe == models.Recipe.from_settings(SUPPORT_SETTINGS["model"]) and s.model is d["model"]
    again = pickle.loads(pickle.dumps(s))                                 # as it travels into a task
    assert again == s and again.recipe == s.recipe and again.identity() == s.identity()
    # from a section holding more (the other engine's keys, ...): the keys of its engine only
    wide = Settings.from_config({**ADAPTIVE_KEYS, **SUPPORT_SETTINGS, "replicates": 2})
    assert wide.identity() == SUPPORT_SETTINGS and wide.seeds_min is None
