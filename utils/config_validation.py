"""Validation of a defaults-filled config: every problem at once, each naming the key and the fix.

Schema keys and types, registry names, constructor arguments checked against signatures, settings
ranges, and the checks a registered class adds (its `config_problems(args, path)`), all before
anything is built. The schema and the settings classes are given by the caller (parse_config).
"""
from __future__ import annotations

import inspect
import json
import math
import re
from typing import Any, Iterable

from utils.config_schema import NONE, OPTIONAL_SECTIONS, describe, type_ok
from utils.errors import did_you_mean, first_line
from utils.monitor import SAVE_TOP_K_NEEDS_MONITOR
from utils.params import DEFAULT_GROUP
from utils.registry import ARCHS, DATA_LOADERS, LOSSES, LR_SCHEDULERS, METRICS, OPTIMIZERS, TRAINERS, Registry
from utils.settings import range_problems

# (config section, registry, positional arguments the builder supplies before the config's args)
BUILT = [("arch", ARCHS, 0), ("data_loader", DATA_LOADERS, 0), ("optimizer", OPTIMIZERS, 1),
         ("lr_scheduler", LR_SCHEDULERS, 1)]


def check_schema(config: dict, schema: dict, prefix: str = "") -> list[str]:
    """Problems with unknown keys, missing required keys and value types."""
    problems = []
    for key in config:
        if key not in schema:
            hint = did_you_mean(key, schema, prefix)
            problems.append(f"config key {prefix + key!r} is not known.{hint or ' Put your own settings under extra.'}")
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, dict):
            section = config.get(key)
            if section is None and key in OPTIONAL_SECTIONS:
                continue
            if not isinstance(section, dict):
                problems.append(f"config key {path!r} must be an object {{...}}")
            else:
                problems.extend(check_schema(section, spec, path + "."))
        elif key not in config:
            problems.append(f"config key {path!r} is missing: {spec[2]}")
        elif not type_ok(config[key], spec[0]):
            problems.append(f"config key {path!r} must be {describe(spec[0])}, got {config[key]!r}")
    return problems


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
    if takes_any and _is_torchmetrics(obj):  # its **kwargs takes a known set of names: check them too
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


_BUILT_TO_CHECK = ("torchmetrics.classification", "torchmetrics.regression")


def _is_torchmetrics(obj: Any) -> bool:
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


def callable_specs(config: dict) -> list[tuple[str, Any]]:
    """[(config path, spec)] for the loss and each metric that check_schema found well-typed."""
    metrics = config.get("metrics")
    specs = [("loss", config["loss"])] if type_ok(config.get("loss"), (str, dict)) else []
    return specs + [(f"metrics.{i}", m) for i, m in enumerate(metrics if isinstance(metrics, list) else [])]


def check_callable_spec(spec: Any, path: str, registry: Registry) -> list[str]:
    """Problems with a loss or metric given as a name or {type, args[, name]}."""
    type_path = path if isinstance(spec, str) else f"{path}.type"
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return [f"{path}: must be a name or an object {{\"type\": ..., \"args\": {{...}}}}, got {spec!r}"]
    unknown = set(spec) - {"type", "args", "name"}
    if unknown:
        return [f"{path}: unknown key(s) {sorted(unknown)}; allowed: type, args, name"]
    obj = registry.find(spec["type"])
    if obj is None:
        return [registry.unknown(spec["type"], type_path)]
    args = spec.get("args", {})
    if not isinstance(args, dict):
        return [f"{path}.args must be an object {{...}}"]
    problems = check_args(obj, args, f"{path}.args", 0 if inspect.isclass(obj) else 2)
    # Cheap and pure to build (image metrics may load a network: they are left to the build): their own checks,
    # e.g. num_classes for a multiclass task, reported with the other problems.
    if not problems and _is_torchmetrics(obj) and obj.__module__.startswith(_BUILT_TO_CHECK):
        try:
            obj(**args)
        except (TypeError, ValueError) as e:
            problems.append(f"{path}.args: {obj.__name__} refused {args}: {first_line(e)}")
    return problems


# Optimizers the Trainer cannot drive from a config, and why (checked before anything is built).
UNSUPPORTED_OPTIMIZERS = {
    "Muon": "it only takes 2-D weight matrices", "SpectralSphere": "it only takes 2-D weight matrices",
    "AdaGO": "it needs parameter groups flagged use_muon", "AdaMuon": "it needs parameter groups flagged use_muon",
    "MuonClip": "it needs parameter groups flagged use_muon", "NorMuon": "it needs parameter groups flagged use_muon",
    "DistributedMuon": "it needs parameter groups flagged use_muon and its own process group",
    "SparseAdam": "it needs sparse gradients for every parameter", "DeMo": "it needs its own process group",
}


def check_optimizer(obj: Any) -> list[str]:
    """A problem when the Trainer cannot drive this optimizer class (it takes the model, another optimizer, ...)."""
    name = getattr(obj, "__name__", str(obj))
    try:
        first = next(iter(inspect.signature(obj).parameters), "params")
    except (TypeError, ValueError):
        first = "params"
    reason = UNSUPPORTED_OPTIMIZERS.get(name) or (
        f"it takes the {first} instead of the parameters" if first in ("model", "optimizer") else None)
    if reason is None:
        return []
    return [f"optimizer.type: {name} cannot be used from a config: {reason}. Choose another optimizer "
            f"(python train.py --list optimizer), or build it in your own train.py"]


def check_param_groups(groups: Any, optimizer: Any = None) -> list[str]:
    """Problems with optimizer.param_groups entries: each an object with "params" (a glob pattern or a list of
    them), an optional distinct "name", and options the optimizer class takes (checked when it is known). Whether
    the patterns match parameters is checked when the model is built (utils/params.py)."""
    if not isinstance(groups, list):
        return []  # the schema check reports it
    problems, names = [], {}
    try:
        takes = list(inspect.signature(optimizer).parameters) if optimizer is not None else []
    except (TypeError, ValueError):
        takes = []
    for i, entry in enumerate(groups):
        path = f"optimizer.param_groups.{i}"
        if not isinstance(entry, dict):
            problems.append(f"{path} must be an object {{\"params\": \"<glob pattern>\", \"lr\": ..., ...}}, "
                            f"got {entry!r}")
            continue
        params = entry.get("params")
        if not (isinstance(params, str) and params or isinstance(params, list) and params
                and all(isinstance(p, str) and p for p in params)):
            got = "nothing" if "params" not in entry else repr(params)
            problems.append(f"{path}.params must be a glob pattern of parameter names or a list of them "
                            f"(e.g. \"features.*\"), got {got}")
        name = entry.get("name")
        if "name" in entry and not (isinstance(name, str) and name and name != DEFAULT_GROUP):
            problems.append(f"{path}.name must be a string other than {DEFAULT_GROUP!r} (the group of the other "
                            f"parameters), got {name!r}")
        label = name if isinstance(name, str) and name else f"group{i}"  # what its learning rate is logged as
        if label in names:
            problems.append(f"{path}: its name {label!r} is also optimizer.param_groups.{names[label]}'s; give each "
                            f"group a distinct \"name\"")
        names.setdefault(label, i)
        options = {k: v for k, v in entry.items() if k not in ("params", "name")}
        if optimizer is not None:
            problems.extend(check_args(optimizer, options, path, 1, supplied=takes))
        lr = options.get("lr")
        if type_ok(lr, float) and math.isfinite(lr) and lr < 0:
            problems.append(f"{path}.lr must be at least 0, got {lr}")
    return problems


# The least value of arguments the template knows by name, whichever class of the section takes them.
ARG_MINIMUMS = {"data_loader": {"batch_size": 1, "num_workers": 0}, "optimizer": {"lr": 0}}


def check_arg_ranges(config: dict) -> list[str]:
    """Problems with the arguments of ARG_MINIMUMS below their least value."""
    problems = []
    for section, minimums in ARG_MINIMUMS.items():
        args = config.get(section, {}).get("args") if isinstance(config.get(section), dict) else None
        for key, least in minimums.items():
            value = args.get(key) if isinstance(args, dict) else None
            if type_ok(value, (int, float)) and math.isfinite(value) and value < least:  # NaN/inf: check_finite
                problems.append(f"{section}.args.{key} must be at least {least}, got {value}")
    return problems


def check_finite(config: dict) -> list[str]:
    """Problems with NaN and infinite numbers (JSON's NaN/Infinity literals) anywhere but under extra."""
    problems, stack = [], [(key, value) for key, value in config.items() if key != "extra"]
    while stack:
        path, value = stack.pop(0)
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"config key {path!r} is {json.dumps(value)}: NaN and Infinity are not numbers a "
                            f"config can use; write a finite number")
    return problems


def validate(config: dict, schema: dict, settings: dict[str, type]) -> list[str]:
    """Every problem in a defaults-filled config, all at once (empty when it is fine); settings maps a
    section to the class that declares its keys' ranges (utils/settings.py)."""
    problems = check_schema(config, schema)  # the checks below skip values it found missing or mistyped
    problems.extend(check_finite(config))
    problems.extend(check_arg_ranges(config))
    for section, registry, n_positional in BUILT:
        spec = config.get(section)
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue
        obj = registry.find(spec["type"])
        if obj is None:
            problems.append(registry.unknown(spec["type"], f"{section}.type"))
        elif isinstance(spec.get("args"), dict):
            problems.extend(check_args(obj, spec["args"], f"{section}.args", n_positional))
            if section == "optimizer":
                problems.extend(check_optimizer(obj))
            if callable(getattr(obj, "config_problems", None)):  # the class's own checks, e.g. transforms
                problems.extend(obj.config_problems(spec["args"], f"{section}.args"))
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict):
        kind = optimizer.get("type")
        problems.extend(check_param_groups(optimizer.get("param_groups"),
                                           OPTIMIZERS.find(kind) if isinstance(kind, str) else None))
    specs = callable_specs(config)
    for path, spec in specs:
        problems.extend(check_callable_spec(spec, path, LOSSES if path == "loss" else METRICS))
    names = [metric_name(m) for path, m in specs if path != "loss" and isinstance(m, (str, dict))]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"metrics: {dup!r} appears twice; give each a distinct \"name\"")
    arch = config.get("arch")
    key_map = arch.get("weights_key_map") if isinstance(arch, dict) else None
    if isinstance(key_map, dict):
        problems.extend(f"arch.weights_key_map: {old!r} maps to {new!r}; both must be strings (name prefixes)"
                        for old, new in key_map.items() if not isinstance(new, str))
    scheduler = config.get("lr_scheduler")
    interval = scheduler.get("interval") if isinstance(scheduler, dict) else "epoch"
    if isinstance(interval, str) and interval not in ("epoch", "step"):
        problems.append(f"lr_scheduler.interval must be 'epoch' or 'step', got {interval!r}")
    trainer = config.get("trainer")
    unfreeze = trainer.get("unfreeze_at_epoch") if isinstance(trainer, dict) else None
    if isinstance(unfreeze, int) and unfreeze >= 1 and not trainer.get("freeze"):
        problems.append("trainer.unfreeze_at_epoch is set but trainer.freeze names nothing to freeze; add patterns "
                        "to trainer.freeze or set trainer.unfreeze_at_epoch to null")
    top_k = trainer.get("save_top_k") if isinstance(trainer, dict) else None
    monitor = trainer.get("monitor") if isinstance(trainer, dict) else None
    if type(top_k) is int and isinstance(monitor, str) and monitor.split() == ["off"]:  # a mistyped one: reported above
        problems.append(SAVE_TOP_K_NEEDS_MONITOR)
    if isinstance(trainer, dict) and isinstance(trainer.get("type"), str) and trainer["type"] not in TRAINERS:
        problems.append(TRAINERS.unknown(trainer["type"], "trainer.type"))
    for section, cls in settings.items():
        if isinstance(config.get(section), dict):
            problems.extend(range_problems(cls, config[section], f"{section}."))
    return problems


def metric_name(spec: str | dict) -> str:
    """The key a metric is logged under: its name, else its type."""
    return spec if isinstance(spec, str) else spec.get("name") or spec.get("type", "?")
