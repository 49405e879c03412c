"""A run's logged rows and where they go: one Reporter, fed by the loop, sends each row to its sinks.

Rows: an epoch's values ({"epoch", ["step"], loss, metrics, val_*, lr, samples_per_sec, epoch_time}), a validation's
in the middle of an epoch ({"epoch", "step", val_*}), and every log_step steps the training loss ({"step",
"loss_step"}); besides them images (log_images) and histograms (log_histograms). The sinks: the console and info.log
(ConsoleLines) and metrics.jsonl (MetricsFile), always; then the config's "loggers" (logger/loggers.py): TensorBoard
(TensorBoardSink: RunBoard's layout), metrics.csv, MLflow. A new tracker is one more Sink subclass, overriding the
methods it needs; a run or rank that writes no files gets a reporter with the console alone.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from logger.visualization import RUN, TRAIN, VALID, RunBoard, hparam_values
from utils.util import write_text_atomic

NOT_SCALARS = ("epoch", "step", "epoch_time")
METRICS_FILE = "metrics.jsonl"  # a row's keys that are its place and timing, not values to chart


@dataclass(frozen=True)
class RunInfo:
    """What the sinks know of a run before its first row: its config (the HParams record, a tracker's parameters),
    the keys an epoch's row will hold (as far as known), the metrics whose values are confusion matrices and the
    class names that label them."""
    config: Mapping = field(default_factory=dict)
    keys: Sequence[str] = ()
    confusion_matrices: frozenset = frozenset()
    classes: Sequence[str] | None = None


class Sink:
    """One place the reporter's rows go. Every method does nothing here: a sink overrides those it needs."""

    # Modules the sink imports only once it is built (slow or optional ones), each with how to install it: the
    # config's validation checks they are installed, without importing them.
    requires: Mapping[str, str] = {}

    def start(self, run: RunInfo) -> None:
        """Before this process's first row."""

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        """An epoch's row, or a validation's in the middle of an epoch (it has "step"); best: the monitored key's best
        value so far ({} when nothing is monitored)."""

    def log_step(self, row: dict) -> None:
        """Training values every log_step steps: {"step": global step, "loss_step": the step's loss}."""

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """An image (C, H, W) of the training data at this epoch."""

    def log_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """The distribution of a tensor's values (a parameter) at this epoch."""

    def resume(self, epoch: int, step: int | None) -> None:
        """Training goes on after epoch (and, in the middle of the next one, after global step `step`): forget rows
        a run being resumed from an earlier checkpoint wrote after that point."""

    def end(self, outcome: str) -> None:
        """Training has ended (close follows): outcome is FINISHED (every epoch, or an early stop), KILLED (a stop
        signal or trainer.max_time: to be resumed) or FAILED (an error)."""

    def close(self) -> None:
        """After training (or its stop)."""


FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"  # how training ended (MLflow's names for a run's status)


class Reporter:
    """Sends each row to every sink, in order."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks = list(sinks)

    def start(self, run: RunInfo) -> None:
        for sink in self.sinks:
            sink.start(run)

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.log(row, best)

    def log_step(self, row: dict) -> None:
        for sink in self.sinks:
            sink.log_step(row)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        for sink in self.sinks:
            sink.log_image(tag, image, step)

    def log_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        for sink in self.sinks:
            sink.log_histogram(tag, values, step)

    def resume(self, epoch: int, step: int | None) -> None:
        for sink in self.sinks:
            sink.resume(epoch, step)

    def end(self, outcome: str) -> None:
        for sink in self.sinks:
            sink.end(outcome)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_reporter(log_dir: Path | None, loggers: Iterable[Sink] = ()) -> Reporter:
    """The console lines; with a log directory also metrics.jsonl there, then the loggers (built by
    logger/loggers.py from the config's "loggers"), which may read it."""
    if log_dir is None:
        return Reporter([ConsoleLines()])
    return Reporter([ConsoleLines(), MetricsFile(Path(log_dir) / METRICS_FILE), *loggers])


class ConsoleLines(Sink):
    """Each value of a row on a line of its own (logger "trainer": the console at its verbosity, and info.log)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("trainer")

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        for key, value in row.items():
            self.logger.info("    %-15s: %s", key, compact(value))


class TensorBoardSink(Sink):
    """A RunBoard: train/ and valid/ share each value's tag (one chart, a curve each), on the epoch axis (the global
    step's when the row has one); the run's own directory holds final/<key> of every value and best/<key> of the
    monitored one (what the HParams dashboard compares runs by), the HParams record (written once, with the first
    row) and histograms. Confusion matrices are drawn as images; lists and values by class go to metrics.jsonl only."""

    def __init__(self, board: RunBoard):
        self.board = board
        self.run = RunInfo()
        self._hparams_written = False

    def start(self, run: RunInfo) -> None:
        self.run = run

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        step = row.get("step", row["epoch"])
        if not self._hparams_written:  # with the first row, whose values show which keys are not numbers
            self._hparams_written = True
            self.board.add_hparams(hparam_values(dict(self.run.config)),
                                   [f"final/{key}" for key in scalar_keys(row, self.run.keys)] +
                                   [f"best/{key}" for key in best])
        for key, value in row.items():
            phase, tag = _phase(key)
            if tag in self.run.confusion_matrices:
                self.board.add_confusion_matrix(tag, value, self.run.classes, step, phase)
            if key in NOT_SCALARS or not isinstance(value, (int, float)):
                continue
            self.board.add_scalar(tag, value, step, phase)
            self.board.add_scalar(f"final/{key}", value, step)
        for key, value in best.items():
            self.board.add_scalar(f"best/{key}", value, step)
        self.board.flush()

    def log_step(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step":
                phase, tag = _phase(key)
                self.board.add_scalar(tag, value, row["step"], phase)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        phase, tag = _phase(tag)
        self.board.add_image(tag, image, step, phase)

    def log_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.board.add_histogram(tag, values, step, RUN)

    def close(self) -> None:
        self.board.close()


def _phase(key: str) -> tuple[str, str]:
    """(event directory, tag): val_<tag> goes to valid/, any other key to train/."""
    return (VALID, key[4:]) if key.startswith("val_") else (TRAIN, key)


def scalar_keys(row: dict, keys: Sequence[str] = ()) -> list[str]:
    """The keys logged as numbers: the run's keys (and this row's) but those whose value, or its training or
    validation counterpart's, is a list or values by class."""
    other = {k for k, v in row.items() if isinstance(v, (list, dict))}
    other |= {f"val_{k}" for k in other} | {k[4:] for k in other if k.startswith("val_")}
    return [k for k in dict.fromkeys([*keys, *row]) if k not in other and k not in NOT_SCALARS]


class MetricsFile(Sink):
    """metrics.jsonl: one JSON object per row (an epoch's, a mid-epoch validation's), appended and flushed at once;
    on resume the rows after the checkpoint are dropped. Without a path it writes nothing."""

    def __init__(self, path: Path | None):
        self.path = path

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        self.append(row)

    def resume(self, epoch: int, step: int | None) -> None:
        self.truncate_after(epoch, step)

    def append(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, epoch: int, step: int | None = None) -> None:
        """Drop records of epochs after `epoch` (they belong to a run being resumed from earlier); with step (a
        mid-epoch resume), records of validations at or before that global step are kept."""
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line if line.endswith("\n") else line + "\n" for line in lines
                if _epoch_of(line) <= epoch or (step is not None and _step_of(line) <= step)]
        if kept != lines:
            write_text_atomic(self.path, "".join(kept))


def _step_of(line: str) -> float:
    """The global step of a metrics.jsonl line written with step-based validation; infinite without one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    return record.get("step", math.inf) if isinstance(record, dict) else math.inf


def _epoch_of(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinite (so dropped) for a blank or half-written line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:  # a crash while appending leaves a partial last line
        return math.inf
    return record.get("epoch", 0) if isinstance(record, dict) else math.inf


def compact(value: Any, most: int = 20) -> str:
    """A logged value for the console: numbers to 6 significant digits; lists (per class, a matrix) and values by
    class name to 4, up to `most` numbers (metrics.jsonl has them all)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        shown = [f"{k}: {v:.4g}" for k, v in list(value.items())[:most]]
        return "{" + ", ".join(shown) + (", ...}" if len(value) > most else "}")
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            shape = f"{len(value)}x{len(value[0])}"
            if len(value) * len(value[0]) > most * most // 4:
                return f"[{shape} values, in metrics.jsonl]"
            return "[" + ", ".join(compact(v, most) for v in value) + "]"
        shown = [f"{v:.4g}" for v in value[:most]]
        return "[" + ", ".join(shown) + (f", ... ({len(value)} values)]" if len(value) > most else "]")
    return str(value)


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a metrics.jsonl (none when it does not exist yet; a half-written last line left out)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def is_number(value: Any) -> bool:
    """Whether a row's value is a number to chart (not a bool, a list or values by class)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
