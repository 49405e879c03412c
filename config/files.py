"""Reading a config file: one JSON object, or a UserError naming the file and the fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils.errors import UserError

MAX_DEPTH = 64  # far more than any config needs, far less than what Python's recursion allows


def read_json(path: str | Path) -> dict:
    """The JSON object in path; a missing, unreadable or malformed file is a UserError naming it and the fix."""
    path = Path(path)
    where = f"config file {path}"
    if path.is_dir():
        raise UserError(f"{where} is a directory; give a JSON file with -c, e.g. {path / 'config.json'}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where} not found; give an existing file with -c") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{where} cannot be read: {e.strerror}") from None
    if not text.strip():
        raise UserError(f"{where} is empty; write a JSON object in it, e.g. start from the shipped config.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # deeper than the JSON parser goes
        raise _too_deep(where) from None
    if depth(data) > MAX_DEPTH:
        raise _too_deep(where)
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a JSON object {{...}}, not {type(data).__name__}")
    return data


def _too_deep(where: str) -> UserError:
    return UserError(f"{where} is nested too deeply for a config (objects or lists more than {MAX_DEPTH} levels "
                     f"inside each other); flatten it")


def depth(value: Any) -> int:
    """How many objects/lists deep value goes (without recursion: the value may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest
