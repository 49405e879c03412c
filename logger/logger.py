"""Console and info.log logging from logger_config.json; verbosity levels; metrics.jsonl."""
from __future__ import annotations

import json
import logging
import logging.config
import math
from pathlib import Path

from utils.errors import UserError
from utils.util import write_text_atomic

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
DEFAULT_CONFIG = Path(__file__).with_name("logger_config.json")


def setup_logging(log_dir: Path | None, log_config: Path = DEFAULT_CONFIG, default_level: int = logging.INFO,
                  *, verbosity: int = 2) -> None:
    """Configure the root logger: console at the verbosity's level, file handlers into log_dir (skipped when None).

    Verbosity filters the console only: info.log always keeps the run's info lines.
    """
    if not log_config.is_file():
        logging.basicConfig(level=default_level, force=True)  # force: replace the handlers of an earlier run
        logging.getLogger().warning("logging config %s not found; using basic logging", log_config)
        return
    config = json.loads(log_config.read_text())
    for name, handler in list(config["handlers"].items()):
        if "filename" in handler:
            if log_dir is None:
                del config["handlers"][name]
                for logger in [config.get("root", {}), *config.get("loggers", {}).values()]:
                    if name in logger.get("handlers", []):
                        logger["handlers"].remove(name)
            else:
                handler["filename"] = str(Path(log_dir) / handler["filename"])
        elif handler.get("class") == "logging.StreamHandler":
            handler["level"] = logging.getLevelName(_level(verbosity))
    logging.config.dictConfig(config)


def get_logger(name: str, verbosity: int = 2) -> logging.Logger:
    """A named logger passing info lines (for info.log) and debug lines at verbosity 2."""
    logger = logging.getLogger(name)
    logger.setLevel(min(_level(verbosity), logging.INFO))
    return logger


def _level(verbosity: int) -> int:
    if verbosity not in LOG_LEVELS:
        raise UserError(f"verbosity {verbosity} is not valid; use one of {sorted(LOG_LEVELS)}")
    return LOG_LEVELS[verbosity]


class MetricsFile:
    """metrics.jsonl: one JSON object per completed epoch, appended and flushed at once."""

    def __init__(self, path: Path | None):
        self.path = path

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
