"""Best-value tracking and early stopping for one logged key."""
from __future__ import annotations

import math
import operator
from typing import Iterable

from utils.errors import UserError

IMPROVES = {"min": operator.lt, "max": operator.gt}

SAVE_TOP_K_NEEDS_MONITOR = ("trainer.save_top_k is set but trainer.monitor is 'off': there is no value to rank "
                            "checkpoints by; set trainer.monitor (e.g. 'min val_loss') or set trainer.save_top_k to "
                            "null")


def parse_monitor(spec: str) -> tuple[str | None, str | None]:
    """'max val_accuracy' -> ('max', 'val_accuracy'); 'off' -> (None, None)."""
    parts = spec.split()
    return (None, None) if parts == ["off"] else (parts[0], parts[1])


class Monitor:
    """'min val_loss' / 'max val_accuracy' / 'off': strict improvement, stop when wait >= patience."""

    def __init__(self, spec: str = "off", patience: int = 0):
        self.mode, self.key = parse_monitor(spec)
        self.patience = patience
        self.best = {"min": math.inf, "max": -math.inf}.get(self.mode, math.inf)
        self.wait = 0
        # The latest update's value and the log's [epoch, step] it came from (None: not logged), saved so that
        # save_top_k can rank a checkpoint by it when it was measured on the checkpoint's own state.
        self.last: float | None = None
        self.last_at: list | None = None

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def check_keys(self, available: Iterable[str]) -> None:
        """Raise a UserError before training when the monitored key will never be logged."""
        available = list(available)
        if self.enabled and self.key not in available:
            raise UserError(f"trainer.monitor: {self.key!r} is not logged by this run; "
                            f"available keys: {', '.join(available)}")

    def update(self, log: dict) -> bool:
        """Record this epoch's (or validation's) value; True when it strictly improves on the best so far."""
        if not self.enabled:
            return False
        value = log[self.key]
        if not isinstance(value, (int, float)):
            raise UserError(f"trainer.monitor: {self.key!r} is not a single number but {type(value).__name__} "
                            f"(a per-class or matrix result); monitor a scalar metric, e.g. one with average "
                            f"\"macro\"")
        self.last, self.last_at = value, [log.get("epoch"), log.get("step")]
        if IMPROVES[self.mode](value, self.best):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    def best_values(self) -> dict[str, float]:
        """{the monitored key: its best value so far}, as reports show it (best/<key>); {} when off."""
        return {self.key: self.best} if self.enabled else {}

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.patience > 0 and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"mode": self.mode, "key": self.key, "best": self.best, "wait": self.wait, "last": self.last,
                "last_at": self.last_at}

    def load_state_dict(self, state: dict) -> None:
        """Restore best, wait and the last value (absent from checkpoints before save_top_k: None); a changed key or
        mode starts fresh (the old best means nothing)."""
        if (state.get("mode"), state.get("key")) == (self.mode, self.key):
            self.best, self.wait = state["best"], state["wait"]
            self.last, self.last_at = state.get("last"), state.get("last_at")
