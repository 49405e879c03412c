"""Settings declared once: a dataclass per component whose fields carry type, default, range and meaning.

    @dataclass(frozen=True, kw_only=True)
    class Settings:
        epochs: int = setting(meaning="number of epochs to train", minimum=1)
        amp: str | None = setting(None, "mixed precision", choices=("bf16", "fp16"))
        ema: EMASettings | None = setting(None, "a nested section; null = off")

        @classmethod
        def rules(cls, values: dict) -> list[str]: ...   # problems across keys (optional)

The type is the field's annotation; a field without a default is required; a field whose annotation is another
settings class (alone or `| None`) is a nested section. From the one declaration come the config schema section
(`schema_rows`), the range checks (`range_problems`), the rules across keys (`rules`, run by validation with
every other check), the defaults filled into a config (through the schema) and the settings object itself
(`from_section`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Any, Callable

from utils.json_types import NONE, annotation_args, default_of, json_types, type_ok

REQUIRED = object()  # the default of a key that has none


class Section(dict):
    """A config section: {key: (types, default, meaning) or a nested Section}. optional: absent and null mean
    none (then its default is null); meaning: one line for the section itself; rules(values) -> the problems
    across its keys, run with every other check; ranges: {key: its range in words} (for docs/config.md)."""

    def __init__(self, rows: dict | None = None, *, optional: bool = False, meaning: str = "",
                 rules: Callable[[dict], list[str]] | None = None, ranges: dict[str, str] | None = None):
        super().__init__(rows or {})
        self.optional, self.meaning, self.rules, self.ranges = optional, meaning, rules, ranges or {}


def setting(default: Any = dataclasses.MISSING, meaning: str = "", *, minimum: float | None = None,
            maximum: float | None = None, positive: bool = False, choices: tuple | None = None,
            check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """A dataclass field with its one-line meaning and its range: at least `minimum`, at most `maximum`,
    `positive`, one of `choices`, or `check(value)` true (described by `rule`, e.g. "'min <key>' or 'off'").
    None always passes the range when the annotation allows it."""
    meta = {"meaning": meaning, "minimum": minimum, "maximum": maximum, "positive": positive, "choices": choices,
            "check": check, "rule": rule}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(cls: type) -> dict[str, type]:
    """{field: its settings class} for the fields of cls that are nested sections (`EMASettings | None`)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        classes = [a for a in annotation_args(hints[f.name]) if dataclasses.is_dataclass(a)]
        if classes:
            out[f.name] = classes[0]
    return out


def schema_rows(cls: type) -> Section:
    """The config schema section cls declares (its meaning: the docstring's first line): {field: (types, default,
    meaning)}, REQUIRED where there is no default, a nested Section for a field of a settings class (optional when
    it may be null, its default)."""
    kinds, inner = json_types(cls), nested(cls)
    rows, ranges = {}, {}
    for f in dataclasses.fields(cls):
        meaning = f.metadata.get("meaning", "")
        ranges[f.name] = _rule(f.metadata, nullable=NONE in kinds[f.name])
        if f.name in inner:
            optional = NONE in kinds[f.name]
            if optional and f.default is not None:
                raise TypeError(f"{cls.__name__}.{f.name}: a nested section that may be null defaults to null")
            section = schema_rows(inner[f.name])
            rows[f.name] = Section(section, optional=optional, meaning=meaning, rules=section.rules,
                                   ranges=section.ranges)
        else:
            rows[f.name] = (kinds[f.name], default_of(f, REQUIRED), meaning)
    return Section(rows, meaning=_first_line(cls.__doc__), rules=getattr(cls, "rules", None),
                   ranges={k: v for k, v in ranges.items() if v})


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def range_problems(cls: type, values: dict, prefix: str) -> list[str]:
    """'<prefix><field> must be <range>, got <value>' for each value of the right type outside its range, nested
    sections included (values of the wrong type are the schema check's to report)."""
    kinds, inner = json_types(cls), nested(cls)
    problems = []
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        if f.name in inner:
            if isinstance(value, dict):
                problems.extend(range_problems(inner[f.name], value, f"{prefix}{f.name}."))
            continue
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
    if meta.get("maximum") is not None and value > meta["maximum"]:
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
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and high is not None:
        return " or ".join([f"from {low} to {high}", *null])
    if low is not None:
        return " or ".join([f"at least {low}", *null])
    if high is not None:
        return " or ".join([f"at most {high}", *null])
    if meta.get("positive"):
        return " or ".join(["positive", *null])
    return ""


def from_section(cls: type, section: dict) -> Any:
    """An instance of cls from a validated config section, nested sections as their settings objects (keys the
    class does not declare are ignored)."""
    inner = nested(cls)
    values = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
    for name, sub in inner.items():
        if isinstance(values.get(name), dict):
            values[name] = from_section(sub, values[name])
    return cls(**values)
