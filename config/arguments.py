"""Arguments from a config checked against the signature of the class or function they are passed to: unknown
or missing names (with a did-you-mean) and JSON value types that the annotations and defaults rule out."""
from __future__ import annotations

import inspect
import re
from typing import Any, Iterable

from utils.errors import did_you_mean
from utils.json_types import NONE, describe, type_ok


def check_args(obj: Any, args: dict, path: str, n_positional: int = 0, supplied: Iterable[str] = ()) -> list[str]:
    """Problems with args for obj(*n_positional values, **args): unknown or missing names, wrong types."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:n_positional]
    named = [p for p in params if p not in positional and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    by_name = {p.name: p for p in named}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    if takes_any and is_torchmetrics(obj):  # its **kwargs takes a known set of names: check them too
        takes_any = False
        by_name.update((p.name, p) for p in _torchmetrics_kwargs(obj) if p.name not in by_name)
    name = getattr(obj, "__name__", repr(obj))
    problems = []
    for key, value in args.items():
        param = by_name.get(key)
        if param is None:
            if not takes_any:
                hint = did_you_mean(key, by_name) or f" It accepts: {', '.join(by_name) or 'no arguments'}."
                problems.append(f"{path}.{key}: {name} has no argument {key!r}.{hint}")
        elif (types := _json_types(param)) is not None and not type_ok(value, types):
            default = "" if param.default is param.empty else f" (default {param.default!r})"
            problems.append(f"{path}.{key}: {name} expects {describe(types)}{default}, got {value!r}")
    supplied = set(args) | set(supplied)
    for p in named:
        if p.default is p.empty and p.name not in supplied:
            problems.append(f"{path}: {name} needs the argument {p.name!r}; add it to {path}")
    return problems


# The keyword arguments every torchmetrics Metric takes through **kwargs (torchmetrics.Metric.__init__).
TORCHMETRICS_KWARGS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                       "distributed_available_fn", "sync_on_compute", "compute_with_cache")


def is_torchmetrics(obj: Any) -> bool:
    """Whether obj is a torchmetrics metric class."""
    return inspect.isclass(obj) and obj.__module__.split(".")[0] == "torchmetrics"


def _torchmetrics_kwargs(cls: type) -> list[inspect.Parameter]:
    """What a torchmetrics class's **kwargs admits: the Metric base's keyword arguments and, for a task wrapper
    (F1Score(task=...)), the arguments of its Binary/Multiclass/Multilabel classes, which it hands them on to."""
    admitted = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any)
                for name in TORCHMETRICS_KWARGS]
    try:
        if "task" in inspect.signature(cls).parameters:
            module = inspect.getmodule(cls)
            for prefix in ("Binary", "Multiclass", "Multilabel"):
                task_class = getattr(module, prefix + cls.__name__, None)
                if task_class is not None:
                    admitted += [p.replace(default=None if p.default is p.empty else p.default)
                                 for p in inspect.signature(task_class).parameters.values()
                                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        pass
    return admitted


# What a name in a type annotation admits among JSON values (a tensor: none of them).
_JSON_TYPES = {"int": (int,), "float": (float,), "bool": (bool,), "str": (str,), "None": (NONE,), "NoneType": (NONE,),
               "Optional": (NONE,), "Union": (), "list": (list,), "tuple": (list,), "Sequence": (list,),
               "dict": (dict,), "Mapping": (dict,), "Tensor": ()}


def _json_types(param: inspect.Parameter) -> tuple | None:
    """The JSON value types param accepts, from its annotation and default; None when they cannot be told."""
    default = param.default
    types = (type(default),) if type(default) in (int, float, bool, str, NONE) else ()
    ann = param.annotation
    if ann is param.empty:  # unannotated: only a plain default tells (an int default takes floats too: 0 for 0.0)
        return (float,) if type(default) is int else types or None
    text = ann if isinstance(ann, str) else ann.__name__ if isinstance(ann, type) else str(ann)
    for word in re.findall(r"[A-Za-z_][\w.]*", re.sub(r"'[^']*'|\"[^\"]*\"", "", text)):
        word = word.rsplit(".", 1)[-1]
        if word not in _JSON_TYPES:  # Literal, Callable, Any, an alias, a class: do not guess
            return None
        types += _JSON_TYPES[word]
    return tuple(t for t in dict.fromkeys(types) if not (t is int and float in types)) or None  # floats take ints
