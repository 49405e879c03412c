"""The epoch loop and the checkpoint state protocol; subclasses implement _train_epoch."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from logger import MetricsFile, NullWriter
from utils.checkpoint import Checkpointer, rng_state, set_rng_state, unwrap
from utils.distributed import SINGLE, Dist, any_rank
from utils.errors import UserError
from utils.interrupt import SignalStop, StopRequested, TrainingInterrupted
from utils.monitor import Monitor
from utils.tracker import MetricTracker


class BaseTrainer:
    """Runs epochs; asks the monitor about improvement and stopping, the checkpointer about saving."""

    def __init__(self, model: nn.Module, criterion: Callable, metric_ftns: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, *, device: torch.device, epochs: int,
                 monitor: Monitor | None = None, checkpointer: Checkpointer | None = None,
                 writer: NullWriter | None = None, metrics_file: MetricsFile | None = None,
                 lr_scheduler: Any = None, scheduler_interval: str = "epoch",
                 config: dict | None = None, logger: logging.Logger | None = None, dist: Dist = SINGLE):
        self.model = model
        self.criterion = criterion
        self.metric_ftns = metric_ftns
        self.optimizer = optimizer
        self.device = device
        self.epochs = epochs
        self.monitor = monitor or Monitor()
        self.checkpointer = checkpointer
        self.writer = writer or NullWriter()
        self.metrics_file = metrics_file or MetricsFile(None)
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.config = config or {}
        self.logger = logger or logging.getLogger("trainer")
        self.dist = dist  # under torchrun: this rank; metrics are reduced over ranks, rank 0 writes
        self.epoch = 0  # the last completed epoch
        self.start_epoch = 1
        self.global_step = 0
        self.batch_in_epoch = 0  # batches done in the epoch under way (0 at an epoch boundary)
        self.train_tracker = MetricTracker()  # the epoch under way's sums, saved by a mid-epoch checkpoint
        self.signals = SignalStop()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); return the epoch's logged values."""
        raise NotImplementedError

    def train(self) -> None:
        """Train from start_epoch to epochs; on SIGINT/SIGTERM save and raise TrainingInterrupted."""
        with self.signals:
            try:
                for epoch in range(self.start_epoch, self.epochs + 1):
                    if not self._run_epoch(epoch):
                        break
            except StopRequested:  # raised by _train_epoch after a completed step
                raise TrainingInterrupted(self._signum(), self.save_step_checkpoint()) from None
            finally:
                self.writer.close()

    def _signum(self) -> int:
        """The signal that stopped training (under DDP another rank may have received it)."""
        return self.signals.requested or signal.SIGTERM

    def _run_epoch(self, epoch: int) -> bool:
        """Train, log and checkpoint one epoch; False when early stopping ends training."""
        started = time.perf_counter()
        log = {"epoch": epoch, **self._train_epoch(epoch), "lr": self.current_lr()}
        self._step_scheduler_after_epoch(log)
        log["epoch_time"] = time.perf_counter() - started
        self.epoch, self.batch_in_epoch = epoch, 0
        improved = self.monitor.update(log)
        self._report(log)
        stop = self.monitor.should_stop
        interrupted = any_rank(self.signals.requested is not None, self.device)  # every rank agrees
        if self.checkpointer is not None:
            last = stop or epoch == self.epochs or interrupted
            for path in self.checkpointer.save(self.state_dict(), epoch, is_best=improved, is_last=last):
                self.logger.info("Saved %s", path)
        if interrupted:
            raise TrainingInterrupted(self._signum(), self.checkpointer.latest if self.checkpointer else None)
        if stop:
            self.logger.info("%s did not improve for %d epochs: training stops.",
                             self.monitor.key, self.monitor.patience)
        return not stop

    def save_step_checkpoint(self) -> Path | None:
        """Save the state after the current step, in the middle of an epoch (every rank calls it; rank 0 writes)."""
        state = self.state_dict()  # under DDP a collective: every rank takes part
        if self.checkpointer is None:
            return None
        path = self.checkpointer.save_step(state, self.global_step)
        self.logger.info("Saved %s", path)
        return path

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _step_scheduler_after_epoch(self, log: dict) -> None:
        if self.lr_scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            key = self.monitor.key if self.monitor.enabled else "val_loss" if "val_loss" in log else "loss"
            self.lr_scheduler.step(log[key])
        else:
            self.lr_scheduler.step()

    def _report(self, log: dict) -> None:
        """The epoch's values to the console/info.log, TensorBoard (epoch axis) and metrics.jsonl."""
        epoch = log["epoch"]
        for key, value in log.items():
            self.logger.info("    %-15s: %s", key, f"{value:.6g}" if isinstance(value, float) else value)
            if key in ("epoch", "epoch_time"):
                continue
            tag = f"{key[4:]}/valid" if key.startswith("val_") else key if key == "lr" else f"{key}/train"
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()
        self.metrics_file.append(log)

    # -- checkpoint state: save and load are mirror images
    def state_dict(self) -> dict:
        """Everything a checkpoint holds: plain values and tensors only."""
        return {
            "arch": type(unwrap(self.model)).__name__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_tracker": self.train_tracker.state_dict(self.dist.enabled) if self.batch_in_epoch else None,
            "state_dict": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "monitor_best": self.monitor.best,
            "monitor": self.monitor.state_dict(),
            "config": self.config,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict, load_optimizer: bool = True) -> None:
        """Restore a checkpoint; training continues after its last step."""
        try:
            unwrap(self.model).load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise UserError(f"the checkpoint's weights do not fit arch {type(unwrap(self.model)).__name__}: "
                            f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}; "
                            f"resume with the arch the checkpoint was trained with") from None
        if load_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.monitor.load_state_dict(state.get("monitor", {}))
        self.epoch = state["epoch"]
        self.start_epoch = state["epoch"] + 1
        self.global_step = state.get("global_step", 0)
        self.batch_in_epoch = state.get("batch_in_epoch", 0)
        if self.batch_in_epoch and self.dist.is_main:  # the saved sums are every rank's: rank 0 carries them
            self.train_tracker.load_state_dict(state["epoch_tracker"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self.metrics_file.truncate_after(self.epoch)

    def set_lr(self, lr: float) -> None:
        """Apply a new learning rate to every parameter group (and the scheduler's base)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "initial_lr" in group:
                group["initial_lr"] = lr
        if hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
