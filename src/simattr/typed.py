"""Typed settings: a job's settings object checked key by key, each error one line naming the key.

`Named` is the shape of every settings object whose one field says which of the others it reads
(datasets.Spec by `name`, models.Recipe by `name`, support.answer.Settings by `engine`); `typed_fields` builds a
dataclass's fields from a dict with exactly its keys. Nothing here knows a default: `Named.of` asks the schema
(config.defaults).
"""
from __future__ import annotations

import json
from typing import ClassVar

import yaml

from . import config as sconfig
from .errors import SimattrError


def parse_json(text: str, where: str) -> dict:
    """A JSON object from text; one line naming `where` when it is not one."""
    try:
        s = json.loads(text)
    except json.JSONDecodeError as e:
        raise SimattrError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(s, dict):
        raise SimattrError(f"{where}: expected a JSON object, got {type(s).__name__}")
    return s


def key_values(items: list[str], where: str) -> dict:
    """KEY=VALUE words as a dict, each value read as YAML (numbers, true/false; an empty value is None)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SimattrError(f"{where}: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else None
    return out


def check_keys(expected, got, where: str) -> None:
    """One line naming the keys missing from `got` and those it should not have."""
    missing, unknown = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unknown:
        raise SimattrError(f"{where}: " + "; ".join(x for x in (
            f"lacks {', '.join(missing)}" if missing else "",
            f"has unknown keys {', '.join(unknown)}" if unknown else "") if x))


def typed_fields(cls, d: dict, keys, where: str) -> dict:
    """`d`'s entries for exactly `keys` (the other fields of dataclass `cls` None), an int given for a float
    field made a float (as argparse made it before settings travelled as JSON)."""
    check_keys(keys, d, where)
    out = {}
    for k, f in cls.__dataclass_fields__.items():
        v = d.get(k)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if k in keys and isinstance(v, int) and not isinstance(v, bool) and kind.startswith("float"):
            v = float(v)
        out[k] = v
    return out


def named_fields(cls, d: dict, fields_by_name: dict, what: str, where: str, key: str = "name") -> dict:
    """typed_fields for settings whose `key` field (name, engine) says which fields they read: one line for an
    unknown one."""
    if not isinstance(d, dict) or d.get(key) not in fields_by_name:
        got = d.get(key) if isinstance(d, dict) else d
        named = what if key == "name" else f"{what} {key}"          # "dataset", "model", "support engine"
        raise SimattrError(f"{where}: unknown {named} {got!r}; valid: {', '.join(fields_by_name)}")
    return typed_fields(cls, d, fields_by_name[d[key]], where)


class Named:
    """A typed settings object whose KEY field (`name`; support.answer.Settings: `engine`) picks the fields it reads
    (datasets.Spec, models.Recipe, support.answer.Settings): FIELDS maps each value to them (the fields it does not read
    are None); WHAT is its config section."""
    FIELDS: ClassVar[dict[str, tuple[str, ...]]]
    WHAT: ClassVar[str]
    KEY: ClassVar[str] = "name"

    @classmethod
    def from_settings(cls, d: dict, where: str | None = None):
        """From exactly the fields it reads (identity()); a missing or extra one is one line naming it."""
        return cls(**named_fields(cls, d, cls.FIELDS, cls.WHAT, where or cls.WHAT, cls.KEY))

    @classmethod
    def from_config(cls, section: dict):
        """From its config section (validated, or any mapping holding at least its fields): the fields it
        reads."""
        return cls.from_settings({k: section.get(k) for k in cls.FIELDS.get(section.get(cls.KEY), (cls.KEY,))
                                  if k in section or k == cls.KEY})

    @classmethod
    def of(cls, **fields):
        """The schema's default with `fields` changed (for hand use and tests)."""
        return cls.from_config({**sconfig.defaults()[cls.WHAT], **fields})

    def identity(self) -> dict:
        """The fields it reads (what outputs made from it hash)."""
        return {k: getattr(self, k) for k in self.FIELDS[getattr(self, self.KEY)]}
