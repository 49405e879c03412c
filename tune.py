"""Search hyper-parameters with Optuna, each trial a normal train.py run:
python tune.py -c config.json --space space.json --trials 50 [--study NAME] [--storage URL] [--pruner median]
python tune.py --study NAME --storage URL --report"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from logger import reporter
from logger.loggers import entries
from logger.mlflow_logger import end_study_run, study_run, tracking_uri
from logger.reporter import read_rows
from parse_config import ConfigParser, apply_override, split_path, validate, with_defaults
from utils.checkpoint import RunDirs
from utils.errors import UserError, did_you_mean, exit_cli, first_line
from utils.interrupt import SignalStop
from utils.monitor import parse_monitor

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats, retries and plots are "experimental"
optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune.py prints a line per trial itself

TRAIN = Path(__file__).resolve().parent / "train.py"
KINDS = ("float", "int", "categorical")
OPTIONS = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}
EXAMPLES = '{"float": [1e-4, 1e-1], "log": true}, {"int": [16, 64], "step": 16} or {"categorical": [32, 64, 128]}'
PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "none": optuna.pruners.NopPruner}
PRUNER_DEFAULTS = {"median": {"n_warmup_steps": 1}}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials --trials counts
POLL_S = 0.2  # how often a running trial's metrics.jsonl is read
STOP_WAIT_S = 120  # how long a trial stopped by SIGTERM may take to save before it is killed
MAX_RETRIES = 3  # times a trial whose worker died is retried
MAX_FAILURES_IN_A_ROW = 3  # failed trials in a row that stop this process's search
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
# Run as a child's first program on Linux: the child gets SIGTERM (saves and exits) when tune.py dies, even by kill -9,
# so no orphaned train.py goes on writing a run directory that a retried trial resumes.
PDEATHSIG_SHIM = ("import ctypes, os, signal, sys\n"
                  "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
                  "if os.getppid() != int(sys.argv[1]): os._exit(143)\n"
                  "os.execvp(sys.argv[2], sys.argv[2:])")


def build_parser() -> argparse.ArgumentParser:
    """The tune.py command line."""
    parser = argparse.ArgumentParser(description="Search hyper-parameters with Optuna; every trial is a train.py run.")
    parser.add_argument("-c", "--config", action="append",
                        help="the config file every trial starts from (JSON or YAML; again to merge several)")
    parser.add_argument("--space", help="JSON file mapping config paths to distributions")
    parser.add_argument("--trials", type=int, help="the study's total of finished (complete or pruned) trials")
    parser.add_argument("--study", help="study name (default: the config's name)")
    parser.add_argument("--storage", help="SQLAlchemy URL or journal:PATH (default: sqlite:///<save_dir>/studies.db)")
    parser.add_argument("--pruner", default="median",
                        help="median, hyperband or none, with optional arguments: median:n_startup_trials=2")
    parser.add_argument("--launcher", help='command that replaces "python" for each trial, e.g. "torchrun '
                                           '--nproc_per_node=2"')
    parser.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                        help="a running trial is marked alive every SECONDS; one silent for twice that is retried")
    parser.add_argument("--report", action="store_true", help="print the study's trials, write the best config and "
                                                              "plots; run nothing")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Validate the config and the space, open the study, run trials until --trials are finished, report."""
    args = build_parser().parse_args(argv)
    if args.heartbeat < 1:
        raise UserError(f"--heartbeat {args.heartbeat}: give a whole number of seconds, 1 or more")
    if args.report:
        study, folder = open_for_report(args)
        report(study, folder)
        return
    missing = [flag for flag, value in (("-c", args.config), ("--space", args.space), ("--trials", args.trials))
               if value is None]
    if missing:
        raise UserError(f"give {', '.join(missing)}: python tune.py -c config.json --space space.json --trials 50 "
                        f"(or --report to show a study)")
    if args.trials < 1:
        raise UserError(f"--trials {args.trials}: give the number of trials the study should finish, 1 or more")
    config = ConfigParser.from_args(args, overrides=[]).config
    mode, key = parse_monitor(config["trainer"]["monitor"])
    if mode is None:
        raise UserError(f"trainer.monitor is 'off' in {' + '.join(args.config)}: tune.py needs a value to minimise or "
                        f"maximise; set it, e.g. \"monitor\": \"min val_loss\"")
    space = read_space(Path(args.space), config)
    pruner = make_pruner(args.pruner)
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    name = study_name(args.study, config["name"])
    save_dir = Path(config["trainer"]["save_dir"])
    storage = open_storage(args.storage or default_storage(save_dir), args.heartbeat)
    study = open_study(storage, name, "minimize" if mode == "min" else "maximize", pruner)
    record_study(study, config)
    tracked = mlflow_study(config, name, space, save_dir)
    search = Search(study, storage, [Path(path) for path in args.config], config, space, launcher, args.heartbeat,
                    save_dir / "studies" / name, tracked.overrides if tracked else [])
    search.run(args.trials)
    report(study, search.folder)
    if tracked is not None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        end_study_run(tracked.uri, tracked.run_id, reporter.FAILED if search.gave_up else reporter.FINISHED,
                      {f"best_{search.key}": study.best_value} if complete else {})
    if search.gave_up is not None:
        raise UserError(search.gave_up)


# ---------------------------------------------------------------- the space

@dataclass(frozen=True)
class Param:
    """One entry of space.json: a config path (as in overrides) and the distribution Optuna samples it from."""
    path: str
    add: bool  # written +path: a key the config does not have
    kind: str  # float, int or categorical
    values: tuple  # (low, high), or the choices
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """This parameter's value for the trial (a retried trial's own value again)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.path, *self.values, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, *self.values, step=self.step, log=self.log)

    def override(self, value: Any) -> str:
        """The train.py argument that sets the value: path=JSON."""
        return f"{'+' if self.add else ''}{self.path}={json.dumps(value)}"


def read_space(path: Path, config: dict) -> list[Param]:
    """The parameters of a space file, each checked as a distribution and against the config at its extremes (low
    and high, or each choice) as train.py checks overrides; every problem at once."""
    data = _read_space_file(path)
    params, problems = [], []
    for key, spec in data.items():
        try:
            param = parse_param(key, spec, path.name)
        except UserError as e:
            problems.extend(e.problems)
            continue
        problems.extend(check_against(param, config, path.name))
        params.append(param)
    if problems:
        raise UserError(problems)
    return params


def _read_space_file(path: Path) -> dict:
    where = f"space file {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{where} not found; give an existing file with --space") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{where} cannot be read: {first_line(e)}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where} must be a JSON object mapping config paths to distributions, e.g. "
                        f'{{"optimizer.args.lr": {{"float": [1e-4, 1e-1], "log": true}}}}')
    return data


def parse_param(key: str, spec: Any, file: str = "space.json") -> Param:
    """One space entry as a Param; a malformed one is a UserError naming the path and the fix."""
    where = f"{file}: {key}"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected an object such as {EXAMPLES}, got {json.dumps(spec)}")
    known = KINDS + OPTIONS["float"]
    for name in spec:
        if name not in known:
            raise UserError(f"{where}: unknown key {name!r}.{did_you_mean(name, known)} Write {EXAMPLES}")
    kinds = [name for name in KINDS if name in spec]
    if len(kinds) != 1:
        both = f" (not {' and '.join(kinds)})" if kinds else ""
        raise UserError(f"{where}: give exactly one of \"float\", \"int\" or \"categorical\"{both}, e.g. {EXAMPLES}")
    kind, value = kinds[0], spec[kinds[0]]
    for option in set(spec) - {kind} - set(OPTIONS[kind]):
        raise UserError(f"{where}: \"{option}\" applies to \"float\" and \"int\" ranges, not to \"categorical\"; "
                        f"remove it")
    add, path = key.startswith("+"), ".".join(split_path(key.lstrip("+")))
    if not path:
        raise UserError(f"{where}: not a config path; write one as in overrides, e.g. optimizer.args.lr")
    if kind == "categorical":
        if not isinstance(value, list) or not value or any(not _scalar(v) for v in value):
            raise UserError(f"{where}: \"categorical\" takes a non-empty list of choices (numbers, strings, true, "
                            f"false or null), e.g. [32, 64, 128]; got {json.dumps(value)}")
        return Param(path, add, kind, tuple(value))
    number = int if kind == "int" else (int, float)
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, number) or not math.isfinite(v) for v in value)):
        example = "[16, 64]" if kind == "int" else "[1e-4, 1e-1]"
        raise UserError(f"{where}: \"{kind}\" takes [low, high], two {'integers' if kind == 'int' else 'numbers'}, "
                        f"e.g. {example}; got {json.dumps(value)}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise UserError(f"{where}: \"log\" is true or false, got {json.dumps(log)}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise UserError(f"{where}: \"step\" is a positive {'integer' if kind == 'int' else 'number'}, "
                        f"got {json.dumps(step)}")
    if log and step is not None:
        raise UserError(f"{where}: \"log\" and \"step\" cannot be combined; remove one")
    if value[0] > value[1]:
        raise UserError(f"{where}: low {value[0]} is above high {value[1]}; write [low, high]")
    if log and value[0] <= 0:
        raise UserError(f"{where}: a log scale needs low > 0, got {value[0]}; raise low or remove \"log\"")
    return Param(path, add, kind, tuple(value), log, step)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, str)) or isinstance(value, (int, float)) and math.isfinite(value)


def check_against(param: Param, config: dict, file: str = "space.json") -> list[str]:
    """The problems of the config with the parameter at each extreme (and inside a float range): the messages train.py
    gives for the override (an unknown path, with a did-you-mean) and for the config it makes (a wrong type, a value
    out of range)."""
    base = with_defaults(config)
    problems: list[str] = []
    values = param.values
    if param.kind == "float" and values[0] < values[1]:  # and a value between, which no integer setting takes
        low, high = values
        values = (*values, low * (high / low) ** 0.382 if param.log else low + (high - low) * 0.382)
    for value in values:
        trial_config = copy.deepcopy(base)
        try:
            apply_override(trial_config, param.path, json.dumps(value), add=param.add)
        except UserError as e:
            return [f"{file}: {problem}" for problem in e.problems]
        for problem in validate(trial_config):
            line = f"{file}: {param.path}={json.dumps(value)}: {problem}"
            if line not in problems:
                problems.append(line)
    return problems


# ---------------------------------------------------------------- storage, study, pruner

def default_storage(save_dir: Path) -> str:
    """sqlite:///<save_dir>/studies.db: one file holding every study of the project."""
    return f"sqlite:///{save_dir / 'studies.db'}"


def open_storage(url: str, heartbeat: int, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """journal:PATH as a JournalStorage (for shared disks), anything else as an RDBStorage with heartbeats: a running
    trial whose worker died is failed after the grace period and retried with its parameters."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if must_exist and not path.is_file():
            raise UserError(f"--storage {url}: no such journal file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url}: not a database URL; give one such as sqlite:///saved/studies.db or "
                        f"postgresql://user@host/db, or journal:PATH") from None
    engine_kwargs = {}
    if parsed.drivername.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers share the file: wait for its lock
        if parsed.database and parsed.database != ":memory:":
            if must_exist and not Path(parsed.database).is_file():
                raise UserError(f"--storage {url}: no such database file {parsed.database}")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):  # workers started together may create the tables at the same moment
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                              grace_period=2 * heartbeat, heartbeat_stale_trial_callback=RETRY)
        except sqlalchemy.exc.OperationalError as e:
            if attempt == 4:
                raise UserError(f"--storage {url}: {first_line(e)}") from None
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
            raise UserError(f"--storage {url}: {first_line(e)}") from None


def study_name(given: str | None, config_name: str) -> str:
    """--study, else the config's name; used in run ids and folder names, so letters, digits, '.', '_', '-'."""
    name = given or config_name
    if not STUDY_NAME.fullmatch(name):
        where = f"--study {name!r}" if given else f"the config's name {name!r} (the default study name)"
        raise UserError(f"{where}: a study name is used in run directory names; use letters, digits, '.', '_' and "
                        f"'-'{'' if given else ', or give --study NAME'}")
    return name


def open_study(storage: optuna.storages.BaseStorage, name: str, direction: str,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The study (created when new); one that optimises in the other direction is an error."""
    for attempt in range(5):
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner,
                                        load_if_exists=True)
            break
        except sqlalchemy.exc.OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    if study.direction.name.lower() != direction:
        raise UserError(f"study {name!r} {study.direction.name.lower()}s its value, but trainer.monitor asks to "
                        f"{direction} it; give another --study")
    return study


def record_study(study: optuna.Study, config: dict) -> None:
    """Keep what --report needs without -c (the monitored key, save_dir, the config's name) in the study; a search
    that monitors another key than the study's is an error."""
    recorded = study.user_attrs
    monitor = config["trainer"]["monitor"]
    if recorded.get("monitor", monitor) != monitor:
        raise UserError(f"study {study.study_name!r} optimises {recorded['monitor']!r}, but trainer.monitor is "
                        f"{monitor!r}; give another --study or set trainer.monitor back")
    for key, value in (("monitor", monitor), ("save_dir", str(config["trainer"]["save_dir"])),
                       ("name", config["name"])):
        if key not in recorded:
            study.set_user_attr(key, value)


def make_pruner(spec: str) -> optuna.pruners.BasePruner:
    """'median', 'hyperband' or 'none', optionally with keyword arguments: 'median:n_startup_trials=2,...' (values
    as JSON). MedianPruner defaults to n_warmup_steps=1."""
    name, _, arg_text = spec.partition(":")
    if name not in PRUNERS:
        raise UserError(f"--pruner {spec}: unknown pruner {name!r}.{did_you_mean(name, PRUNERS)} Use one of "
                        f"{', '.join(PRUNERS)}")
    cls = PRUNERS[name]
    kwargs = dict(PRUNER_DEFAULTS.get(name, {}))
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    for item in filter(None, arg_text.split(",")):
        key, sep, text = item.partition("=")
        if not sep or key not in accepted:
            hint = did_you_mean(key, accepted) if sep else ""
            raise UserError(f"--pruner {spec}: {item!r} is not an argument of {cls.__name__}.{hint} Write "
                            f"{name}:name=value,... with names from: {', '.join(accepted) or 'none'}")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"--pruner {spec}: {cls.__name__} refused {kwargs}: {first_line(e)}") from None


@dataclass(frozen=True)
class TrackedStudy:
    """The study's MLflow run, which each trial's run is nested under."""
    uri: str  # the tracking URI
    run_id: str
    overrides: list[str]  # what each new trial's train.py is given: the "mlflow" logger with parent_run_id


def mlflow_study(config: dict, study: str, space: list[Param], save_dir: Path) -> TrackedStudy | None:
    """With the "mlflow" logger in the config's "loggers": the study's MLflow run (every worker finds the same one), and
    the override that gives the logger its tracking URI and that run as parent_run_id; None without it."""
    specs = config.get("loggers", [])
    named = entries(specs)
    found = [i for i, (logger, _) in enumerate(named) if logger == "mlflow"]
    if not found:
        return None
    i, args = found[0], named[found[0]][1]
    uri = tracking_uri(args.get("tracking_uri"), save_dir)
    run_id = study_run(uri, config["name"], study, {p.path: {p.kind: list(p.values), "log": p.log, "step": p.step}
                                                    for p in space})
    loggers = [*specs[:i], {"type": "mlflow", "args": {**args, "tracking_uri": uri, "parent_run_id": run_id}},
               *specs[i + 1:]]
    return TrackedStudy(uri, run_id, [f"loggers={json.dumps(loggers)}"])


# ---------------------------------------------------------------- running trials

class TrialFailed(Exception):
    """A trial's train.py failed or left no monitored value; the trial is FAIL and the search goes on."""


class Stopped(BaseException):
    """A stop signal (SIGINT, SIGTERM, SIGUSR1) arrived; raised where tune.py checks for one, never in the middle of a
    storage operation (a KeyboardInterrupt there can leave the SQLite file locked)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class NoSlot(BaseException):
    """Other workers hold the study's last trials; leave study.optimize without telling a result (a BaseException,
    so Optuna neither fails nor prunes the trial: it was handed back as WAITING)."""


class Search:
    """Runs a study's trials as train.py processes until --trials of them are finished, sharing the work with other
    tune.py processes on the same storage."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, configs: list[Path], config: dict,
                 space: list[Param], launcher: list[str], heartbeat: int, folder: Path, extra: Sequence[str] = ()):
        """configs: the -c files, in order; extra: overrides every new trial's train.py is given after the space's
        values."""
        self.study, self.storage, self.space, self.launcher = study, storage, space, launcher
        self.extra = list(extra)
        self.configs, self.heartbeat, self.folder = configs, heartbeat, folder
        self.mode, self.key = parse_monitor(config["trainer"]["monitor"])
        save_dir = Path(config["trainer"]["save_dir"])
        self.models, self.logs = save_dir / "models" / config["name"], save_dir / "log" / config["name"]
        self.optuna_heartbeat = isinstance(storage, RDBStorage)  # else tune.py marks trials alive in a user attr
        self.current: int | None = None  # the number of the trial under way
        self.gave_up: str | None = None
        self.last_beat = 0.0
        self.signals = SignalStop()

    # -- the loop
    def run(self, total: int) -> None:
        """Run trials until `total` are finished (complete or pruned), counting other workers' running trials as
        taken; wait while they run, in case one fails or its worker dies. A stop signal stops the trial under way
        (its train.py saves) and queues it again; a second one exits at once."""
        with self.signals:
            try:
                self._run(total)
            except Stopped as stop:
                self.interrupted(stop.signum)

    def _run(self, total: int) -> None:
        finished, running = self.counts()
        print(f"study {self.study.study_name!r}: {finished} of {total} trials finished"
              f"{f', {running} running elsewhere' if running else ''}", flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        failures, said = 0, False
        while True:
            self.check_signals()
            self.fail_stale_trials()
            finished, running = self.counts()
            if finished >= total:
                return
            if finished + running >= total:
                if not said:
                    numbers = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                    print(f"waiting for running trial(s) {', '.join(map(str, numbers))} of other workers (one whose "
                          f"worker died is retried {2 * self.heartbeat} s after its last heartbeat)", flush=True)
                said = True
                self.pause(min(5, self.heartbeat))
                continue
            said, self.current = False, None
            try:  # one trial per call: the count above, of every worker's trials, decides whether another starts
                self.study.optimize(lambda trial: self.objective(trial, total), n_trials=1)
                failures = 0
            except NoSlot:
                continue
            except TrialFailed as e:
                print(f"trial {self.current}: FAIL: {e}", flush=True)
                failures += 1
                if failures >= MAX_FAILURES_IN_A_ROW:
                    self.gave_up = (f"{failures} trials in a row failed, the last one (trial {self.current}) with: "
                                    f"{e}; fix the cause and run the same command again")
                    return

    def counts(self) -> tuple[int, int]:
        """(finished trials, running trials) of the study, all workers'."""
        trials = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

    def claim(self, trial: optuna.Trial, total: int) -> bool:
        """Whether the trial just started is within `total`: the finished trials and those running that started
        before it leave it a place. Two workers starting the last trial at once agree on which one runs."""
        trials = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        mine = next(t for t in trials if t.number == trial.number)
        taken = sum(t.state != TrialState.RUNNING or (t.datetime_start, t.number) < (mine.datetime_start, mine.number)
                    for t in trials if t.number != trial.number)
        return taken < total

    def fail_stale_trials(self) -> None:
        """Running trials whose worker stopped sending heartbeats become FAIL and are queued again with their
        parameters and run directory (Optuna's RDB heartbeats; for other storages the 'heartbeat' user attr)."""
        if self.optuna_heartbeat:
            optuna.storages.fail_stale_trials(self.study)
            return
        now = time.time()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp())
            if now - beat > 2 * self.heartbeat:
                try:
                    if not self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                        continue
                except UpdateFinishedTrialError:  # another worker failed it first
                    continue
                RETRY(self.study, self.storage.get_trial(trial._trial_id))

    def check_signals(self) -> None:
        """Raise Stopped if a stop signal has arrived."""
        if self.signals.requested is not None:
            raise Stopped(self.signals.requested)

    def pause(self, seconds: float) -> None:
        """Sleep, watching for stop signals."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_signals()
            time.sleep(POLL_S)

    def interrupted(self, signum: int) -> None:
        """After a stop signal: the trial under way (its train.py stopped and saved) becomes FAIL and is queued
        again, so that the same command continues it from its checkpoint; exit with the signal's status."""
        running = self.current is not None and \
            self.study.get_trials(deepcopy=False)[self.current].state == TrialState.RUNNING
        if running:
            self.study.tell(self.current, state=TrialState.FAIL)
            RETRY(self.study, self.study.get_trials(deepcopy=False)[self.current])
        saved = f"trial {self.current} saved its state; " if running else ""
        print(f"stopped by {signal.Signals(signum).name}: {saved}run the same command again to continue "
              f"{'it and ' if running else ''}the study", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    # -- one trial
    def objective(self, trial: optuna.Trial, total: int) -> float:
        """Run the trial's train.py, report its monitored values and prune it when told; the best value."""
        if not self.claim(trial, total):
            # hand the trial back unused, as if never asked for (the storage knows a trial by its internal id)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            raise NoSlot()
        self.current = trial.number
        self.beat(trial, force=True)
        values = {param.path: param.suggest(trial) for param in self.space}
        command, run, resumed = self.command(trial, values)
        trial.set_user_attr("run_dir", str(run.checkpoint_dir))
        trial.set_user_attr("log_dir", str(run.log_dir))
        output = self.folder / f"trial-{trial.number}.log"
        print(f"trial {trial.number}: {format_params(values)}; {'resuming ' if resumed else ''}{run.checkpoint_dir}",
              flush=True)
        self.check_signals()
        process = start(command, output)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{process.pid}")
        self.follow(trial, process, run.log_dir / "metrics.jsonl")
        if process.returncode != 0:
            raise TrialFailed(f"train.py exited with status {process.returncode}: {last_error(output)} "
                              f"(output: {output})")
        best = best_value(read_rows(run.log_dir / "metrics.jsonl"), self.key, self.mode)
        if best is None:
            raise TrialFailed(f"{run.log_dir / 'metrics.jsonl'} holds no value of {self.key} (output: {output})")
        print(f"trial {trial.number}: COMPLETE, best {self.key} {best:.6g}", flush=True)
        return best

    def command(self, trial: optuna.Trial, values: dict) -> tuple[list[str], RunDirs, bool]:
        """train.py's command line, its run directories and whether it resumes: a retried trial whose run has a
        checkpoint resumes it with -r (its user attrs are its failed trial's); any other trial is a new run
        <study>-trial-<N> with the values as overrides."""
        earlier = trial.user_attrs.get("run_dir")
        if earlier and any(Path(earlier).glob("*.pth")):
            trial.set_user_attr("resumed_from_trial", RETRY.retried_trial_number(
                self.study.get_trials(deepcopy=False)[trial.number]))
            run = RunDirs(Path(earlier), Path(trial.user_attrs["log_dir"]))
            return [*self.launcher, str(TRAIN), "-r", earlier], run, True
        run_id = f"{self.study.study_name}-trial-{trial.number}"
        run = RunDirs(self.models / run_id, self.logs / run_id)
        if run.checkpoint_dir.exists():
            raise UserError(f"run directory {run.checkpoint_dir} already exists, from an earlier study named "
                            f"{self.study.study_name!r}; give another --study, or move that directory away")
        overrides = [param.override(values[param.path]) for param in self.space]
        configs = [arg for path in self.configs for arg in ("-c", str(path))]
        return [*self.launcher, str(TRAIN), *configs, "--run-id", run_id, *overrides, *self.extra], run, False

    def follow(self, trial: optuna.Trial, process: subprocess.Popen, metrics: Path) -> None:
        """Until the process ends: report each new monitored value (at the row's step, else its epoch) and, when the
        pruner says so, stop the process with SIGTERM (train.py saves and exits 143) and prune the trial."""
        reported: set[int] = set()
        try:
            while True:
                self.check_signals()
                done = process.poll() is not None  # read before the file, so the last rows are seen
                for step, value in monitored(read_rows(metrics), self.key):
                    if step in reported:
                        continue
                    trial.report(value, step)
                    reported.add(step)
                    if not done and trial.should_prune():
                        stop(process)
                        print(f"trial {trial.number}: PRUNED at step {step} ({self.key} {value:.6g})", flush=True)
                        raise optuna.TrialPruned(f"at step {step}: {self.key} {value}")
                if done:
                    return
                self.beat(trial)
                time.sleep(POLL_S)
        except BaseException:
            stop(process)
            raise

    def beat(self, trial: optuna.Trial, force: bool = False) -> None:
        """Mark the trial alive, for storages without Optuna's heartbeats (the journal file)."""
        if self.optuna_heartbeat:
            return
        now = time.time()
        if force or now - self.last_beat >= self.heartbeat:
            trial.set_user_attr("heartbeat", now)
            self.last_beat = now


def start(command: list[str], output: Path) -> subprocess.Popen:
    """Start a trial's process in its own process group (tune.py alone decides which signal it gets), its output to a
    file; on Linux it is sent SIGTERM if tune.py dies."""
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-c", PDEATHSIG_SHIM, str(os.getpid()), *command]
    with open(output, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (train.py finishes its step, saves and exits 143); killed if it has not exited after STOP_WAIT_S."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def monitored(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of each row with a finite value of key: the row's 'step' if it has one, else its 'epoch'."""
    out = []
    for row in rows:
        value, step = row.get(key), row.get("step", row.get("epoch"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and isinstance(step, int):
            out.append((step, float(value)))
    return out


def best_value(rows: list[dict], key: str, mode: str) -> float | None:
    """The best monitored value of a run (min or max), or None when it logged none."""
    values = [value for _, value in monitored(rows, key)]
    return (min if mode == "min" else max)(values) if values else None


def last_error(output: Path) -> str:
    """The last 'error: ...' line of a trial's output, else its last line."""
    try:
        lines = [line.strip() for line in output.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def format_params(values: dict) -> str:
    """'optimizer.args.lr=0.00123 data_loader.args.batch_size=64'."""
    return " ".join(f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={json.dumps(value)}"
                    for path, value in values.items())


# ---------------------------------------------------------------- results

def open_for_report(args: argparse.Namespace) -> tuple[optuna.Study, Path]:
    """The existing study --report names, and its folder <save_dir>/studies/<study>/ (save_dir from -c, else the
    one recorded in the study)."""
    config = ConfigParser.from_args(args, overrides=[]).config if args.config else None
    if config is None and not (args.study and args.storage):
        raise UserError("--report without -c needs --study NAME and --storage URL")
    name = study_name(args.study, config["name"] if config else "")
    url = args.storage or default_storage(Path(config["trainer"]["save_dir"]))
    storage = open_storage(url, args.heartbeat, must_exist=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise UserError(f"no study {name!r} in {url}.{did_you_mean(name, names)} Studies there: "
                        f"{', '.join(names) or 'none'}") from None
    save_dir = config["trainer"]["save_dir"] if config else study.user_attrs.get("save_dir")
    if save_dir is None:
        raise UserError(f"study {name!r} does not say where its runs are; give -c with its config")
    return study, Path(save_dir) / "studies" / name


def report(study: optuna.Study, folder: Path) -> None:
    """Print the trials best first, write the best trial's config as best_config.json and the plots into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    key = parse_monitor(study.user_attrs.get("monitor", "min value"))[1]
    print(trial_table(study, key))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        print("no complete trial yet: no best_config.json or plots")
        return
    best = study.best_trial
    print(f"best: trial {best.number}, {key} {best.value:.6g}, {format_params(best.params)}")
    source = Path(best.user_attrs.get("run_dir", "")) / "config.json"
    if source.is_file():
        (folder / "best_config.json").write_text(source.read_text())
        print(f"wrote {folder / 'best_config.json'}: train it with python train.py -c {folder / 'best_config.json'}")
    else:
        print(f"the best trial's run directory is not on this machine ({source.parent} on "
              f"{best.user_attrs.get('worker', '?').split(':')[0]}): no best_config.json")
    for line in write_plots(study, folder):
        print(line)


def trial_table(study: optuna.Study, key: str) -> str:
    """number, state, value, params and run directory of each trial: complete ones best first, then pruned ones
    best first, then the rest by number."""
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def rank(t: FrozenTrial) -> tuple:
        has_value = t.value is not None and t.state in order
        return order.get(t.state, 2), sign * t.value if has_value else 0, t.number

    rows = [("trial", "state", key, "params", "run dir")]
    for t in sorted(study.get_trials(deepcopy=False), key=rank):
        value = f"{t.value:.6g}" if t.value is not None else "-"
        rows.append((str(t.number), t.state.name, value, format_params(t.params) or "-",
                     t.user_attrs.get("run_dir", "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def write_plots(study: optuna.Study, folder: Path) -> list[str]:
    """optimization_history.png, and param_importances.png when two complete trials with differing parameters
    exist; a line for each (what was written or why not)."""
    import matplotlib  # lazily: only the plots need it
    matplotlib.use("Agg")  # no display: draw into files
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    lines = []
    ax = plots.plot_optimization_history(study)
    ax.figure.savefig(folder / "optimization_history.png", bbox_inches="tight")
    plt.close(ax.figure)
    lines.append(f"wrote {folder / 'optimization_history.png'}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = {name for name in complete[0].params if len({json.dumps(t.params.get(name)) for t in complete}) > 1}
    if len(complete) < 2 or not varying:
        lines.append("no param_importances.png: parameter importances need 2 or more complete trials whose "
                     "parameters differ")
        return lines
    try:
        ax = plots.plot_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        lines.append(f"no param_importances.png: {first_line(e)}")
        return lines
    ax.figure.savefig(folder / "param_importances.png", bbox_inches="tight")
    plt.close(ax.figure)
    lines.append(f"wrote {folder / 'param_importances.png'}")
    return lines


if __name__ == "__main__":
    exit_cli(main)
