"""Settings declared once: a dataclass per component whose fields carry type, default, range and meaning.

    @dataclass(frozen=True, kw_only=True)
    class Settings:
        epochs: int = setting(meaning="number of epochs to train", minimum=1)
        amp: str | None = setting(None, "mixed precision", choices=("bf16", "fp16"))

        @classmethod
        def rules(cls, values: dict) -> list[str]: ...   # problems across keys (optional)

The type is the field's annotation; a field without a default is required. From the one declaration come the
config schema section (`schema_rows`), the range checks (`range_problems`), the rules across keys (`rules`,
run by validation with every other check), the defaults filled into a config (through the schema) and the
settings object itself (`from_section`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable

from utils.json_types import NONE, default_of, json_types, type_ok

REQUIRED = object()  # the default of a key that has none


class Section(dict):
    """A config section: {key: (types, default, meaning) or a nested Section}. optional: absent and null mean
    none (then its default is null); meaning: one line for the section itself; rules(values) -> the problems
    across its keys, run with every other check."""

    def __init__(self, rows: dict | None = None, *, optional: bool = False, meaning: str = "",
                 rules: Callable[[dict], list[str]] | None = None):
        super().__init__(rows or {})
        self.optional, self.meaning, self.rules = optional, meaning, rules


def setting(default: Any = dataclasses.MISSING, meaning: str = "", *, minimum: float | None = None,
            positive: bool = False, choices: tuple | None = None, check: Callable[[Any], bool] | None = None,
            rule: str = "") -> Any:
    """A dataclass field with its one-line meaning and its range: at least `minimum`, `positive`, one of
    `choices`, or `check(value)` true (described by `rule`, e.g. "'min <key>' or 'off'"). None always passes
    the range when the annotation allows it."""
    meta = {"meaning": meaning, "minimum": minimum, "positive": positive, "choices": choices, "check": check,
            "rule": rule}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def schema_rows(cls: type) -> Section:
    """The config schema section cls declares (its meaning: the docstring's first line): {field: (types, default,
    meaning)}, REQUIRED where there is no default; its rules: cls.rules where cls has them."""
    kinds = json_types(cls)
    rows = {f.name: (kinds[f.name], default_of(f, REQUIRED), f.metadata.get("meaning", ""))
            for f in dataclasses.fields(cls)}
    return Section(rows, meaning=_first_line(cls.__doc__), rules=getattr(cls, "rules", None))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def range_problems(cls: type, values: dict, prefix: str) -> list[str]:
    """'<prefix><field> must be <range>, got <value>' for each value of the right type outside its range
    (values of the wrong type are the schema check's to report)."""
    kinds = json_types(cls)
    problems = []
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        if value is None or not type_ok(value, kinds[f.name]) or not _finite(value):
            continue  # missing, mistyped or not finite: the checks of those report it
        rule = _rule(f.metadata, nullable=NONE in kinds[f.name])
        if rule and not _in_range(value, f.metadata):
            problems.append(f"{prefix}{f.name} must be {rule}, got {value!r}")
    return problems


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _in_range(value: Any, meta: dict) -> bool:
    if meta.get("minimum") is not None and value < meta["minimum"]:
        return False
    if meta.get("positive") and value <= 0:
        return False
    if meta.get("choices") is not None and value not in meta["choices"]:
        return False
    return meta.get("check") is None or bool(meta["check"](value))


def _rule(meta: dict, nullable: bool) -> str:
    """The range in words: 'at least 1 or null', "'stop' or 'skip'", 'positive or null', ..."""
    if meta.get("rule"):
        return meta["rule"]
    null = ["null"] if nullable else []
    if meta.get("choices") is not None:
        words = [repr(c) for c in meta["choices"]] + null
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if meta.get("minimum") is not None:
        return " or ".join([f"at least {meta['minimum']}", *null])
    if meta.get("positive"):
        return " or ".join(["positive", *null])
    return ""


def from_section(cls: type, section: dict) -> Any:
    """An instance of cls from a validated config section (keys the class does not declare are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})
