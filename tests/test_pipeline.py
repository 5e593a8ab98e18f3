"""simattr.pipeline: the run's jobs walked once, and the report's lists read off the walk (no Snakemake here;
tests/test_workflow.py checks the walk against a dry run's DAG)."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from simattr import pipeline, store

SRC = Path(pipeline.__file__)


def facts(methods=(("simclr", "esvm"), ("pixels", "knn_l2"), ("model", "trak"), ("model", "datamodels")), *,
          lds=True, classes=3, sidecars=None) -> pipeline.Facts:
    """A small run: 3 classes, train 2 shards and test 1, datamodels 2 subset shards and lds 1."""
    return pipeline.Facts(
        methods=tuple(methods), n_classes=classes, shards={"train": 2, "test": 1},
        feature_encoders=("pixels", "simclr", "supervised", "resnet"),
        state_rules={"simclr": "train_encoder", "supervised": "train_encoder", "resnet": "import_resnet"},
        subset_shards={"datamodels": 2, "lds": 1}, trained_models={"datamodels": 60, "lds": 20, "trak": 2},
        metrics=("removal", "mislabel"), lds=lds, sidecars=sidecars or {})


def listed(jobs) -> list[tuple]:
    return [(j.stage, j.rule, j.kw) for j in jobs]


def test_every_job_once_in_the_order_of_the_reports_benchmark_list():
    got = listed(pipeline.jobs(facts(methods=(("simclr", "esvm"), ("model", "trak")), classes=2)))
    embed = [("embed", "train_encoder", {"encoder": "simclr"}),
             ("embed", "embed_index", {"encoder": "simclr", "split": "train"}),
             ("embed", "embed_shard", {"encoder": "simclr", "split": "train", "shard": "00000"}),
             ("embed", "embed_shard", {"encoder": "simclr", "split": "train", "shard": "00001"}),
             ("embed", "embed_index", {"encoder": "simclr", "split": "test"}),
             ("embed", "embed_shard", {"encoder": "simclr", "split": "test", "shard": "00000"})]
    trak = [("trak", "trak_checkpoints", {}), ("trak", "trak", {})]
    lds_subsets = [("lds", "subsets", {"purpose": "lds", "shard": "00000"})]

    def method(e, r):
        return ([("lds", "lds", {"encoder": e, "ranker": r})]
                + [("score", "score", {"encoder": e, "ranker": r, "cls": c}) for c in range(2)]
                + [("support", "support", {"encoder": e, "ranker": r, "metric": m}) for m in ("removal", "mislabel")])
    assert got == embed + trak + lds_subsets + method("simclr", "esvm") + method("model", "trak") + \
        [("support", "queries", {})]


def test_no_job_twice_and_the_counts_a_dry_run_makes():
    f = facts()
    jobs = list(pipeline.jobs(f))
    assert len(set(jobs)) == len(jobs)
    counts = Counter(j.rule for j in jobs)
    assert counts == {"train_encoder": 1, "embed_index": 2 * 2, "embed_shard": 2 * 3, "trak_checkpoints": 1,
                      "trak": 1, "subsets": 2 + 1, "lds": 4, "score": 4 * 3, "support": 4 * 2, "queries": 1}
    # the stages come in the order of the report's wall-seconds table
    firsts = list(dict.fromkeys(j.stage for j in jobs))
    assert firsts == [s for s in pipeline.STAGES if s in firsts]


def test_an_encoder_shared_by_methods_is_walked_once_and_counts_for_each():
    f = facts(methods=(("simclr", "esvm"), ("simclr", "knn_l2"), ("pixels", "random")))
    train = [j for j in pipeline.jobs(f) if j.rule == "train_encoder"]
    assert len(train) == 1 and train[0].methods == ("simclr/esvm", "simclr/knn_l2")
    costs = list(pipeline.method_cost_items(f))
    for m in ("simclr/esvm", "simclr/knn_l2"):
        assert (m, "job", train[0]) in costs
        assert (m, "stored", (store.ENCODER_STATE, (("encoder", "simclr"),))) in costs
    assert not [c for c in costs if c[0] == "pixels/random" and c[1] == "job" and c[2].rule == "train_encoder"]


def test_a_methods_cost_its_features_then_scores_then_the_models_its_ranker_trained():
    costs = [(k, v.rule if k == "job" else v) for m, k, v in pipeline.method_cost_items(facts(classes=1))
             if m == "model/trak"]
    assert costs == [("job", "score"), ("stored", (store.SCORES_DIR, (("encoder", "model"), ("ranker", "trak")))),
                     ("job", "trak_checkpoints"), ("job", "trak"), ("stored", (store.TRAK_CHECKPOINTS, ())),
                     ("stored", (store.TRAK_SCORES, ())), ("models", 2)]
    dm = [(k, v.rule if k == "job" else v) for m, k, v in pipeline.method_cost_items(facts(classes=1))
          if m == "model/datamodels"]
    assert dm[-4:] == [("job", "subsets"), ("job", "subsets"),
                       ("stored", (store.SUBSETS_DIR, (("purpose", "datamodels"),))), ("models", 60)]
    # jobs after the scores (support, LDS, queries) and the LDS subset models are no method's cost
    rules = {v.rule for _, k, v in pipeline.method_cost_items(facts()) if k == "job"}
    assert rules == {"train_encoder", "embed_index", "embed_shard", "score", "trak_checkpoints", "trak", "subsets"}
    assert not [v for _, k, v in pipeline.method_cost_items(facts()) if k == "job" and v.kw.get("purpose") == "lds"]


def test_methods_listed_in_config_order():
    f = facts(methods=(("pixels", "knn_l2"), ("simclr", "esvm")))
    assert list(dict.fromkeys(m for m, _, _ in pipeline.method_cost_items(f))) == ["pixels/knn_l2", "simclr/esvm"]
    # while the embeddings come by encoder name
    assert [j.kw["encoder"] for j in pipeline.jobs(f) if j.rule == "embed_index"] == ["pixels"] * 2 + ["simclr"] * 2


def test_lds_off_drops_the_lds_jobs_and_their_subset_models():
    jobs = list(pipeline.jobs(facts(lds=False)))
    assert not [j for j in jobs if j.rule == "lds" or j.kw.get("purpose") == "lds"]
    assert [j for j in jobs if j.kw.get("purpose") == "datamodels"]


def test_subset_models_and_trak_only_for_the_methods_that_need_them():
    jobs = list(pipeline.jobs(facts(methods=(("pixels", "random"),), lds=False)))
    assert {j.rule for j in jobs} == {"embed_index", "embed_shard", "score", "support", "queries"}
    # LDS trains its subset models whatever the methods
    assert {j.kw.get("purpose") for j in pipeline.jobs(facts(methods=(("pixels", "random"),)))} >= {"lds"}


def test_an_external_method_is_its_scores_and_its_sidecar_and_its_name_pulls_no_model_jobs():
    """An outside method named like a model-based ranker (trak) or a purpose (lds) is still only its scores."""
    f = facts(methods=(("external", "trak"), ("external", "lds"), ("pixels", "knn_l2")), lds=False,
              sidecars={"external/trak": "outside/trak.cost.json"})
    jobs = list(pipeline.jobs(f))
    assert not [j for j in jobs if j.rule in ("trak", "trak_checkpoints", "subsets")]
    costs = [(k, v if k != "job" else v.rule) for m, k, v in pipeline.method_cost_items(f) if m == "external/trak"]
    assert costs == [("job", "score")] * 3 + [("stored", (store.SCORES_DIR, (("encoder", "external"),
                                                                           ("ranker", "trak")))),
                                              ("sidecar", "outside/trak.cost.json")]
    assert not [k for m, k, _ in pipeline.method_cost_items(f) if m == "external/lds" and k == "sidecar"]


def test_an_imported_encoders_state_job_is_its_own_rule():
    jobs = list(pipeline.jobs(facts(methods=(("resnet", "esvm"),))))
    assert jobs[0] == pipeline.Job("import_resnet", (("encoder", "resnet"),), "embed", ("resnet/esvm",))
    assert not [j for j in jobs if j.rule == "train_encoder"]


def test_the_module_is_light():
    """pipeline imports the standard library and simattr.config / store / errors only, and no torch or sklearn."""
    allowed = {"__future__", "dataclasses", "typing", "collections", "itertools", "functools"}
    for node in ast.walk(ast.parse(SRC.read_text())):
        if isinstance(node, ast.Import):
            assert {a.name.split(".")[0] for a in node.names} <= allowed, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.module in (None, "config", "store", "errors"), ast.dump(node)
                assert node.module or {a.name for a in node.names} <= {"config", "store", "errors"}, ast.dump(node)
            else:
                assert node.module.split(".")[0] in allowed, ast.dump(node)
    r = subprocess.run([sys.executable, "-c", "import sys, simattr.pipeline; "
                        "print(sorted(m for m in ('torch', 'sklearn', 'snakemake') if m in sys.modules))"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("lds", [True, False])
def test_each_job_in_exactly_one_step(lds):
    steps = list(pipeline.steps(facts(lds=lds)))
    jobs = [j for s in steps for j in s.jobs]
    assert jobs == list(pipeline.jobs(facts(lds=lds)))
    assert all(j.stage == s.stage and j.methods == s.methods for s in steps for j in s.jobs)
