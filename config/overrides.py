"""key.path=value overrides: parsed as JSON (else kept as a string), typed like the value they replace, strict
about unknown keys (with a did-you-mean) unless written +key.path=value."""
from __future__ import annotations

import json
from typing import Any, Iterable

from config.files import MAX_DEPTH, depth
from config.merge import with_defaults
from config.schema import REQUIRED, SCHEMA, flat_keys, section_at
from utils.errors import UserError, did_you_mean
from utils.json_types import describe, type_ok
from utils.util import flatten


def split_path(path: str) -> list[str]:
    """'a.b.c' (or the original template's 'a;b;c') -> ['a', 'b', 'c']."""
    return [p for p in path.replace(";", ".").split(".") if p]


def coerce(text: str, current: Any, path: str) -> Any:
    """The override text as JSON (else a string), of the type of the value it replaces or one the schema allows."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = text
    if depth(value) > MAX_DEPTH:
        raise UserError(f"override {path}: the value is nested more than {MAX_DEPTH} levels deep; flatten it")
    if current is None or value is None:  # null: the schema check decides whether the key allows it
        return value
    if isinstance(current, float) and type_ok(value, float):
        return float(value)
    allowed = _schema_types(split_path(path))  # e.g. loss={"type": ...} where the file has a name
    if type_ok(value, type(current)) or type_ok(value, allowed):
        return value
    if isinstance(current, str):
        return text
    expected = tuple(dict.fromkeys((type(current), *allowed)))
    raise UserError(f"override {path}={text}: expected {describe(expected)} like the current value {current!r}")


def _schema_types(keys: list[str]) -> tuple:
    """The types the schema allows at a config path (a metric: a name or an object); () where it says nothing."""
    if len(keys) == 2 and keys[0] == "metrics" and keys[1].isdigit():
        return (str, dict)
    types = flat_keys(SCHEMA).get(".".join(keys), ((),))[0]
    return types if isinstance(types, tuple) else (types,)


def apply_override(config: dict, path: str, text: str | None, *, value: Any = None, add: bool = False) -> None:
    """Set config[path] from text (parsed) or value; an unknown path raises unless add is set. A key inside an
    optional section that is null (trainer.ema.decay while trainer.ema is null) turns the section on with its
    defaults first, when every key of it has one."""
    keys = split_path(path)
    node = config
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            key = int(key)
        elif not isinstance(node, dict) or key not in node:
            where = ".".join(keys[: i + 1])
            if add and not isinstance(node, dict):
                raise UserError(f"override +{path}: cannot add {where!r}: {'.'.join(keys[:i]) or 'the config'} "
                                f"is {describe(type(node))}, not an object")
            if not add:
                siblings = node if isinstance(node, dict) else ()
                hint = did_you_mean(key, siblings, ".".join(keys[:i]) + "." if i else "")
                raise UserError(f"override {path}: no key {where!r} in the config.{hint} "
                                f"Write +{path}=... to add a new key")
            if not last:
                node[key] = {}
        if last:
            current = node[key] if (isinstance(node, list) or key in node) else None
            node[key] = value if text is None else coerce(text, current, path)
        else:
            if node[key] is None:
                node[key] = _switched_on(keys[: i + 1])
            node = node[key]


def _switched_on(keys: list[str]) -> dict | None:
    """The defaults of the optional section at keys when every key of it has one (trainer.ema), else None."""
    section = section_at(keys)
    if section is None or not section.optional:
        return None
    if any(default is REQUIRED for _, default, _ in flat_keys(section).values()):
        return None  # e.g. lr_scheduler: its type must be given
    return with_defaults({}, section)


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str, bool]]:
    """['a.b=1', '+c=x'] -> [('a.b', '1', False), ('c', 'x', True)]; a malformed item raises."""
    out = []
    for item in items:
        path, sep, text = item.partition("=")
        add = path.startswith("+")
        path = path.lstrip("+")
        if not sep or not path:
            raise UserError(f"argument {item!r} is not an override: write key.path=value (e.g. trainer.epochs=5)")
        out.append((path, text, add))
    return out


def differing_keys(old: dict, new: dict, sections: Iterable[str]) -> list[str]:
    """Dotted keys under sections whose values differ between two configs."""
    old_paths, new_paths = flatten(old), flatten(new)
    return sorted(k for k in set(old_paths) | set(new_paths)
                  if k.split(".")[0] in sections and old_paths.get(k) != new_paths.get(k))
