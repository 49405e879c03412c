"""Read, merge, override and validate config.json; build registered objects from it.

Parsing is pure: it reads files but writes nothing. The run directory is created by one explicit
call, `ConfigParser.make_run_dirs()`. Precedence, lowest first: the checkpoint's config (with -r),
the -c file (deep-merged onto it, but a section whose type changes takes only the new args),
declared options such as --lr/--bs, then key.path=value overrides in the order given.

Importing this module imports the model, data_loader and trainer packages, whose __init__ registers
the user's classes by name.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import data_loader  # noqa: F401  (registers the data loaders)
import model  # noqa: F401  (registers models, losses and metrics)
import trainer  # noqa: F401  (registers the trainers)
from base.settings import TrainerSettings
from utils import config_schema, config_validation
from utils.checkpoint import RunDirs, run_dirs_of
from utils.config_schema import OPTIONAL_SECTIONS, REQUIRED, describe, flat_keys, type_ok
from utils.config_validation import metric_name
from utils.errors import UserError, did_you_mean, first_line, raised_by_a_library
from utils.registry import LOSSES, METRICS, Registry
from utils.settings import from_section, schema_rows
from utils.util import RUN_ID_FORMAT, write_json

# Sections whose keys are declared by a settings class (type, default, range and meaning in one place).
SETTINGS = {"trainer": TrainerSettings}
SCHEMA = {**config_schema.SCHEMA, **{section: schema_rows(cls, REQUIRED) for section, cls in SETTINGS.items()}}


def validate(config: dict) -> list[str]:
    """Every problem in a defaults-filled config, all at once (empty when it is fine)."""
    return config_validation.validate(config, SCHEMA, SETTINGS)


# ---------------------------------------------------------------- reading and merging

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
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(where)
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a JSON object {{...}}, not {type(data).__name__}")
    return data


MAX_DEPTH = 64  # far more than any config needs, far less than what Python's recursion allows


def _too_deep(where: str) -> UserError:
    return UserError(f"{where} is nested too deeply for a config (objects or lists more than {MAX_DEPTH} levels "
                     f"inside each other); flatten it")


def _depth(value: Any) -> int:
    """How many objects/lists deep value goes (without recursion: the value may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


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
    """A copy of config with every missing key that has a default filled in."""
    out = copy.deepcopy(config)
    for key, spec in schema.items():
        if isinstance(spec, dict):
            if key in OPTIONAL_SECTIONS and out.get(key) is None:
                out[key] = None  # absent and null mean the same: none
                continue
            if isinstance(out.setdefault(key, {}), dict):
                out[key] = with_defaults(out[key], spec)
        elif key not in out and spec[1] is not REQUIRED:
            out[key] = copy.deepcopy(spec[1])
    return out


# ---------------------------------------------------------------- overrides

def split_path(path: str) -> list[str]:
    """'a.b.c' (or the original template's 'a;b;c') -> ['a', 'b', 'c']."""
    return [p for p in path.replace(";", ".").split(".") if p]


def coerce(text: str, current: Any, path: str) -> Any:
    """The override text as JSON (else a string), of the type of the value it replaces or one the schema allows."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = text
    if _depth(value) > MAX_DEPTH:
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
    """Set config[path] from text (parsed) or value; an unknown path raises unless add is set."""
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
            node = node[key]


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
    old_paths, new_paths = _leaves(old), _leaves(new)
    return sorted(k for k in set(old_paths) | set(new_paths)
                  if k.split(".")[0] in sections and old_paths.get(k) != new_paths.get(k))


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix.rstrip("."): node}
    out = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


# ---------------------------------------------------------------- the parser object

class ConfigParser:
    """A validated config (a plain dict) plus where it came from; builds registered objects."""

    def __init__(self, config: dict, resume: Path | None = None, run_id: str | None = None):
        config = with_defaults(config)
        problems = validate(config)
        if problems:
            raise UserError(problems)
        if config["seed"] is None:  # recorded in the run's config.json, so the run can be repeated
            config["seed"] = random.SystemRandom().randrange(2**31)
        self.config = config
        self.resume = resume  # the checkpoint resumed from (the run directory it belongs to is reused)
        self.run_id = run_id
        self.run_dirs: RunDirs | None = None

    @classmethod
    def from_args(cls, args: Any, options: Sequence = (), overrides: Sequence[str] | None = None, *,
                  resume: Path | None = None, checkpoint_config: dict | None = None) -> "ConfigParser":
        """Build from parsed CLI args: the config file (merged onto checkpoint_config, the config of the
        checkpoint at resume, when resuming), declared options, key=value overrides, run_id."""
        if checkpoint_config is not None:
            config = checkpoint_config
            if args.config:
                config = merge_changes(config, read_json(args.config))
        elif args.config:
            config = read_json(args.config)
        else:
            raise UserError("no config given: add -c config.json (or -r CHECKPOINT to resume)")
        config = with_defaults(config)
        problems = []
        for opt in options:
            value = getattr(args, _dest(opt.flags), None)
            if value is not None:
                apply_override(config, opt.target, None, value=value, add=True)
        for path, text, add in parse_overrides(overrides if overrides is not None else args.overrides):
            try:
                apply_override(config, path, text, add=add)
            except UserError as e:
                problems.extend(e.problems)
        if problems:
            raise UserError(problems + validate(with_defaults(config)))
        return cls(config, resume=resume, run_id=getattr(args, "run_id", None))

    # -- dict-like access, as in the original template
    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    # -- building objects
    def init_obj(self, name: str, registry: Registry | Any, *args, **kwargs) -> Any:
        """registry[config[name].type](*args, **config[name].args, **kwargs); kwargs win over the config."""
        spec = self.config[name]
        cls = _lookup(registry, spec["type"], f"{name}.type")
        with _refusals(name, spec["type"], spec["args"], isinstance(registry, Registry) and registry.from_library(cls)):
            return cls(*args, **{**spec["args"], **kwargs})

    def init_ftn(self, name: str, registry: Registry | Any, *args, **kwargs) -> Any:
        """registry[config[name].type] with its args bound by functools.partial."""
        spec = self.config[name]
        fn = _lookup(registry, spec["type"], f"{name}.type")
        return functools.partial(fn, *args, **{**spec["args"], **kwargs})

    def build_loss(self) -> Any:
        """The loss callable: a function (args bound) or an instance of a loss class."""
        return _build_callable(self.config["loss"], LOSSES, "loss")

    def build_metrics(self) -> dict[str, Any]:
        """{name: metric callable} in config order."""
        return {metric_name(spec): _build_callable(spec, METRICS, f"metrics.{i}")
                for i, spec in enumerate(self.config["metrics"])}

    def settings(self, section: str = "trainer") -> Any:
        """The settings object of a section declared by a settings class (SETTINGS), e.g. TrainerSettings."""
        return from_section(SETTINGS[section], self.config[section])

    # -- the one place that touches the disk
    def make_run_dirs(self) -> RunDirs:
        """Create (or, when resuming, reuse) the run's directories and write config.json there."""
        if self.resume is not None:
            dirs = run_dirs_of(self.resume)
        else:
            dirs = _new_run_dirs(Path(self.config["trainer"]["save_dir"]), self.config["name"], self.run_id)
        dirs.log_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.config, dirs.checkpoint_dir / "config.json")
        self.run_dirs = dirs
        return dirs


def _dest(flags: Sequence[str]) -> str:
    long = next((f for f in flags if f.startswith("--")), flags[0])
    return long.lstrip("-").replace("-", "_")


def _lookup(registry: Registry | Any, name: str, path: str) -> Any:
    if isinstance(registry, Registry):
        return registry.get(name, path)
    try:  # a module, as the original template's init_obj took
        return getattr(registry, name)
    except AttributeError:
        raise UserError(f"{path}: {registry.__name__} has no {name!r}") from None


def _build_callable(spec: str | dict, registry: Registry, path: str) -> Any:
    spec = {"type": spec} if isinstance(spec, str) else spec
    obj = registry.get(spec["type"], path)
    args = spec.get("args", {})
    if inspect.isclass(obj):
        with _refusals(path, spec["type"], args, registry.from_library(obj)):
            return obj(**args)
    return functools.partial(obj, **args) if args else obj


# What a library raises when the arguments it was given do not suit it (e.g. Adam with betas=[]).
LIBRARY_REFUSALS = (TypeError, ValueError, IndexError, KeyError, RuntimeError, AssertionError, OverflowError)


@contextlib.contextmanager
def _refusals(section: str, name: str, args: dict, library: bool) -> Iterator[None]:
    """Turn a library class refusing the config's arguments, or any class failing to allocate what they ask
    for, into one line naming the section, the class and the library's message; an error in the user's or
    the template's own code keeps its traceback."""
    try:
        yield
    except MemoryError:
        raise UserError(f"{section}.args: building {name} with {args} ran out of memory; use smaller sizes") from None
    except LIBRARY_REFUSALS as e:
        message = first_line(e)
        if isinstance(e, RuntimeError) and ("alloc" in message.lower() or "out of memory" in message.lower()):
            raise UserError(f"{section}.args: building {name} with {args} failed to allocate memory ({message}); "
                            f"use smaller sizes") from None
        if library or raised_by_a_library(e):  # e.g. a zoo model handing a config value on to nn.Conv2d
            raise UserError(f"{section}.args: {name} refused {args}: {message}") from None
        raise


def _new_run_dirs(save_dir: Path, name: str, run_id: str | None) -> RunDirs:
    """Fresh run directories; a timestamp id gets a suffix when taken, an explicit id must be new."""
    base = run_id or datetime.now().strftime(RUN_ID_FORMAT)
    for n in range(1000):
        rid = base if n == 0 else f"{base}_{n}"
        dirs = RunDirs(save_dir / "models" / name / rid, save_dir / "log" / name / rid)
        try:
            dirs.checkpoint_dir.mkdir(parents=True, exist_ok=False)
            return dirs
        except FileExistsError:
            if run_id:
                raise UserError(f"run directory {dirs.checkpoint_dir} already exists; resume it with "
                                f"-r {dirs.checkpoint_dir} or choose another --run-id") from None
        except OSError as e:
            raise UserError(f"cannot create run directory {dirs.checkpoint_dir}: {e.strerror}; "
                            f"check trainer.save_dir") from None
    raise UserError(f"could not find a free run directory for {base!r} under {save_dir}")
