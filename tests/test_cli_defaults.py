"""Every CLI flag that stands for a config key defaults to the schema's default (one place for each fact: a
command run by hand behaves as the workflow's default run)."""
import argparse
from pathlib import Path

import yaml

from simattr.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
# the config sections each command's flags come from (model and dataset flags: every command that has them)
SECTIONS = {"train-encoder": ["encoders"], "embed": ["embed", "encoders.resnet"], "score": ["score", "esvm"],
            "score-model": ["score", "datamodels"], "subsets": [], "trak-checkpoints": ["trak"],
            "trak": ["trak"], "lds": ["lds"], "queries": ["support"], "support": ["support", "launch"],
            "report": ["report"], "embed-index": []}


def leaves(schema: dict, path: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            out.update(leaves(sub, path + (key,)))
        elif "default" in sub:
            out[path + (key,)] = sub["default"]
    return out


LEAVES = leaves(SCHEMA)


def schema_key(command: str, dest: str) -> tuple | None:
    """The one config key a flag stands for: KEY or SECTION_KEY within the command's sections (and model,
    dataset); None where none or several fit."""
    sections = [tuple(s.split(".")) for s in SECTIONS[command]] + [("model",), ("dataset",)]
    found = {p for p in LEAVES for s in sections if p[:len(s)] == s and len(p) == len(s) + 1
             and dest in (p[-1], "_".join(p[-2:]))}
    return found.pop() if len(found) == 1 else None


def cli_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in sub.choices.items():
        for action in p._actions:
            if action.required or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
                continue
            key = schema_key(command, action.dest)
            if key is not None:
                yield command, action.option_strings[0], key, action.default


def test_every_flag_that_is_a_config_key_defaults_as_the_schema():
    checked = list(cli_defaults())
    wrong = [f"simattr {c} {flag}: {default!r}, schema {'.'.join(k)}: {LEAVES[k]!r}"
             for c, flag, k, default in checked if default != LEAVES[k]]
    assert len(checked) >= 30, checked                   # the matching finds the flags it should
    assert not wrong, "\n".join(wrong)
