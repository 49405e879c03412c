"""Run directories read back, for runs.py: a run's status, epochs, best monitored value, duration and start from its
run.json, config.json, metrics.jsonl and checkpoints (a run written before run.json existed says what those say);
finding runs under a save directory; the config keys and environment entries two runs differ in. Reads files only:
no torch, no checkpoint loaded."""
from __future__ import annotations

import glob
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterable, Mapping

from utils.errors import UserError, did_you_mean
from utils.manifest import FAILED, FINISHED, RUNNING, STOPPED, TIME_LIMIT, read_manifest
from utils.monitor import parse_monitor
from utils.run_lock import NAME as LOCK_FILE
from utils.util import flatten

DIED, UNKNOWN = "died", "unknown"  # a start that ended without recording how (kill -9); an older run, not finished
STATUSES = (FINISHED, STOPPED, TIME_LIMIT, FAILED, RUNNING, DIED, UNKNOWN)
METRICS_FILE = "metrics.jsonl"
LATEST_EPOCH = re.compile(r"checkpoint-epoch(\d+)(\.pth)?")  # a file, or a sharded run's folder
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")  # info.log's first line starts with its time
# A start's entries that say when and how it ran rather than what it ran with: left out of environment differences.
NOT_ENVIRONMENT = ("command", "cwd", "pid", "resumed_from", "started", "ended", "duration_s", "from_epoch", "from_step",
                   "outcome", "exit_code", "reason", "epoch", "step", "data")
MISSING = object()


def log_dir_of(checkpoint_dir: Path) -> Path:
    """The log directory of the run whose checkpoints are in checkpoint_dir: <save>/log/<name>/<id> for
    <save>/models/<name>/<id>, else (a directory moved out of that layout) its log/ folder."""
    if len(checkpoint_dir.parents) >= 3 and checkpoint_dir.parents[1].name == "models":
        return checkpoint_dir.parents[2] / "log" / checkpoint_dir.parent.name / checkpoint_dir.name
    return checkpoint_dir / "log"


@dataclass
class Run:
    """What a run directory says of its run (read once: the values are kept)."""

    checkpoint_dir: Path
    config: dict = field(default_factory=dict)
    manifest: dict | None = None
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, checkpoint_dir: Path) -> "Run":
        checkpoint_dir = Path(checkpoint_dir)
        config = _json_object(checkpoint_dir / "config.json") or {}
        return cls(checkpoint_dir, config, read_manifest(checkpoint_dir),
                   _records(log_dir_of(checkpoint_dir) / METRICS_FILE))

    @property
    def log_dir(self) -> Path:
        return log_dir_of(self.checkpoint_dir)

    @property
    def name(self) -> str:
        return self.config.get("name") or self.checkpoint_dir.parent.name

    @property
    def run_id(self) -> str:
        return self.checkpoint_dir.name

    @property
    def label(self) -> str:
        return f"{self.name}/{self.run_id}"

    @property
    def last_start(self) -> dict:
        """The newest start's entry of run.json ({} without one)."""
        starts = (self.manifest or {}).get("starts") or [{}]
        return starts[-1] if isinstance(starts[-1], dict) else {}

    @cached_property
    def epoch_rows(self) -> list[dict]:
        """metrics.jsonl's rows of whole epochs (a validation in the middle of an epoch has no epoch_time)."""
        return [row for row in self.rows if "epoch_time" in row]

    @cached_property
    def epochs(self) -> int:
        """The epochs completed: metrics.jsonl's last, else run.json's, else the newest checkpoint's name's."""
        if self.epoch_rows:
            return max(int(row.get("epoch", 0)) for row in self.epoch_rows)
        if isinstance(self.last_start.get("epoch"), int):
            return self.last_start["epoch"]
        try:
            found = LATEST_EPOCH.fullmatch((self.checkpoint_dir / "latest").read_text().strip())
        except OSError:
            found = None
        return int(found.group(1)) if found else 0

    @property
    def epochs_planned(self) -> int | None:
        epochs = self.config.get("trainer", {}).get("epochs")
        return epochs if isinstance(epochs, int) else None

    @property
    def monitor(self) -> tuple[str, str] | None:
        """(mode, key) of trainer.monitor; None when it is off or unknown."""
        spec = self.config.get("trainer", {}).get("monitor", "off")
        try:
            mode, key = parse_monitor(spec)
        except (AttributeError, IndexError):
            return None
        return (mode, key) if mode in ("min", "max") else None

    @cached_property
    def best(self) -> tuple[float, dict] | None:
        """(the best value of the monitored key, the row it was logged in); None without one."""
        if self.monitor is None:
            return None
        mode, key = self.monitor
        logged = [(row[key], row) for row in self.rows if _finite(row.get(key))]
        if not logged:
            return None
        return (min if mode == "min" else max)(logged, key=lambda pair: pair[0])

    @property
    def final(self) -> dict:
        """The last epoch's row of metrics.jsonl ({} before the first)."""
        return self.epoch_rows[-1] if self.epoch_rows else {}

    @cached_property
    def status(self) -> str:
        """How the run's newest start ended: finished, stopped (by a signal), time-limit, failed; running (its
        process holds the run's lock), died (it ended without saying how: kill -9, a power cut); for a run without
        run.json, finished when it trained trainer.epochs, else running or unknown."""
        if self.manifest is not None:
            status = self.manifest.get("status", UNKNOWN)
            return status if status != RUNNING or self._locked() else DIED
        if self.epochs_planned is not None and self.epochs >= self.epochs_planned:
            return FINISHED
        return RUNNING if self._locked() else UNKNOWN

    def _locked(self) -> bool:
        """Whether a training process holds the run: its lock file names a live process (one on another machine is
        taken to be alive)."""
        try:
            holder = (self.checkpoint_dir / LOCK_FILE).read_text().split()
        except OSError:
            return False
        if len(holder) < 4 or holder[0] != "pid" or not holder[1].isdigit():
            return True  # being written: a process is taking it
        if holder[3] != socket.gethostname():
            return True
        try:
            os.kill(int(holder[1]), 0)
        except ProcessLookupError:
            return False
        except OSError:  # PermissionError: alive, another user's
            return True
        return True

    @cached_property
    def started(self) -> datetime | None:
        """When the run first started: run.json's time, else info.log's first line's."""
        if self.manifest is not None and self.manifest.get("started"):
            try:
                return datetime.fromisoformat(self.manifest["started"])
            except (TypeError, ValueError):
                return None
        try:
            with open(self.log_dir / "info.log", encoding="utf-8", errors="replace") as f:
                found = LOG_TIME.match(f.readline())
        except OSError:
            return None
        return datetime.fromisoformat(found.group(1)).astimezone() if found else None

    @property
    def duration_s(self) -> float | None:
        """Seconds the run's starts took (a running one up to now, one that died up to its last file write); without
        run.json, its epochs' sum."""
        if self.manifest is not None:
            total = self.manifest.get("duration_s") or 0.0
            start = self.last_start
            if start.get("started") and "ended" not in start:
                until = time.time() if self.status == RUNNING else self._last_write()
                total += max(0.0, until - datetime.fromisoformat(start["started"]).timestamp())
            return total
        times = [row["epoch_time"] for row in self.epoch_rows if _finite(row.get("epoch_time"))]
        return sum(times) if times else None

    def _last_write(self) -> float:
        """When a file of the run (its checkpoint or log directory's) last changed."""
        times = []
        for directory in (self.checkpoint_dir, self.log_dir):
            try:
                with os.scandir(directory) as entries:
                    times += [entry.stat().st_mtime for entry in entries if entry.is_file()]
            except OSError:
                continue
        return max(times, default=0.0)

    def environment(self) -> dict:
        """The newest start's software, devices, git state and variables: what two runs' differences are read from
        (the patch by its hash: its file's name is the start's number)."""
        environment = {key: value for key, value in self.last_start.items() if key not in NOT_ENVIRONMENT}
        if isinstance(environment.get("git"), dict):
            environment["git"] = {key: value for key, value in environment["git"].items() if key != "patch"}
        return environment

    def data(self) -> dict:
        return self.last_start.get("data") or {}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _records(path: Path) -> list[dict]:
    """metrics.jsonl's records (a half-written line, from a crash, left out)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# ---- finding runs

def _is_run(directory: Path) -> bool:
    return (directory / "config.json").is_file() or (directory / "run.json").is_file()


def find_runs(save_dir: Path) -> list[Run]:
    """Every run under save_dir (<save_dir>/models/<name>/<run_id>), oldest first."""
    models = Path(save_dir) / "models"
    if not Path(save_dir).is_dir():
        raise UserError(f"--save-dir {save_dir}: no such directory; give the trainer.save_dir your runs were written "
                        f"under (default saved)")
    found = [Run.read(d) for d in sorted(models.glob("*/*")) if d.is_dir() and _is_run(d)]
    return sorted(found, key=lambda run: (run.started is None, run.started.timestamp() if run.started else 0))


def select(runs: Iterable[Run], name: str | None = None, status: str | None = None) -> list[Run]:
    """The runs whose config name matches name (a shell pattern: Digits*) and whose status is status."""
    return [run for run in runs
            if (name is None or fnmatch(run.name, name)) and (status is None or run.status == status)]


def best_first(runs: Iterable[Run]) -> list[Run]:
    """The runs by their best monitored value, best first, grouped by what they monitor; runs without one last."""
    def key(run: Run) -> tuple:
        best = run.best
        if best is None:
            return (1, "", 0.0)
        mode, monitored = run.monitor
        return (0, f"{monitored} {mode}", -best[0] if mode == "max" else best[0])
    return sorted(runs, key=key)


def find_run(text: str, save_dir: Path) -> Run:
    """The run that text names: its checkpoint directory or log directory (or a file in one, e.g. its run.json or a
    checkpoint), NAME/RUN_ID under save_dir, or a run id under save_dir that one config's runs have."""
    path = Path(text)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        resolved = path.resolve()
        if len(resolved.parents) >= 3 and resolved.parents[1].name == "log":  # a log directory: its run's
            path = resolved.parents[2] / "models" / resolved.parent.name / resolved.name
        if _is_run(path):
            return Run.read(path)
    models = Path(save_dir) / "models"
    candidates = [models / text] if "/" in text else sorted(models.glob(f"*/{glob.escape(text)}"))
    matches = [d for d in candidates if d.is_dir() and _is_run(d)]
    if len(matches) == 1:
        return Run.read(matches[0])
    if matches:
        labels = ", ".join(f"{d.parent.name}/{d.name}" for d in matches)
        raise UserError(f"RUN {text!r} is the run id of runs of several configs ({labels}); give NAME/RUN_ID")
    known = [f"{d.parent.name}/{d.name}" for d in models.glob("*/*") if d.is_dir()]
    hint = did_you_mean(text, known + [label.split("/")[1] for label in known])
    where = f"under --save-dir {save_dir}" if Path(save_dir).is_dir() else f"(--save-dir {save_dir} does not exist)"
    raise UserError(f"RUN {text!r}: no run directory by that path, NAME/RUN_ID or run id {where}.{hint} Give one of "
                    f"those; python runs.py list --save-dir DIR shows the runs")


# ---- differences

def differences(a: Mapping, b: Mapping) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) of every key whose value differs, MISSING where one has none; nested objects
    are compared key by key, lists whole."""
    flat_a, flat_b = flatten(a), flatten(b)
    return [(key, flat_a.get(key, MISSING), flat_b.get(key, MISSING)) for key in sorted(flat_a.keys() | flat_b.keys())
            if flat_a.get(key, MISSING) != flat_b.get(key, MISSING)]


