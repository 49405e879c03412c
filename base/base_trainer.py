"""The epoch loop and the checkpoint's parts; subclasses implement _train_epoch."""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from logger import MetricsFile, NullWriter, make_writer
from logger.visualization import TRAIN, VALID, hparam_values
from utils.checkpoint import (MODEL, MONITOR, OPTIMIZER, RNG, SCHEDULER, TRAIN_STATE, Checkpointer, ModelWeights,
                              RandomState, RunDirs, Stateful, gather, restore, unwrap)
from utils.distributed import SINGLE, Dist, any_rank
from utils.errors import UserError
from utils.interrupt import SignalStop, StopRequested, TimeLimitReached, TrainingInterrupted
from utils.monitor import Monitor
from utils.params import DEFAULT_GROUP
from utils.schedule import LRSchedule
from utils.tracker import is_confusion_matrix


class EarlyStop(Exception):
    """Raised by on_validation in the middle of an epoch when the monitored value stopped improving."""


@dataclass
class TrainState:
    """Where training stands (a checkpoint part): the last completed epoch, the optimizer steps taken, and
    the batches done in the epoch under way (0 at an epoch boundary)."""
    epoch: int = 0
    global_step: int = 0
    batch_in_epoch: int = 0

    def end_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "global_step": self.global_step, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.global_step = state.get("global_step", 0)
        self.batch_in_epoch = state.get("batch_in_epoch", 0)


class RunOutputs:
    """Where a run writes: checkpoints, TensorBoard and metrics.jsonl. It writes nothing until open() is
    called (dry runs, test.py and the ranks other than 0 never call it)."""

    def __init__(self):
        self.checkpointer = Checkpointer(None)
        self.writer = NullWriter()
        self.metrics_file = MetricsFile(None)

    def open(self, dirs: RunDirs, settings: Any) -> "RunOutputs":
        self.checkpointer = Checkpointer(dirs.checkpoint_dir, settings.save_period, settings.keep_last,
                                         settings.save_top_k, settings.monitor)
        self.writer = make_writer(dirs.log_dir, settings.tensorboard)
        self.metrics_file = MetricsFile(dirs.log_dir / "metrics.jsonl")
        return self


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


class BaseTrainer:
    """Runs epochs; asks the monitor about improvement and stopping, the checkpointer about saving.

    A subclass implements _train_epoch(epoch) -> the epoch's logged values. Every trainer is built the
    same way (train.py's build), so a BaseTrainer subclass can be chosen with trainer.type.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metric_ftns: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, settings: Any, *, data_loader: Any = None,
                 valid_data_loader: Any = None, lr_scheduler: LRSchedule | Any = None,
                 device: torch.device = torch.device("cpu"), outputs: RunOutputs | None = None,
                 config: dict | None = None, dist: Dist = SINGLE):
        """lr_scheduler: a torch scheduler (stepped each epoch) or an LRSchedule; outputs: where the run writes
        (nothing by default); config: the run's config, saved in checkpoints; dist: this rank, under torchrun."""
        self.model = model
        self.criterion = criterion
        self.metric_ftns = metric_ftns
        self.optimizer = optimizer
        self.settings = settings
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.schedule = lr_scheduler if isinstance(lr_scheduler, LRSchedule) else LRSchedule(lr_scheduler)
        self.device = device
        self.outputs = outputs or RunOutputs()
        self.config = config or {}
        self.dist = dist  # under torchrun: this rank; metrics are reduced over ranks, rank 0 writes
        self.monitor = Monitor(settings.monitor, settings.early_stop)
        self.confusion_matrices = {name for name, metric in metric_ftns.items() if is_confusion_matrix(metric)}
        self.state = TrainState()
        self._hparams_written = False  # the HParams record goes with the first epoch's report
        self.signals = SignalStop()
        self.logger = logging.getLogger("trainer")
        keys = self.logged_keys()
        if keys is not None:
            self.monitor.check_keys(keys)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); return the epoch's logged values."""
        raise NotImplementedError

    def evaluate(self, loader: Any, desc: str = "valid") -> dict[str, float]:
        """Loss and metrics over loader (test.py calls it on the test split); trainer.Trainer implements it."""
        raise UserError(f"trainer.type {type(self).__name__} has no evaluate(loader, desc), which test.py calls; "
                        f"derive it from trainer.Trainer or write one")

    def logged_keys(self) -> list[str] | None:
        """The keys each epoch's log will hold (what trainer.monitor may name); None when unknown."""
        return None

    # -- the loop
    def train(self) -> None:
        """Train up to settings.epochs; on SIGINT/SIGTERM save and raise TrainingInterrupted."""
        with self.signals:
            try:
                for epoch in range(self.start_epoch, self.epochs + 1):
                    if not self._run_epoch(epoch):
                        break
            except StopRequested:  # raised by _train_epoch after a completed step
                raise TrainingInterrupted(self._signum(), self.save_step_checkpoint()) from None
            except TimeLimitReached as limit:  # likewise, once trainer.max_time has passed
                limit.checkpoint = self.save_step_checkpoint()
                raise
            finally:
                self.outputs.writer.close()

    def _run_epoch(self, epoch: int) -> bool:
        """Train, log and checkpoint one epoch; False when early stopping ends training."""
        started = time.perf_counter()
        try:
            values = self._train_epoch(epoch)
        except EarlyStop:  # after a validation in the middle of the epoch
            self.logger.info("Saved %s", self.save_step_checkpoint())
            self.logger.info("%s did not improve for %d validations: training stops.", self.monitor.key,
                             self.monitor.patience)
            return False
        step = {"step": self.global_step} if self.settings.val_every_steps else {}
        log = {"epoch": epoch, **step, **values, **self.learning_rates()}
        self.schedule.on_epoch_end(log, self._plateau_key(log))
        log["epoch_time"] = time.perf_counter() - started
        self.state.end_epoch(epoch)
        improved = self._monitor(log)
        self._report(log)
        stop = self.monitor.should_stop
        interrupted = any_rank(self.signals.requested is not None, self.device)  # every rank agrees
        checkpointer = self.outputs.checkpointer
        if checkpointer.writes:
            last = stop or epoch == self.epochs or interrupted
            for path in checkpointer.save(self.state_dict(), epoch, is_best=improved, is_last=last):
                self.logger.info("Saved %s", path)
        if interrupted:
            raise TrainingInterrupted(self._signum(), checkpointer.latest)
        if stop:
            self.logger.info("%s did not improve for %d %s: training stops.", self.monitor.key, self.monitor.patience,
                             "validations" if self.settings.val_every_steps else "epochs")
        return not stop

    def on_validation(self, row: dict) -> None:
        """A validation in the middle of an epoch (trainer.val_every_steps): the monitor, model_best.pth, the report;
        raises EarlyStop when the monitor says so. Every rank calls it (state_dict is a collective under DDP)."""
        improved = self._monitor(row)
        self._report(row)
        if improved and self.outputs.checkpointer.writes:
            self.logger.info("Saved %s", self.outputs.checkpointer.save_best(self.state_dict()))
        elif improved:
            self.state_dict()  # under DDP the other ranks take part in rank 0's collective
        if self.monitor.should_stop:
            raise EarlyStop

    def _monitor(self, log: dict) -> bool:
        """The monitor's verdict on a log that holds its key (a validation, or an epoch); False otherwise."""
        return self.monitor.update(log) if self.monitor.key in log else False

    def _signum(self) -> int:
        """The signal that stopped training (under DDP another rank may have received it)."""
        return self.signals.requested or signal.SIGTERM

    def _plateau_key(self, log: dict) -> str:
        """The value ReduceLROnPlateau follows: the monitored one, else val_loss, else loss."""
        return (self.monitor.key if self.monitor.enabled and self.monitor.key in log
                else "val_loss" if "val_loss" in log else "loss")

    @property
    def classes(self) -> list[str] | None:
        """The training data's class names by index, where it has them (they label per-class results)."""
        return getattr(self.data_loader, "classes", None)

    def _report(self, log: dict) -> None:
        """An epoch's (or a validation's) values to the console/info.log, TensorBoard (epoch axis, or the global
        step when validation is step-based) and metrics.jsonl."""
        writer = self.outputs.writer
        epoch = log.get("step", log["epoch"])
        scalars = [k for k, v in log.items()
                   if k not in ("epoch", "step", "epoch_time") and isinstance(v, (int, float))]
        if not self._hparams_written:  # once per process, when the first values show which keys are not numbers
            self._hparams_written = True
            writer.add_hparams(hparam_values(self.config), [f"final/{key}" for key in self._scalar_keys(log)] +
                               ([f"best/{self.monitor.key}"] if self.monitor.enabled else []))
        for key, value in log.items():
            self.logger.info("    %-15s: %s", key, compact(value))
            phase, tag = (VALID, key[4:]) if key.startswith("val_") else (TRAIN, key)
            if tag in self.confusion_matrices:
                writer.add_confusion_matrix(tag, value, self.classes, epoch, phase)
            if key not in scalars:  # lists and values by class: metrics.jsonl only
                continue
            writer.add_scalar(tag, value, epoch, phase)  # train/ and valid/ share the tag: one chart, two curves
            writer.add_scalar(f"final/{key}", value, epoch)  # what the HParams dashboard compares runs by
        if self.monitor.enabled:
            writer.add_scalar(f"best/{self.monitor.key}", self.monitor.best, epoch)
        writer.flush()
        self.outputs.metrics_file.append(log)

    def _scalar_keys(self, log: dict) -> list[str]:
        """The keys logged as numbers: the logged keys (or this log's) but those whose value, or its training or
        validation counterpart's, is a list or values by class."""
        other = {k for k, v in log.items() if isinstance(v, (list, dict))}
        other |= {f"val_{k}" for k in other} | {k[4:] for k in other if k.startswith("val_")}
        keys = dict.fromkeys([*(self.logged_keys() or []), *log])
        return [k for k in keys if k not in other and k not in ("epoch", "step", "epoch_time")]

    def save_step_checkpoint(self) -> Path | None:
        """Save the state after the current step, in the middle of an epoch (every rank calls it; rank 0 writes)."""
        state = self.state_dict()  # under DDP a collective: every rank takes part
        path = self.outputs.checkpointer.save_step(state, self.global_step)
        if path is not None:
            self.logger.info("Saved %s", path)
        return path

    # -- where training stands
    @property
    def epochs(self) -> int:
        return self.settings.epochs

    @property
    def start_epoch(self) -> int:
        return self.state.epoch + 1

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def lr_scheduler(self) -> Any:
        """The torch scheduler (or None), as the original template's trainers named it."""
        return self.schedule.scheduler

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def learning_rates(self) -> dict[str, float]:
        """What each epoch logs: 'lr' (the first parameter group's: the default one) and 'lr/<name>' for each group
        named by optimizer.param_groups (the halves no_decay_bias_norm splits a group into share its name)."""
        rates = {"lr": self.current_lr()}
        for group in self.optimizer.param_groups:
            if group.get("name") not in (None, DEFAULT_GROUP):
                rates.setdefault(f"lr/{group['name']}", group["lr"])
        return rates

    def set_lr(self, lr: float) -> None:
        """Make lr the first group's learning rate (optimizer.args.lr changed on resume) and its scheduler base;
        every other group keeps its ratio to it (a group at a tenth of the default stays at a tenth)."""
        groups = self.optimizer.param_groups
        bases = [group.get("initial_lr", group["lr"]) for group in groups]
        new = [lr if base == bases[0] else lr * base / bases[0] if bases[0] else group["lr"]
               for group, base in zip(groups, bases)]
        for group, value in zip(groups, new):
            group["lr"] = value
            if "initial_lr" in group:
                group["initial_lr"] = value
        self.schedule.set_base_lrs(new)

    # -- checkpoint state: one loop over named parts each way (utils/checkpoint.py)
    def checkpoint_parts(self) -> dict[str, Stateful]:
        """The stateful parts a checkpoint holds, by name; a subclass adds its own to these."""
        return {TRAIN_STATE: self.state, MODEL: ModelWeights(self.model), OPTIMIZER: self.optimizer,
                SCHEDULER: self.schedule, MONITOR: self.monitor, RNG: RandomState()}

    def state_dict(self) -> dict:
        """Everything a checkpoint holds: plain values and tensors only."""
        named = (self.config or {}).get("arch", {}).get("type")  # the config's name: resnet18 rather than ResNet
        return gather(self.checkpoint_parts(), arch=named or type(unwrap(self.model)).__name__, config=self.config,
                      monitor_best=self.monitor.best)

    def load_state_dict(self, state: dict, load_optimizer: bool = True) -> None:
        """Restore a checkpoint; training continues after its last step."""
        restore(self.checkpoint_parts(), state, skip=() if load_optimizer else (OPTIMIZER, SCHEDULER))
        self.outputs.metrics_file.truncate_after(self.state.epoch,
                                                 self.state.global_step if self.state.batch_in_epoch else None)
