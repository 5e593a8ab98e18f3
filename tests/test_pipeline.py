"""simattr.pipeline: the run's jobs walked once, and the report's lists read off the walk (no Snakemake here;
tests/test_workflow.py checks the walk against a dry run's DAG)."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from simattr import config, pipeline, store

SRC = Path(pipeline.__file__)


def facts(methods=(("simclr", "esvm"), ("pixels", "knn_l2"), ("model", "trak"), ("model", "datamodels")), *,
          lds=True, classes=3, sidecars=None) -> pipeline.Facts:
    """A small run: 3 classes, train 2 shards and test 1, datamodels 2 subset shards and lds 1."""
    return pipeline.Facts(
        methods=tuple(methods), n_classes=classes, shards={"train": 2, "test": 1},
        subset_shards={"datamodels": 2, "lds": 1}, trained_models={"datamodels": 60, "lds": 20, "trak": 2},
        metrics=("removal", "mislabel"), lds=lds, sidecars=sidecars or {})


def walk(f: pipeline.Facts) -> list[pipeline.Job]:
    """The run's jobs, as common.smk reads them off its one walk (STEPS)."""
    return list(pipeline.jobs(pipeline.steps(f)))


def cost_items(f: pipeline.Facts) -> list[tuple]:
    """The report's cost items, as common.smk reads them off its one walk (STEPS)."""
    return list(pipeline.method_cost_items(f.methods, list(pipeline.steps(f))))


def identity(j: pipeline.Job) -> tuple:
    """What names a job in the DAG (its rule and wildcard values; its methods are only whose cost it is)."""
    return (j.rule, j.fields)


def listed(jobs) -> list[tuple]:
    return [(j.stage, j.rule, j.kw) for j in jobs]


def test_every_job_once_in_the_order_of_the_reports_benchmark_list():
    got = listed(walk(facts(methods=(("simclr", "esvm"), ("model", "trak")), classes=2)))
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
    jobs = list(walk(f))
    assert len(set(jobs)) == len(jobs)
    # a job is its rule and wildcards: an encoder's jobs walked once per method that uses it would differ only in
    # `methods`, so compare what names them, with an encoder that two methods share
    assert len({identity(j) for j in jobs}) == len(jobs)
    shared = list(walk(facts(methods=(("simclr", "esvm"), ("simclr", "knn_l2"), ("pixels", "random")))))
    assert len({identity(j) for j in shared}) == len(shared)
    assert Counter(j.rule for j in shared)["embed_shard"] == 2 * 3
    counts = Counter(j.rule for j in jobs)
    assert counts == {"train_encoder": 1, "embed_index": 2 * 2, "embed_shard": 2 * 3, "trak_checkpoints": 1,
                      "trak": 1, "subsets": 2 + 1, "lds": 4, "score": 4 * 3, "support": 4 * 2, "queries": 1}
    # the stages come in the order of the report's wall-seconds table
    firsts = list(dict.fromkeys(j.stage for j in jobs))
    assert firsts == [s for s in pipeline.STAGES if s in firsts]
    assert firsts == list(pipeline.STAGES)             # facts() has every stage
    for other in (facts(lds=False), facts(methods=(("model", "datamodels"), ("pixels", "random"))),
                  facts(methods=(("external", "x"), ("model", "trak")), lds=False)):
        firsts = list(dict.fromkeys(j.stage for j in walk(other)))
        assert firsts == [s for s in pipeline.STAGES if s in firsts]


def test_an_encoder_shared_by_methods_is_walked_once_and_counts_for_each():
    f = facts(methods=(("simclr", "esvm"), ("simclr", "knn_l2"), ("pixels", "random")))
    train = [j for j in walk(f) if j.rule == "train_encoder"]
    assert len(train) == 1 and train[0].methods == ("simclr/esvm", "simclr/knn_l2")
    costs = list(cost_items(f))
    for m in ("simclr/esvm", "simclr/knn_l2"):
        assert (m, "job", train[0]) in costs
        assert (m, "stored", (store.ENCODER_STATE, (("encoder", "simclr"),))) in costs
    assert not [c for c in costs if c[0] == "pixels/random" and c[1] == "job" and c[2].rule == "train_encoder"]


def test_a_methods_cost_its_features_then_scores_then_the_models_its_ranker_trained():
    costs = [(k, v.rule if k == "job" else v) for m, k, v in cost_items(facts(classes=1))
             if m == "model/trak"]
    assert costs == [("job", "score"), ("stored", (store.SCORES_DIR, (("encoder", "model"), ("ranker", "trak")))),
                     ("job", "trak_checkpoints"), ("job", "trak"), ("stored", (store.TRAK_CHECKPOINTS, ())),
                     ("stored", (store.TRAK_SCORES, ())), ("models", 2)]
    dm = [(k, v.rule if k == "job" else v) for m, k, v in cost_items(facts(classes=1))
          if m == "model/datamodels"]
    assert dm[-4:] == [("job", "subsets"), ("job", "subsets"),
                       ("stored", (store.SUBSETS_DIR, (("purpose", "datamodels"),))), ("models", 60)]
    # jobs after the scores (support, LDS, queries) and the LDS subset models are no method's cost
    rules = {v.rule for _, k, v in cost_items(facts()) if k == "job"}
    assert rules == {"train_encoder", "embed_index", "embed_shard", "score", "trak_checkpoints", "trak", "subsets"}
    assert not [v for _, k, v in cost_items(facts()) if k == "job" and v.kw.get("purpose") == "lds"]


def test_methods_listed_in_config_order():
    f = facts(methods=(("pixels", "knn_l2"), ("simclr", "esvm")))
    assert list(dict.fromkeys(m for m, _, _ in cost_items(f))) == ["pixels/knn_l2", "simclr/esvm"]
    # while the embeddings come by encoder name
    assert [j.kw["encoder"] for j in walk(f) if j.rule == "embed_index"] == ["pixels"] * 2 + ["simclr"] * 2


def test_lds_off_drops_the_lds_jobs_and_their_subset_models():
    jobs = list(walk(facts(lds=False)))
    assert not [j for j in jobs if j.rule == "lds" or j.kw.get("purpose") == "lds"]
    assert [j for j in jobs if j.kw.get("purpose") == "datamodels"]


def test_subset_models_and_trak_only_for_the_methods_that_need_them():
    jobs = list(walk(facts(methods=(("pixels", "random"),), lds=False)))
    assert {j.rule for j in jobs} == {"embed_index", "embed_shard", "score", "support", "queries"}
    # LDS trains its subset models whatever the methods
    assert {j.kw.get("purpose") for j in walk(facts(methods=(("pixels", "random"),)))} >= {"lds"}


def test_an_external_method_is_its_scores_and_its_sidecar_and_its_name_pulls_no_model_jobs():
    """An outside method named like a model-based ranker (trak) or a purpose (lds) is still only its scores."""
    f = facts(methods=(("external", "trak"), ("external", "lds"), ("pixels", "knn_l2")), lds=False,
              sidecars={"external/trak": "outside/trak.cost.json"})
    jobs = list(walk(f))
    assert not [j for j in jobs if j.rule in ("trak", "trak_checkpoints", "subsets")]
    costs = [(k, v if k != "job" else v.rule) for m, k, v in cost_items(f) if m == "external/trak"]
    assert costs == [("job", "score")] * 3 + [("stored", (store.SCORES_DIR, (("encoder", "external"),
                                                                           ("ranker", "trak")))),
                                              ("sidecar", "outside/trak.cost.json")]
    assert not [k for m, k, _ in cost_items(f) if m == "external/lds" and k == "sidecar"]


def test_the_state_rules_are_configs_and_the_workflows():
    """Which rule makes an encoder's state comes from simattr.config's FEATURE_ENCODER_STATE (not from the
    workflow), and names a rule of workflow/rules/embed.smk."""
    assert pipeline.STATE_RULES == {"simclr": "train_encoder", "supervised": "train_encoder",
                                    "resnet": "import_resnet"}
    assert set(pipeline.STATE_RULES) == set(config.STATE_ENCODERS)
    assert {e for e, r in pipeline.STATE_RULES.items() if r == "train_encoder"} == set(config.TRAINED_ENCODERS)
    embed = (SRC.parents[2] / "workflow" / "rules" / "embed.smk").read_text()
    for rule in set(pipeline.STATE_RULES.values()):
        assert f"\nrule {rule}:\n" in embed, rule
    # an encoder without a state (pixels) is embedded with no state job before it
    jobs = walk(facts(methods=(("pixels", "esvm"),)))
    assert jobs[0].rule == "embed_index" and jobs[0].kw == {"encoder": "pixels", "split": "train"}


def test_an_imported_encoders_state_job_is_its_own_rule():
    jobs = list(walk(facts(methods=(("resnet", "esvm"),))))
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


@pytest.mark.parametrize("methods", [None, (("simclr", "esvm"), ("simclr", "knn_l2"), ("model", "trak"))],
                         ids=["default", "shared-encoder"])
@pytest.mark.parametrize("lds", [True, False])
def test_each_job_in_exactly_one_step(lds, methods):
    f = facts(methods, lds=lds) if methods else facts(lds=lds)
    steps = list(pipeline.steps(f))
    jobs = [j for s in steps for j in s.jobs]
    assert jobs == list(walk(f))
    assert all(j.stage == s.stage and j.methods == s.methods for s in steps for j in s.jobs)
    assert all(s.jobs for s in steps)
    # no job in two steps (a job is its rule and wildcards, whichever methods it counts for)
    assert len({identity(j) for j in jobs}) == len(jobs)


def test_the_cost_items_are_read_off_the_walk_given():
    """method_cost_items walks nothing itself: it reads the steps common.smk walked once (STEPS)."""
    f = facts()
    walked = list(pipeline.steps(f))
    assert list(pipeline.method_cost_items(f.methods, [])) == []
    embed = [s for s in walked if s.stage == "embed"]
    assert {v.rule for _, k, v in pipeline.method_cost_items(f.methods, embed) if k == "job"} == \
        {"train_encoder", "embed_index", "embed_shard"}


def test_an_outside_method_the_workflow_makes_adds_the_export_and_its_job_but_no_cost_item():
    """A made method (its `command`: rule outside_scores) needs the export once and its own job before its
    scores; both are in the report's benchmark list (stage score) but in no method's cost (its sidecar is)."""
    f = facts(methods=(("external", "peer"), ("external", "file"), ("pixels", "knn_l2")), lds=False,
              sidecars={"external/peer": "outside/peer.cost.json"})
    plain = walk(f)
    made = walk(dataclasses.replace(f, made=("peer",)))
    extra = [j for j in made if j not in plain]
    assert [(j.rule, j.kw, j.stage, j.methods) for j in extra] == [
        ("export", {}, "score", ()), ("outside_scores", {"name": "peer"}, "score", ())]
    assert made.index(extra[1]) < made.index(next(j for j in made if j.kw.get("ranker") == "peer"))
    f2 = dataclasses.replace(f, made=("peer",))
    assert [(k, v) for m, k, v in cost_items(f2) if m == "external/peer" and k != "job"] == \
        [(k, v) for m, k, v in cost_items(f) if m == "external/peer" and k != "job"]
    assert {v.rule for _, k, v in cost_items(f2) if k == "job"} == {"score", "embed_index", "embed_shard"}
