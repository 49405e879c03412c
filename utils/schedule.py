"""The learning-rate scheduler as a part of the loop: stepped after each epoch or each optimizer step."""
from __future__ import annotations

from typing import Any

import torch


class LRSchedule:
    """A torch scheduler (or none) and when it steps: 'epoch' or 'step'; ReduceLROnPlateau gets a logged value."""

    def __init__(self, scheduler: Any = None, interval: str = "epoch"):
        self.scheduler = scheduler
        self.interval = interval

    def on_step_end(self) -> None:
        """After an optimizer step."""
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, log: dict, plateau_key: str) -> None:
        """After an epoch whose values are log; a plateau scheduler reads log[plateau_key]."""
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(log[plateau_key])
        else:
            self.scheduler.step()

    def set_base_lrs(self, lrs: list[float]) -> None:
        """Make lrs (one per parameter group) the schedule's starting values (a learning rate changed on resume)."""
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = list(lrs)

    def state_dict(self) -> dict | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
