"""Merging configs: a config file onto its bases (a section with _delete_: true replaces instead of merging), a -c
file onto a checkpoint's config, and the schema's defaults into a config."""
from __future__ import annotations

import copy
from typing import Any

from config.schema import REQUIRED, SCHEMA

DELETE = "_delete_"  # in a section: replace the section it would merge into (MMEngine's key)


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of base with override merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_layer(base: dict, override: dict) -> dict:
    """A copy of base with override merged in: dicts recursively, other values replace; a dict of override whose
    _delete_ is true replaces base's (its marker kept, for the next merge: without_markers drops them)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and value.get(DELETE) is not True and isinstance(out.get(key), dict):
            out[key] = merge_layer(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def without_markers(config: Any) -> Any:
    """A copy of config without the _delete_ keys of its sections (sections inside sections; a list is a value)."""
    if isinstance(config, dict):
        return {key: without_markers(value) for key, value in config.items() if key != DELETE}
    return copy.deepcopy(config)


def merge_changes(config: dict, changes: dict) -> dict:
    """A -c file merged onto a checkpoint's config (merge_layer); a section whose type changes takes only the new
    args."""
    out = merge_layer(config, changes)
    for key, new in changes.items():
        old = config.get(key)
        if isinstance(new, dict) and isinstance(old, dict) and "type" in new and new["type"] != old.get("type"):
            out[key]["args"] = copy.deepcopy(new.get("args", {}))
    return out


def with_defaults(config: dict, schema: dict = SCHEMA) -> dict:
    """A copy of config with every missing key that has a default filled in, nested sections included (an
    optional section absent or null stays null: none)."""
    out = copy.deepcopy(config)
    for key, spec in schema.items():
        if isinstance(spec, dict):
            if getattr(spec, "optional", False) and out.get(key) is None:
                out[key] = None  # absent and null mean the same: none
                continue
            if isinstance(out.setdefault(key, {}), dict):
                out[key] = with_defaults(out[key], spec)
        elif key not in out and spec[1] is not REQUIRED:
            out[key] = copy.deepcopy(spec[1])
    return out
