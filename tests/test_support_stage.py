"""simattr.support.stage: the support stage's array tasks, resume, replicates and gather."""
import pytest

from simattr import store
from simattr.errors import SimattrError
from simattr.launch import LaunchSettings
from simattr.support import stage
from simattr.support.answer import Settings

from datafiles import SUPPORT_SETTINGS

SETTINGS = Settings.from_settings(SUPPORT_SETTINGS)
ADAPTIVE = Settings.from_settings({
    **{k: v for k, v in SUPPORT_SETTINGS.items() if k not in ("bisection_steps", "seeds", "early_stop",
                                                              "monotone_checks")},
    "engine": "adaptive", "seeds_min": 3, "seeds_max": 7, "max_models": 24, "confidence": 0.9})


@pytest.mark.parametrize("metric", ["removal", "mislabel"])
def test_support_stage_answers_every_image_and_resumes_without_retraining(metric, tmp_path, support_inputs):
    queries, files = support_inputs
    launch = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "submitit"))
    kw = dict(queries=queries, score_files=files, answers_dir=str(tmp_path / "answers"), metric=metric,
              settings=SETTINGS, launch=launch, progress=False, replicates=1)
    g1 = stage.support_stage(gather_out=str(tmp_path / "g1.json"), **kw)
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
    g2 = stage.support_stage(gather_out=str(tmp_path / "g2.json"), **kw)
    assert g2["answers"][1]["wall_s"] == -1.0
    strip = lambda a: {k: v for k, v in a.items() if k not in ("wall_s", "models_reused")}
    assert strip(g2["answers"][2]) == strip(g1["answers"][2])
    assert g2["answers"][2]["models_reused"] == g2["answers"][2]["trainings"]   # all from its journal
    # other settings: recomputed, not reused
    g3 = stage.support_stage(gather_out=str(tmp_path / "g3.json"),
                             **{**kw, "settings": Settings.from_settings({**SUPPORT_SETTINGS, "seeds": 5})})
    assert g3["answers"][1]["wall_s"] != -1.0


def test_several_images_per_task_give_the_same_answers_and_isolate_a_failing_image(tmp_path, monkeypatch,
                                                                                   support_inputs):
    queries, files = support_inputs
    kw = dict(queries=queries, score_files=files, metric="removal", settings=SETTINGS, progress=False,
              replicates=1)
    one = stage.support_stage(answers_dir=str(tmp_path / "a1"), gather_out=str(tmp_path / "g1.json"),
                              launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s1"),
                                                       images_per_task=1), **kw)
    three = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s3"), images_per_task=3)
    got = stage.support_stage(answers_dir=str(tmp_path / "a3"), gather_out=str(tmp_path / "g3.json"),
                              launch=three, **kw)
    strip = lambda a: {k: v for k, v in a.items() if k != "wall_s"}
    assert [strip(a) for a in got["answers"]] == [strip(a) for a in one["answers"]]
    # two of a task's three images at once, in processes of their own (sharing its GPU where it has one)
    shared = LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s2"), images_per_task=3, answers_at_once=2,
                               cpus_per_task=2)
    got = stage.support_stage(answers_dir=str(tmp_path / "a2"), gather_out=str(tmp_path / "g2.json"),
                              launch=shared, **kw)
    assert [strip(a) for a in got["answers"]] == [strip(a) for a in one["answers"]]
    # image 1 raises inside the first task (images 0, 1, 2): 0 and 2 are still answered and kept
    real = stage.answer_task

    def flaky(**u):
        if u["test_index"] == 1:
            raise ValueError("disk on fire")
        return real(**u)

    monkeypatch.setattr(stage, "answer_task", flaky)
    with pytest.raises(SimattrError, match=r"test image 1: ValueError: disk on fire"):
        stage.support_stage(answers_dir=str(tmp_path / "af"), gather_out=str(tmp_path / "gf.json"),
                            launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "sf"), images_per_task=3),
                            **kw)
    assert sorted(p.name for p in (tmp_path / "af").glob("*.json")) == ["0.json", "2.json", "3.json"]


def test_replicates_answer_every_image_under_each_seed_set_and_resume(tmp_path, support_inputs):
    queries, files = support_inputs
    kw = dict(queries=queries, score_files=files, answers_dir=str(tmp_path / "answers"), metric="removal",
              settings=Settings.from_settings({**ADAPTIVE.identity(), "seed_set": 4}), progress=False,
              launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "submitit")))
    g = stage.support_stage(gather_out=str(tmp_path / "g.json"), replicates=2, **kw)
    assert g["seed_sets"] == [4, 5] and len(g["replicates"]) == 1
    assert [a["seed_set"] for a in g["answers"]] == [4] * 4 and [a["seed_set"] for a in g["replicates"][0]] == [5] * 4
    assert [a["test_index"] for a in g["replicates"][0]] == [0, 1, 2, 3]
    for t in range(4):
        assert store.read_json(store.answer_path(tmp_path / "answers", t, 1)) == g["replicates"][0][t]
    # one replicate alone: the first seed set's answers are kept, not recomputed
    again = stage.support_stage(gather_out=str(tmp_path / "g1.json"), replicates=1, **kw)
    assert again["answers"] == g["answers"] and "replicates" not in again


@pytest.mark.parametrize("replicates", [1, 2])
def test_the_stage_hands_its_settings_object_to_every_answer_without_rebuilding_it(replicates, tmp_path, monkeypatch,
                                                                                   support_inputs):
    """The job's Settings go as they are to each task's units and to compute; only a further replicate seed set
    makes one more (the same settings with its seed_set)."""
    queries, files = support_inputs
    built, seen = [], []
    real_post, real_compute = Settings.__post_init__, stage.compute

    def counted(self):
        built.append(self.seed_set)
        real_post(self)

    def spy(inputs, **kw):
        seen.append(kw["settings"])
        return real_compute(inputs, **kw)

    monkeypatch.setattr(Settings, "__post_init__", counted)
    monkeypatch.setattr(stage, "compute", spy)
    stage.support_stage(queries=queries, score_files=files, answers_dir=str(tmp_path / "answers"),
                        gather_out=str(tmp_path / "g.json"), metric="removal", settings=SETTINGS, progress=False,
                        launch=LaunchSettings.of(cluster="debug", folder=str(tmp_path / "s")), replicates=replicates)
    assert built == list(range(1, replicates))
    assert len(seen) == 4 * replicates and all(s is SETTINGS for s in seen[:4])
