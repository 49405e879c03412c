"""Merging configs: a -c file onto a checkpoint's config, and the schema's defaults into a config."""
from __future__ import annotations

import copy

from config.schema import REQUIRED, SCHEMA


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of base with override merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_changes(config: dict, changes: dict) -> dict:
    """A -c file deep-merged onto a checkpoint's config; a section whose type changes takes only the new args."""
    out = deep_merge(config, changes)
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
