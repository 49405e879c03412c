"""ConfigParser: a validated config (a plain dict) and where it came from; it builds the registered objects the
config names and settings objects for the sections a settings class declares.

Parsing is pure: it reads files but writes nothing. The run directory is created by one explicit call,
`ConfigParser.make_run_dirs()`. Precedence, lowest first: the checkpoint's config (with -r), the -c files in order
(each after its _base_ files; together merged onto the checkpoint's config, but a section whose type changes takes
only the new args), declared options such as --lr/--bs, then key.path=value overrides in the order given. The
source of every value is kept (config/sources.py).

The registries know the user's classes once the model, data_loader and trainer packages are imported:
parse_config.py, this package's face, imports them.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import random
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from config.compose import compose, config_paths
from config.fields import from_section
from config.merge import merge_changes, with_defaults, without_markers
from config.overrides import apply_override, parse_overrides, split_path
from config.schema import SETTINGS
from config.sources import leaves, located, paths_of, render, replaced, settle
from config.validation import metric_name, validate
from utils.checkpoint import RunDirs, run_dirs_of
from utils.errors import UserError, first_line, raised_by_a_library
from utils.registry import LOSSES, METRICS, Registry
from utils.util import RUN_ID_FORMAT, write_json


SOURCES_FILE = "config_sources.json"  # beside a run's config.json: the source of each value


class ConfigParser:
    """A validated config (a plain dict) plus where it came from; builds registered objects."""

    def __init__(self, config: dict, resume: Path | None = None, run_id: str | None = None,
                 reuse_run_dir: bool = False, sources: dict[str, str] | None = None):
        filled = with_defaults(config)
        problems = validate(filled)
        if problems:
            raise UserError(located(problems, sources or {}))
        if filled["seed"] is None:  # recorded in the run's config.json, so the run can be repeated
            filled["seed"] = random.SystemRandom().randrange(2**31)
            if sources is not None:
                sources = {**sources, "seed": "drawn at random (seed was null)"}
        self.config = filled
        # where each value came from, by dotted key (None: a config given as a dict, not read from files)
        self.sources = settle(sources, filled) if sources is not None else None
        self.resume = resume  # the checkpoint resumed from (the run directory it belongs to is reused)
        self.run_id = run_id
        self.reuse_run_dir = reuse_run_dir  # --resume auto: a run directory --run-id names that has no state yet
        self.run_dirs: RunDirs | None = None

    @classmethod
    def from_args(cls, args: Any, options: Sequence = (), overrides: Sequence[str] | None = None, *,
                  resume: Path | None = None, checkpoint_config: dict | None = None,
                  reuse_run_dir: bool = False) -> "ConfigParser":
        """Build from parsed CLI args: the -c files (args.config: one path or a list, composed; merged onto
        checkpoint_config, the config of the checkpoint at resume, when resuming), declared options, key=value
        overrides, run_id. reuse_run_dir: a run directory named by run_id that exists already is started in
        (--resume auto) rather than refused."""
        paths = config_paths(args.config)
        if checkpoint_config is None and not paths:
            raise UserError("no config given: add -c config.json (or -r CHECKPOINT to resume)")
        config, sources = compose(paths)
        if checkpoint_config is not None:
            sources = {**dict.fromkeys(paths_of(checkpoint_config), f"checkpoint {resume}"), **sources}
            config = merge_changes(checkpoint_config, config)
            if paths and config.get("seed") is None:  # null: choose one; the run chose it (the -c of --resume auto)
                config["seed"] = checkpoint_config.get("seed")
                sources["seed"] = f"checkpoint {resume}"
        config = with_defaults(without_markers(config))
        problems = []
        for opt in options:
            value = getattr(args, _dest(opt.flags), None)
            if value is not None:
                apply_override(config, opt.target, None, value=value, add=True)
                sources = replaced(sources, ".".join(split_path(opt.target)), f"option {opt.flags[0]}", config)
        for path, text, add in parse_overrides(overrides if overrides is not None else args.overrides):
            try:
                apply_override(config, path, text, add=add)
            except UserError as e:
                problems.extend(e.problems)
                continue
            sources = replaced(sources, ".".join(split_path(path)), f"override {'+' * add}{path}={text}", config)
        if problems:
            raise UserError(problems + located(validate(with_defaults(config)), sources))
        return cls(config, resume=resume, run_id=getattr(args, "run_id", None), reuse_run_dir=reuse_run_dir,
                   sources=sources)

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

    def describe(self) -> str:
        """The resolved config, a value a line, each with its source (train.py --print-config)."""
        return render(self.config, self.sources or {})

    def settings(self, section: str = "trainer") -> Any:
        """The settings object of a section declared by a settings class (SETTINGS), e.g. TrainerSettings."""
        return from_section(SETTINGS[section], self.config[section])

    def named_run_dirs(self) -> RunDirs:
        """The run directories --run-id names under trainer.save_dir (whether or not they exist)."""
        return _run_dirs(Path(self.config["trainer"]["save_dir"]), self.config["name"], self.run_id)

    # -- the one place that touches the disk
    def make_run_dirs(self, before_writing: Callable[[RunDirs], None] = lambda dirs: None) -> RunDirs:
        """Create (or, when resuming, reuse) the run's directories and write config.json there. before_writing(dirs)
        is called once the checkpoint directory exists, before anything is written into it (train.py takes the run's
        lock there)."""
        if self.resume is not None:
            dirs = run_dirs_of(self.resume)
        elif self.reuse_run_dir and self.run_id:
            dirs = self.named_run_dirs()
            _mkdir(dirs.checkpoint_dir, exist_ok=True)
        else:
            dirs = _new_run_dirs(Path(self.config["trainer"]["save_dir"]), self.config["name"], self.run_id)
        before_writing(dirs)
        dirs.log_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.config, dirs.checkpoint_dir / "config.json")
        if self.sources is not None:
            sources = settle(self.sources, self.config, "set by the run (e.g. the data's class names)")
            write_json({key: sources[key] for key in leaves(self.config)}, dirs.checkpoint_dir / SOURCES_FILE)
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
        dirs = _run_dirs(save_dir, name, rid)
        try:
            _mkdir(dirs.checkpoint_dir, exist_ok=False)
            return dirs
        except FileExistsError:
            if run_id:
                raise UserError(f"run directory {dirs.checkpoint_dir} already exists; resume it with "
                                f"-r {dirs.checkpoint_dir} (or --resume auto) or choose another --run-id") from None
    raise UserError(f"could not find a free run directory for {base!r} under {save_dir}")


def _run_dirs(save_dir: Path, name: str, run_id: str) -> RunDirs:
    return RunDirs(save_dir / "models" / name / run_id, save_dir / "log" / name / run_id)


def _mkdir(path: Path, exist_ok: bool) -> None:
    """path and its parents; FileExistsError when it exists and not exist_ok; any other failure is a UserError."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if not exist_ok:
            raise
        raise UserError(f"cannot create run directory {path}: a file has that name; check trainer.save_dir") from None
    except OSError as e:
        raise UserError(f"cannot create run directory {path}: {e.strerror}; check trainer.save_dir") from None
