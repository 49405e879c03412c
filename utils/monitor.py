"""Best-value tracking and early stopping for one logged key."""
from __future__ import annotations

import math
import operator
from typing import Iterable

from utils.errors import UserError

IMPROVES = {"min": operator.lt, "max": operator.gt}


class Monitor:
    """'min val_loss' / 'max val_accuracy' / 'off': strict improvement, stop when wait >= patience."""

    def __init__(self, spec: str = "off", patience: int = 0):
        parts = spec.split()
        self.mode, self.key = (None, None) if parts == ["off"] else (parts[0], parts[1])
        self.patience = patience
        self.best = {"min": math.inf, "max": -math.inf}.get(self.mode, math.inf)
        self.wait = 0

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
        """Record this epoch's value; True when it strictly improves on the best so far."""
        if not self.enabled:
            return False
        value = log[self.key]
        if not isinstance(value, (int, float)):
            raise UserError(f"trainer.monitor: {self.key!r} is not a single number but {type(value).__name__} "
                            f"(a per-class or matrix result); monitor a scalar metric, e.g. one with average "
                            f"\"macro\"")
        if IMPROVES[self.mode](value, self.best):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.patience > 0 and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"mode": self.mode, "key": self.key, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        """Restore best and wait; a changed key or mode starts fresh (the old best means nothing)."""
        if (state.get("mode"), state.get("key")) == (self.mode, self.key):
            self.best, self.wait = state["best"], state["wait"]
