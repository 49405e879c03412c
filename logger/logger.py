"""Console and info.log logging from logger_config.json; verbosity levels (metrics.jsonl: logger/reporter.py)."""
from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path

from utils.errors import UserError

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
DEFAULT_CONFIG = Path(__file__).with_name("logger_config.json")
KEPT_BEFORE_THE_RUN = 1000  # records kept for info.log while there is no run directory (a command may never open one)


class BeforeTheRun(logging.Handler):
    """Keeps the records logged before the run directory exists (the start's checks: files left out, a loss that
    does not fit the model's output), so that setup_logging writes them to the run's info.log too."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < KEPT_BEFORE_THE_RUN:
            self.records.append(record)


def setup_logging(log_dir: Path | None, log_config: Path = DEFAULT_CONFIG, default_level: int = logging.INFO,
                  *, verbosity: int = 2) -> None:
    """Configure the root logger: console at the verbosity's level, file handlers into log_dir (skipped when None).

    Verbosity filters the console only: info.log always keeps the run's info lines. Without log_dir, the records
    logged until it is called with one are kept, and written then to its files (not again to the console).
    """
    before = next((h.records for h in logging.getLogger().handlers if isinstance(h, BeforeTheRun)), [])
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
    root = logging.getLogger()
    if log_dir is None:
        root.addHandler(BeforeTheRun())
        return
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            for record in before:
                if record.levelno >= handler.level:
                    handler.handle(record)


def get_logger(name: str, verbosity: int = 2) -> logging.Logger:
    """A named logger passing info lines (for info.log) and debug lines at verbosity 2."""
    logger = logging.getLogger(name)
    logger.setLevel(min(_level(verbosity), logging.INFO))
    return logger


def _level(verbosity: int) -> int:
    if verbosity not in LOG_LEVELS:
        raise UserError(f"verbosity {verbosity} is not valid; use one of {sorted(LOG_LEVELS)}")
    return LOG_LEVELS[verbosity]
