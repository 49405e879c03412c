"""Which JSON values a Python type admits, and how to say it: shared by the config machinery (config/) and the
model zoo's dataclass configs (model/cnn.py, model/builders.py)."""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable

NONE = type(None)
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              dict: "an object", list: "a list", NONE: "null"}
_JSON = (bool, int, float, str, dict, list, NONE)


def type_ok(value: Any, types: type | tuple) -> bool:
    """isinstance that keeps bools out of int and lets ints stand for floats."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


def describe(types: type | tuple) -> str:
    """'an integer or null' for (int, NoneType)."""
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)


def annotation_args(hint: Any) -> tuple:
    """The members of a union annotation (`int | None` -> (int, NoneType)), else (hint,); generics as their origin."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def json_types(cls: type) -> dict[str, tuple]:
    """{field: the JSON value types its annotation admits}, e.g. (int, NoneType) for `int | None`."""
    hints = typing.get_type_hints(cls)
    return {f.name: tuple(a for a in annotation_args(hints[f.name]) if a in _JSON) for f in dataclasses.fields(cls)}


def default_of(f: dataclasses.Field, required: Any) -> Any:
    """The field's default (a fresh copy), or `required` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return required


def signature_with(fn: Callable, cls: type) -> inspect.Signature:
    """fn's signature with its **kwargs replaced by cls's fields as keyword-only arguments (annotation and
    default each), so that config validation checks them like any other argument: a constructor that takes
    `**options` and builds cls(**options) declares the options once, in cls."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                 default=default_of(f, inspect.Parameter.empty)) for f in dataclasses.fields(cls)]
    return inspect.Signature(params)
