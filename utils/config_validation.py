"""Validation of a defaults-filled config: every problem at once, each naming the key and the fix.

Schema keys and types, registry names, and constructor arguments checked against signatures, all
before anything is built.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Iterable

from utils.config_schema import NONE, OPTIONAL_SECTIONS, SCHEMA, describe, type_ok
from utils.errors import UserError, did_you_mean
from utils.registry import (ARCHS, DATA_LOADERS, LOSSES, LR_SCHEDULERS, METRICS, OPTIMIZERS, Registry,
                            load_user_modules)

# (config section, registry, positional arguments the builder supplies before the config's args)
BUILT = [("arch", ARCHS, 0), ("data_loader", DATA_LOADERS, 0), ("optimizer", OPTIMIZERS, 1),
         ("lr_scheduler", LR_SCHEDULERS, 1)]


def check_schema(config: dict, schema: dict = SCHEMA, prefix: str = "") -> list[str]:
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
    return check_args(obj, args, f"{path}.args", 0 if inspect.isclass(obj) else 2)


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


def validate(config: dict) -> list[str]:
    """Every problem in a defaults-filled config, all at once (empty when it is fine)."""
    load_user_modules()
    problems = check_schema(config)  # the checks below skip values it found missing or mistyped
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
    problems.extend(check_transforms(config.get("data_loader")))
    specs = callable_specs(config)
    for path, spec in specs:
        problems.extend(check_callable_spec(spec, path, LOSSES if path == "loss" else METRICS))
    names = [metric_name(m) for path, m in specs if path != "loss" and isinstance(m, (str, dict))]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"metrics: {dup!r} appears twice; give each a distinct \"name\"")
    scheduler = config.get("lr_scheduler")
    interval = scheduler.get("interval") if isinstance(scheduler, dict) else "epoch"
    if isinstance(interval, str) and interval not in ("epoch", "step"):
        problems.append(f"lr_scheduler.interval must be 'epoch' or 'step', got {interval!r}")
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    words = trainer["monitor"].split() if isinstance(trainer.get("monitor"), str) else ["off"]
    if words != ["off"] and (len(words) != 2 or words[0] not in ("min", "max")):
        problems.append(f"trainer.monitor must be 'min <key>', 'max <key>' or 'off', got {trainer['monitor']!r}")
    number = {k: v for k, v in trainer.items() if type_ok(v, int)}  # mistyped ones are reported already
    for key in ("epochs", "save_period", "log_step", "len_epoch", "save_every_steps", "keep_last"):
        if key in number and number[key] < 1:
            optional = " or null" if key in ("len_epoch", "save_every_steps", "keep_last") else ""
            problems.append(f"trainer.{key} must be at least 1{optional}, got {number[key]}")
    if trainer.get("amp") not in (None, "bf16", "fp16"):
        problems.append(f"trainer.amp must be 'bf16', 'fp16' or null, got {trainer['amp']!r}")
    if number.get("accumulate_steps", 1) < 1 or number.get("dist_timeout", 1) < 1:
        problems.append("trainer.accumulate_steps and trainer.dist_timeout must be at least 1")
    if isinstance(trainer.get("clip_grad_norm"), (int, float)) and trainer["clip_grad_norm"] <= 0:
        problems.append(f"trainer.clip_grad_norm must be positive or null, got {trainer['clip_grad_norm']}")
    if trainer.get("nonfinite_loss", "stop") not in ("stop", "skip"):
        problems.append(f"trainer.nonfinite_loss must be 'stop' or 'skip', got {trainer['nonfinite_loss']!r}")
    if number.get("verbosity", 0) not in (0, 1, 2):
        problems.append(f"trainer.verbosity must be 0, 1 or 2, got {number['verbosity']}")
    if number.get("early_stop", 0) < 0:
        problems.append(f"trainer.early_stop must be 0 (off) or a positive patience, got {number['early_stop']}")
    return problems


def check_transforms(spec: Any) -> list[str]:
    """Problems with the torchvision transforms a catalogue data loader's args list (names and args)."""
    from data_loader.data_loaders import TAKES_TRANSFORMS
    from data_loader.transforms import build_transforms

    args = spec.get("args") if isinstance(spec, dict) else None
    loader = DATA_LOADERS.find(spec["type"]) if isinstance(args, dict) and isinstance(spec.get("type"), str) else None
    if not (isinstance(loader, type) and issubclass(loader, TAKES_TRANSFORMS)):
        return []
    problems = []
    for key in ("transforms", "eval_transforms"):
        try:
            build_transforms(args.get(key), f"data_loader.args.{key}")
        except UserError as e:
            problems.extend(e.problems)
    return problems


def metric_name(spec: str | dict) -> str:
    """The key a metric is logged under: its name, else its type."""
    return spec if isinstance(spec, str) else spec.get("name") or spec.get("type", "?")
