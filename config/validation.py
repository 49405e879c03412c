"""Validation of a defaults-filled config: every problem at once, each naming the key and the fix.

Schema keys and types, registry names, constructor arguments checked against signatures (config/arguments.py),
settings ranges and the rules across a section's keys (beside their declarations: config/schema.py,
config/settings.py), and the checks a registered class adds (its `config_problems(args, path)`), all before
anything is built.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
from typing import Any

import logger.loggers  # noqa: F401  (registers the loggers by name)
from config.arguments import check_args, is_torchmetrics
from config.fields import Section, range_problems
from config.schema import ARG_MINIMUMS, SCHEMA, SETTINGS
from utils.errors import did_you_mean, first_line
from utils.json_types import describe, type_ok
from utils.params import DEFAULT_GROUP
from utils.registry import (ARCHS, DATA_LOADERS, LOGGERS, LOSSES, LR_SCHEDULERS, METRICS, OPTIMIZERS, TRAINERS,
                            Registry)

# (config section, registry, positional arguments the builder supplies before the config's args)
BUILT = [("arch", ARCHS, 0), ("data_loader", DATA_LOADERS, 0), ("optimizer", OPTIMIZERS, 1),
         ("lr_scheduler", LR_SCHEDULERS, 1)]

# torchmetrics modules whose classes are cheap and pure to build, so validation builds them to run their own checks
_BUILT_TO_CHECK = ("torchmetrics.classification", "torchmetrics.regression")


def validate(config: dict) -> list[str]:
    """Every problem in a defaults-filled config, all at once (empty when it is fine)."""
    problems = check_schema(config, SCHEMA)  # the checks below skip values it found missing or mistyped
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
    problems.extend(check_rules(config, SCHEMA))
    problems.extend(check_loggers(config.get("loggers")))
    trainer = config.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("type"), str) and trainer["type"] not in TRAINERS:
        problems.append(TRAINERS.unknown(trainer["type"], "trainer.type"))
    for section, cls in SETTINGS.items():
        if isinstance(config.get(section), dict):
            problems.extend(range_problems(cls, config[section], f"{section}."))
    return problems


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
            if section is None and getattr(spec, "optional", False):
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


def check_rules(config: dict, schema: dict) -> list[str]:
    """The problems each section's own rules find across its keys (Section.rules), nested sections included."""
    problems = []
    for key, spec in schema.items():
        if isinstance(spec, Section) and isinstance(config.get(key), dict):
            if spec.rules is not None:
                problems.extend(spec.rules(config[key]))
            problems.extend(check_rules(config[key], spec))
    return problems


def callable_specs(config: dict) -> list[tuple[str, Any]]:
    """[(config path, spec)] for the loss and each metric that check_schema found well-typed."""
    metrics = config.get("metrics")
    specs = [("loss", config["loss"])] if type_ok(config.get("loss"), (str, dict)) else []
    return specs + [(f"metrics.{i}", m) for i, m in enumerate(metrics if isinstance(metrics, list) else [])]


def check_loggers(loggers: Any) -> list[str]:
    """Problems with the "loggers" entries: each a known name or {type, args} with arguments its class takes, once."""
    if not isinstance(loggers, list):
        return []  # mistyped: the schema check reports it
    problems, names = [], []
    for i, spec in enumerate(loggers):
        path = f"loggers.{i}"
        type_path, spec = (path, {"type": spec}) if isinstance(spec, str) else (f"{path}.type", spec)
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            problems.append(f"{path}: must be a name or an object {{\"type\": ..., \"args\": {{...}}}}, got {spec!r}")
            continue
        unknown = set(spec) - {"type", "args"}
        cls = LOGGERS.find(spec["type"])
        if unknown:
            problems.append(f"{path}: unknown key(s) {sorted(unknown)}; allowed: type, args")
        elif cls is None:
            problems.append(LOGGERS.unknown(spec["type"], type_path))
        elif not isinstance(spec.get("args", {}), dict):
            problems.append(f"{path}.args must be an object {{...}}")
        else:
            problems.extend(check_args(cls, spec.get("args", {}), f"{path}.args", 1))
            problems.extend(f"{path}: the {spec['type']!r} logger needs {module}, which is not installed; {fix}"
                            for module, fix in getattr(cls, "requires", {}).items()
                            if importlib.util.find_spec(module) is None)
        names.append(spec["type"])
    problems.extend(f"loggers: {name!r} appears twice; give each logger once" for name in sorted(set(names))
                    if names.count(name) > 1)
    return problems


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
    if not problems and is_torchmetrics(obj) and obj.__module__.startswith(_BUILT_TO_CHECK):
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


def metric_name(spec: str | dict) -> str:
    """The key a metric is logged under: its name, else its type."""
    return spec if isinstance(spec, str) else spec.get("name") or spec.get("type", "?")
