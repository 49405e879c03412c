"""The config's "loggers": where each logged row goes besides the console and metrics.jsonl (which are always written).

Each entry is a name or {"type": name, "args": {...}}; the name is looked up in LOGGERS, whose entries are Sink classes
(logger/reporter.py) built as cls(dirs, **args), dirs being the run's directories (utils.checkpoint.RunDirs):

    tensorboard  TensorBoard event files in the log directory (the default; trainer.tensorboard false leaves it out)
    csv          metrics.csv in the log directory: metrics.jsonl's numbers as a table (pandas.read_csv reads it)
    mlflow       an MLflow run (logger/mlflow_logger.py; pip install -r requirements-mlflow.txt)

A logger of your own is a Sink subclass registered with @LOGGERS.register (see docs/your-own-parts.md).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping

from logger.mlflow_logger import MLflowRun
from logger.reporter import METRICS_FILE, Sink, TensorBoardSink, is_number, read_rows
from logger.visualization import RunBoard
from utils.checkpoint import RunDirs
from utils.registry import LOGGERS
from utils.util import write_text_atomic

DEFAULT = ["tensorboard"]


@LOGGERS.register(name="tensorboard")
class TensorBoard(TensorBoardSink):
    """TensorBoard event files in the run's log directory: train/ and valid/ beside the run's own (RunBoard)."""

    def __init__(self, dirs: RunDirs):
        super().__init__(RunBoard(dirs.log_dir))


@LOGGERS.register(name="csv")
class CsvFile(Sink):
    """metrics.csv in the log directory: one row per metrics.jsonl record and one column per key whose values are
    numbers (lists and values by class stay in metrics.jsonl), blank where a record has no such key. Written anew from
    metrics.jsonl after each row and on resume, so the two always agree."""

    def __init__(self, dirs: RunDirs, filename: str = "metrics.csv"):
        self.source = Path(dirs.log_dir) / METRICS_FILE
        self.path = Path(dirs.log_dir) / filename

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        self.write()

    def resume(self, epoch: int, step: int | None) -> None:
        self.write()

    def write(self) -> None:
        records = read_rows(self.source)
        columns = list(dict.fromkeys(key for record in records for key, value in record.items() if is_number(value)))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: v for k, v in record.items() if is_number(v)} for record in records)
        write_text_atomic(self.path, text.getvalue())


LOGGERS.register(MLflowRun, name="mlflow")  # its module imports mlflow only when the logger is built



def entries(specs: Iterable[str | dict], tensorboard: bool = True) -> list[tuple[str, dict]]:
    """(name, args) of each entry of a config's "loggers"; tensorboard False (trainer.tensorboard) leaves it out."""
    named = [(spec, {}) if isinstance(spec, str) else (spec["type"], dict(spec.get("args") or {})) for spec in specs]
    return [(name, args) for name, args in named if tensorboard or name != "tensorboard"]


def build_loggers(dirs: RunDirs, specs: Iterable[str | dict] = DEFAULT, tensorboard: bool = True) -> list[Sink]:
    """The sinks a run's "loggers" name, built for its directories."""
    return [LOGGERS.get(name, "loggers")(dirs, **args) for name, args in entries(specs, tensorboard)]
