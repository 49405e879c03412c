"""Reading a config file: JSON with the json module, YAML (.yaml, .yml) with ruamel.yaml's YAML 1.2 loader, each
into plain dicts, lists, strings, numbers, booleans and None, with the line of every value; a file that cannot be
read is a UserError naming it, the line where that is known, and the fix."""
from __future__ import annotations

import bisect
import datetime
import json
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from utils.errors import UserError

MAX_DEPTH = 64  # far more than any config needs, far less than what Python's recursion allows
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ConfigFile:
    """One config file's content and the line of each value, by dotted key ('trainer.epochs': 12; a section or a
    list: the line of its key)."""
    path: Path
    data: dict
    lines: dict[str, int]


def read_config_file(path: str | Path) -> ConfigFile:
    """A JSON or YAML (by its suffix) config file's object and the line of each of its values."""
    path = Path(path)
    if path.suffix.lower() in YAML_SUFFIXES:
        return ConfigFile(path, *_parse_yaml(_read_text(path, "YAML mapping"), f"config file {path}"))
    text = _read_text(path, "JSON object")
    return ConfigFile(path, _parse_json(text, f"config file {path}"), json_lines(text))


def read_json(path: str | Path) -> dict:
    """The JSON object in path; a missing, unreadable or malformed file is a UserError naming it and the fix."""
    path = Path(path)
    return _parse_json(_read_text(path, "JSON object"), f"config file {path}")


def _read_text(path: Path, holds: str) -> str:
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
        raise UserError(f"{where} is empty; write a {holds} in it, e.g. start from the shipped config.json")
    return text


def _parse_json(text: str, where: str) -> dict:
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


# ---------------------------------------------------------------- JSON positions

_SPACE = re.compile(r"[ \t\n\r]*")
_LITERAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity")


def json_lines(text: str) -> dict[str, int]:
    """The line of each value of a valid JSON text by dotted key (a second, position-only parse: the json module
    tells no positions); an object or a list has the line of its key, a list item the line it starts on."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    lines: dict[str, int] = {}

    def line(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    def value(pos: int, key: str, key_line: int) -> int:  # the end of the value starting at pos
        pos = _SPACE.match(text, pos).end()
        opening = text[pos]
        if opening not in "{[":
            if key:
                lines[key] = line(pos)
            return scanstring(text, pos + 1)[1] if opening == '"' else _LITERAL.match(text, pos).end()
        if key:
            lines[key] = key_line
        closing, index = ("}" if opening == "{" else "]"), 0
        pos = _SPACE.match(text, pos + 1).end()
        while text[pos] != closing:
            if opening == "{":
                name, end = scanstring(text, pos + 1)
                colon = _SPACE.match(text, end).end()
                pos = value(colon + 1, f"{key}.{name}" if key else name, line(pos))
            else:
                start = _SPACE.match(text, pos).end()
                pos = value(start, f"{key}.{index}" if key else str(index), line(start))
                index += 1
            pos = _SPACE.match(text, pos).end()
            if text[pos] == ",":
                pos = _SPACE.match(text, pos + 1).end()
        return pos + 1

    value(0, "", 1)
    return lines


# ---------------------------------------------------------------- YAML

def _parse_yaml(text: str, where: str) -> tuple[dict, dict[str, int]]:
    """The mapping of a YAML text as plain values, and the line of each by dotted key. YAML 1.2, as ruamel.yaml
    reads it: 1e-3 is a number, no/off are strings, 010 is ten; a duplicate key is an error."""
    try:
        node = YAML(typ="rt", pure=True).load(text)  # a new loader each time: a %YAML directive changes its state
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or "").split())
        raise UserError(f"{where} is not valid YAML: {problem}{at}") from None
    except YAMLError as e:
        raise UserError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise _too_deep(where) from None
    if node is None:
        raise UserError(f"{where} is empty; write a YAML mapping in it (key: value lines)")
    if not isinstance(node, CommentedMap):
        raise UserError(f"{where} must hold a YAML mapping (key: value lines), not {_kind(node)}")
    lines: dict[str, int] = {}
    try:
        data = _plain(node, "", lines, where)
    except RecursionError:
        raise _too_deep(where) from None
    if depth(data) > MAX_DEPTH:
        raise _too_deep(where)
    return data, lines


def _plain(node: Any, key: str, lines: dict[str, int], where: str) -> Any:
    """ruamel.yaml's node as the plain value JSON would give, recording the line of each value under it."""
    if isinstance(node, (CommentedMap, CommentedSeq)) and _custom_tag(node):
        raise UserError(f"{where} line {lines.get(key, 1)}: {key} is tagged {_custom_tag(node)}; a config holds "
                        f"strings, numbers, true/false, null, lists and mappings: leave out the tag")
    if isinstance(node, CommentedMap):
        out = {}
        for name, value in node.items():
            at = (node.lc.data or {}).get(name)  # [key line, key column, value line, value column], 0-based
            if not isinstance(name, str):
                line = at[0] + 1 if at else lines.get(key)
                raise UserError(f"{where} line {line}: the key {name!r}{f' in {key}' if key else ''} is "
                                f"{_kind(name)}; a config's keys are strings: quote it")
            child = f"{key}.{name}" if key else name
            container = isinstance(value, (CommentedMap, CommentedSeq))
            lines[child] = (at[0] if container else at[2]) + 1 if at else lines.get(key, 1)  # no position: a << merge
            out[name] = _plain(value, child, lines, where)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = f"{key}.{index}" if key else str(index)
            at = (node.lc.data or {}).get(index)
            lines[child] = at[0] + 1 if at else lines.get(key, 1)
            items.append(_plain(value, child, lines, where))
        return items
    if node is None or isinstance(node, (bool, ScalarBoolean)):
        return node if node is None else bool(node)
    for plain in (int, float, str):  # ruamel's ScalarInt, ScalarFloat, ScalarString...
        if isinstance(node, plain):
            return plain(node)
    raise UserError(f"{where} line {lines.get(key, 1)}: {key} is {_kind(node)} ({node}); a config holds strings, "
                    f"numbers, true/false, null, lists and mappings: quote it to make it a string")


_YAML_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("map", "omap", "seq", "str", "int", "float", "bool", "null")}


def _custom_tag(node: Any) -> str | None:
    """The tag of a node written with one that is not YAML's own (!foo, !!python/object:...), else None."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    return tag if tag and tag not in _YAML_TAGS else None


def _kind(value: Any) -> str:
    """What a YAML value is, in words."""
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, AbstractSet):
        return "a set"
    if _custom_tag(value):
        return f"tagged {_custom_tag(value)}"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             type(None): "null", bytes: "binary data", set: "a set"}
    return next((word for cls, word in names.items() if isinstance(value, cls)), type(value).__name__)
