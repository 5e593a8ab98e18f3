from pathlib import Path

import pytest
import yaml

from simattr import backbones, config, datasets, encoders, launch, models, rankers
from simattr.errors import SimattrError
from simattr.support.answer import ENGINES as SUPPORT_ENGINES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_registries_and_schema_agree():
    schema = yaml.safe_load(SCHEMA.read_text())
    item = schema["properties"]["methods"]["items"]["properties"]
    assert tuple(item["encoder"]["enum"]) == config.ENCODERS
    assert tuple(item["ranker"]["enum"]) == config.RANKERS + (config.EXTERNAL_RANKER,)
    # the (queries, candidates) registry, the signed ESVM (labels too) and the model-based rankers
    assert set(config.RANKERS) == set(rankers.RANKERS) | {"esvm_signed"} | set(config.MODEL_RANKERS)
    # every other enum of the schema is a registry of the code's, in the same order
    p = schema["properties"]
    enc = p["encoders"]["properties"]
    pairs = [(p["dataset"]["properties"]["name"], datasets.NAMES), (p["dataset"]["properties"]["bad_images"],
             datasets.BAD_IMAGES), (p["model"]["properties"]["name"], models.MODELS),
             (p["support"]["properties"]["engine"], SUPPORT_ENGINES), (p["launch"]["properties"]["cluster"],
             launch.CLUSTERS), (p["support"]["properties"]["metrics"]["items"], config.METRICS),
             (enc["simclr"]["properties"]["arch"], encoders.SIMCLR_ARCHS)]
    for schema_entry, registry in pairs:
        assert tuple(schema_entry["enum"]) == tuple(registry), (schema_entry, registry)
    for key, registry in (("arch", backbones.ARCHS), ("layout", backbones.LAYOUTS), ("feature", backbones.FEATURES),
                          ("normalize", backbones.NORMALIZE)):
        assert set(enc["resnet"]["properties"][key]["enum"]) == set(registry), key


@pytest.mark.parametrize("method, ok", [({"encoder": "model", "ranker": "trak"}, True),
                                        ({"encoder": "model", "ranker": "datamodels"}, True),
                                        ({"encoder": "simclr", "ranker": "esvm_signed"}, True),
                                        ({"encoder": "simclr", "ranker": "trak"}, False),
                                        ({"encoder": "model", "ranker": "esvm"}, False)])
def test_model_based_rankers_go_with_encoder_model(method, ok):
    if ok:
        config.validate({"methods": [method]}, SCHEMA)
    else:
        with pytest.raises(SimattrError, match=f"ranker {method['ranker']} needs"):
            config.validate({"methods": [method]}, SCHEMA)


def _walk(node, where=""):
    if node.get("type") == "object" and "properties" in node:
        for k, sub in node["properties"].items():
            yield f"{where}.{k}".lstrip("."), sub
            yield from _walk(sub, f"{where}.{k}")


def test_every_schema_key_has_a_description_and_a_default():
    for key, sub in _walk(yaml.safe_load(SCHEMA.read_text())):
        assert "default" in sub, key
        if sub.get("type") != "object":
            assert sub.get("description"), key


def test_an_empty_config_is_the_documented_default():
    empty = config.validate({}, SCHEMA)
    default = config.load(REPO / "config" / "config.yaml", SCHEMA)
    assert empty == default


@pytest.mark.parametrize("bad, message", [
    ({"esvm": {"C": 0}}, "config key 'esvm.C': expected a value > 0, got 0"),
    ({"support": {"n_test": 2.5}}, "config key 'support.n_test': expected integer, got 2.5"),
    ({"dataset": {"name": "cifar"}}, "config key 'dataset.name': got 'cifar', valid values: digits"),
    ({"launch": {"cluster": "pbs"}}, "valid values: local, debug, slurm"),
])
def test_bad_values_name_the_key_and_what_was_expected(bad, message):
    with pytest.raises(SimattrError) as e:
        config.validate(bad, SCHEMA)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(SimattrError, match="config file not found"):
        config.load(tmp_path / "none.yaml", SCHEMA)
    (tmp_path / "bad.yaml").write_text("esvm: [unclosed")
    with pytest.raises(SimattrError, match="bad.yaml: not valid YAML"):
        config.load(tmp_path / "bad.yaml", SCHEMA)


def test_the_config_readme_states_the_schemas_defaults():
    """config/README.md's tables are written for readers, the schema is the source: every key the schema has a
    default for is in a table, with that default."""
    schema = yaml.safe_load(SCHEMA.read_text())

    def leaves(node, prefix=""):
        for key, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                yield from leaves(sub, f"{prefix}{key}.")
            elif "default" in sub:
                yield f"{prefix}{key}", sub["default"]

    rows = {}
    for line in (REPO / "config" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows[cells[0].strip("`")] = yaml.safe_load(cells[1].strip("`"))
    expected = dict(leaves(schema))
    assert len(expected) > 80
    missing = sorted(set(expected) - set(rows) - {"methods"})
    wrong = {k: (rows[k], v) for k, v in expected.items() if k in rows and rows[k] != v}
    assert not missing and not wrong, (missing, wrong)
