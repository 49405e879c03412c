"""Console and info.log logging from logger_config.json; verbosity levels; metrics.jsonl."""
from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path

from utils.errors import UserError

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
DEFAULT_CONFIG = Path(__file__).with_name("logger_config.json")


def setup_logging(log_dir: Path | None, log_config: Path = DEFAULT_CONFIG, default_level: int = logging.INFO) -> None:
    """Configure the root logger: console always, file handlers into log_dir (skipped when None)."""
    if not log_config.is_file():
        logging.basicConfig(level=default_level)
        logging.getLogger().warning("logging config %s not found; using basic logging", log_config)
        return
    config = json.loads(log_config.read_text())
    for name, handler in list(config["handlers"].items()):
        if "filename" in handler:
            if log_dir is None:
                del config["handlers"][name]
                config["root"]["handlers"].remove(name)
            else:
                handler["filename"] = str(Path(log_dir) / handler["filename"])
    logging.config.dictConfig(config)


def get_logger(name: str, verbosity: int = 2) -> logging.Logger:
    """A named logger at the level for verbosity 0 (warnings), 1 (info) or 2 (debug)."""
    if verbosity not in LOG_LEVELS:
        raise UserError(f"verbosity {verbosity} is not valid; use one of {sorted(LOG_LEVELS)}")
    logger = logging.getLogger(name)
    logger.setLevel(LOG_LEVELS[verbosity])
    return logger


class MetricsFile:
    """metrics.jsonl: one JSON object per completed epoch, appended and flushed at once."""

    def __init__(self, path: Path | None):
        self.path = path

    def append(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (they belong to a run being resumed from earlier)."""
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)
