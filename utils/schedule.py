"""The learning rates over training: a torch scheduler (or none) stepped after each epoch or each optimizer step, the
rates each epoch logs, and a rate changed on resume."""
from __future__ import annotations

from typing import Any

import torch

from utils.params import DEFAULT_GROUP
from utils.part import Part


class LRSchedule(Part):
    """The optimizer's learning rates: its scheduler (or none) and when it steps, 'epoch' or 'step' (a part of the
    Trainer's loop for the latter); ReduceLROnPlateau gets a logged value. optimizer: the scheduler's when not
    given."""

    def __init__(self, scheduler: Any = None, interval: str = "epoch", optimizer: Any = None):
        self.scheduler = scheduler
        self.interval = interval
        self.optimizer = optimizer if optimizer is not None else getattr(scheduler, "optimizer", None)

    @classmethod
    def of(cls, optimizer: Any, schedule: "LRSchedule | Any" = None) -> "LRSchedule":
        """optimizer's schedule from what a trainer is given: an LRSchedule, a torch scheduler (stepped each epoch) or
        None."""
        if isinstance(schedule, LRSchedule):
            return cls(schedule.scheduler, schedule.interval, optimizer)
        return cls(schedule, "epoch", optimizer)

    def on_step_end(self, loop: Any) -> None:
        """After a step: with interval 'step', the scheduler steps after each optimizer step."""
        if loop.stepped and self.interval == "step" and self.scheduler is not None:
            self.scheduler.step()

    def after_epoch(self, log: dict, monitored: str | None) -> None:
        """After an epoch whose values are log (its learning rates read): with interval 'epoch', the scheduler steps;
        a plateau scheduler follows the monitored key, else val_loss, else loss."""
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(log[monitored if monitored in log else "val_loss" if "val_loss" in log else "loss"])
        else:
            self.scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """What each epoch logs: 'lr' (the first parameter group's: the default one) and 'lr/<name>' for each group
        named by optimizer.param_groups (the halves no_decay_bias_norm splits a group into share its name)."""
        groups = self.optimizer.param_groups
        rates = {"lr": groups[0]["lr"]}
        for group in groups:
            if group.get("name") not in (None, DEFAULT_GROUP):
                rates.setdefault(f"lr/{group['name']}", group["lr"])
        return rates

    def set_lr(self, lr: float) -> None:
        """Make lr the first group's learning rate (optimizer.args.lr changed on resume) and its scheduler's base;
        every other group keeps its ratio to it (a group at a tenth of the default stays at a tenth)."""
        groups = self.optimizer.param_groups
        bases = [group.get("initial_lr", group["lr"]) for group in groups]
        new = [lr if base == bases[0] else lr * base / bases[0] if bases[0] else group["lr"]
               for group, base in zip(groups, bases)]
        for group, value in zip(groups, new):
            group["lr"] = value
            if "initial_lr" in group:
                group["initial_lr"] = value
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = list(new)

    def state_dict(self) -> dict | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
