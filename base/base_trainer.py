"""The epoch loop and the checkpoint's parts; subclasses implement _train_epoch."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from base.base_data_loader import EpochDataLoader
from logger.loggers import DEFAULT as DEFAULT_LOGGERS, build_loggers
from logger.reporter import FAILED, FINISHED, KILLED, RunInfo, make_reporter
from utils.checkpoint import (MODEL, MONITOR, OPTIMIZER, RNG, SCHEDULER, TRAIN_STATE, Checkpointer, ModelWeights,
                              RandomState, RunDirs, Stateful, gather, restore, unwrap)
from utils.distributed import SINGLE, Dist, any_rank
from utils.errors import UserError
from utils.interrupt import SignalStop, StopTraining
from utils.manifest import RunManifest
from utils.monitor import Monitor
from utils.schedule import LRSchedule
from utils.sharded import (RANK_BUFFERS, SHARDED, SHARDED_PARTS, SOURCE, RankBuffers, ShardedOptimizer, ShardedWeights,
                           load_shards, this_ranks_state)
from utils.tracker import is_confusion_matrix


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


def _outcome(error: BaseException | None) -> str:
    """How training ended, for the loggers: FINISHED, KILLED (stopped by a signal or the time limit: to be resumed)
    or FAILED."""
    if error is None:
        return FINISHED
    return KILLED if isinstance(error, (StopTraining, KeyboardInterrupt)) else FAILED


class RunOutputs:
    """Where a run writes: checkpoints (checkpointer), its logged rows (reporter) and how each start went (manifest:
    run.json). Until open() is called it writes no file, only the rows' console lines (dry runs, test.py and the
    ranks other than 0 never call it)."""

    def __init__(self):
        self.checkpointer = Checkpointer(None)
        self.reporter = make_reporter(None)
        self.manifest = RunManifest(None)

    def open(self, dirs: RunDirs, settings: Any, loggers: Sequence[str | dict] = DEFAULT_LOGGERS,
             manifest: RunManifest | None = None, store: Any = None) -> "RunOutputs":
        """Write into dirs from now on: checkpoints as settings say, each row to metrics.jsonl and the loggers (the
        config's "loggers": names or {type, args}; settings.tensorboard false leaves TensorBoard out), and the
        manifest given (train.py's: run/manifest.py; none by default). store: how a checkpoint is written (a sharded
        run's ShardedStore; default: a .pth file)."""
        self.take_part(dirs, settings, store)
        self.reporter = make_reporter(dirs.log_dir, build_loggers(dirs, loggers, settings.tensorboard))
        self.manifest = manifest or RunManifest(None)
        return self

    def take_part(self, dirs: RunDirs, settings: Any, store: Any = None) -> "RunOutputs":
        """Write checkpoints into dirs as settings say, through store, and nothing else: what a rank other than the
        main one does in a sharded run (its shards), and the checkpoint half of open()."""
        self.checkpointer = Checkpointer(dirs.checkpoint_dir, settings.save_period, settings.keep_last,
                                         settings.save_top_k, settings.monitor, settings.async_checkpoint, store)
        return self


class BaseTrainer:
    """Runs epochs; asks the schedule for the learning rates, the monitor about improvement and stopping, the
    reporter to log each row and the checkpointer about saving.

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
        self.schedule = LRSchedule.of(optimizer, lr_scheduler)
        self.device = device
        self.outputs = outputs or RunOutputs()
        self.config = config or {}
        self.dist = dist  # under torchrun: this rank; metrics are reduced over ranks, rank 0 writes
        self.monitor = Monitor(settings.monitor, settings.early_stop)
        self.state = TrainState()
        self.signals = SignalStop()
        self.logger = logging.getLogger("trainer")
        keys = self.logged_keys()
        if keys is not None:
            self.monitor.check_keys(keys)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); return the epoch's logged values. Raise StopTraining after a step to stop
        there (its state is saved)."""
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
        """Train up to settings.epochs. A stop in the middle of an epoch saves the state after its step: early
        stopping then ends training, a signal or trainer.max_time raises StopTraining (as does a signal between
        epochs, after the epoch's checkpoint)."""
        self.outputs.manifest.start(self.state.epoch, self.global_step)
        self.outputs.reporter.start(RunInfo(self.config, self.logged_keys() or [], self._confusion_matrices(),
                                            self.classes))
        with self.signals:
            try:
                for epoch in range(self.start_epoch, self.epochs + 1):
                    started = time.perf_counter()
                    try:
                        values = self._train_epoch(epoch)
                    except StopTraining as stop:  # raised after a completed step
                        stop.checkpoint = self.save_step_checkpoint()
                        if stop.reason != StopTraining.EARLY_STOP:
                            raise
                        self._stopping_early("validations")
                        break
                    if not self._end_epoch(epoch, values, started):
                        break
            finally:
                self._finish(sys.exc_info()[1])

    def _finish(self, error: BaseException | None) -> None:
        """Training ended, completed (error None) or with an exception (a stop, a failure). Its checkpoints are waited
        for: a failed background write is the error then, unless training fails of itself (the write's is logged)."""
        try:
            self.outputs.checkpointer.close()
        except Exception as write_error:
            if error is None or isinstance(error, StopTraining):
                raise
            self.logger.error("The last checkpoint was not written either: %s", write_error)
        finally:
            self.outputs.reporter.end(_outcome(error))
            self.outputs.reporter.close()
            self.outputs.manifest.end(error, self.state.epoch, self.global_step)
            for loader in (self.data_loader, self.valid_data_loader):
                if isinstance(loader, EpochDataLoader):
                    loader.close()  # persistent workers end with training

    def _end_epoch(self, epoch: int, values: dict, started: float) -> bool:
        """Log, report and checkpoint a trained epoch; False when early stopping ends training. A stop signal raises
        StopTraining once the epoch is saved (every rank agrees here)."""
        step = {"step": self.global_step} if self.settings.val_every_steps else {}
        log = {"epoch": epoch, **step, **values, **self.schedule.learning_rates()}
        self.schedule.after_epoch(log, self.monitor.key)
        log["epoch_time"] = time.perf_counter() - started
        self.state.end_epoch(epoch)
        improved = self._monitor(log)
        self.outputs.reporter.log(log, self.monitor.best_values())
        stop = self.monitor.should_stop
        interrupted = any_rank(self.signals.requested is not None, self.device)  # every rank agrees
        checkpointer = self.outputs.checkpointer
        if checkpointer.writes:
            last = stop or epoch == self.epochs or interrupted
            checkpointer.save(self.state_dict(), epoch, is_best=improved, is_last=last)
        if interrupted:
            checkpointer.wait()
            raise StopTraining.by_signal(self.signals.requested, checkpointer.latest)
        if stop:
            self._stopping_early("validations" if self.settings.val_every_steps else "epochs")
        return not stop

    def on_validation(self, row: dict) -> None:
        """A validation in the middle of an epoch (trainer.val_every_steps): the monitor, model_best.pth, the report;
        raises StopTraining (EARLY_STOP) when the monitor says so. Every rank calls it (state_dict is a collective
        under DDP)."""
        improved = self._monitor(row)
        self.outputs.reporter.log(row, self.monitor.best_values())
        if improved and self.outputs.checkpointer.writes:
            self.outputs.checkpointer.save_best(self.state_dict())
        elif improved:
            self.state_dict()  # under DDP the other ranks take part in rank 0's collective
        if self.monitor.should_stop:
            raise StopTraining(StopTraining.EARLY_STOP)

    def _monitor(self, log: dict) -> bool:
        """The monitor's verdict on a log that holds its key (a validation, or an epoch); False otherwise."""
        return self.monitor.update(log) if self.monitor.key in log else False

    def _stopping_early(self, counted: str) -> None:
        self.logger.info("%s did not improve for %d %s: training stops.", self.monitor.key, self.monitor.patience,
                         counted)

    def _confusion_matrices(self) -> frozenset[str]:
        """The configured metrics whose values are confusion matrices (drawn as images in TensorBoard)."""
        return frozenset(name for name, metric in self.metric_ftns.items() if is_confusion_matrix(metric))

    @property
    def classes(self) -> list[str] | None:
        """The training data's class names by index, where it has them (they label per-class results)."""
        return getattr(self.data_loader, "classes", None)

    def save_step_checkpoint(self) -> Path | None:
        """Save the state after the current step, in the middle of an epoch (every rank calls it; rank 0 writes)."""
        state = self.state_dict()  # under DDP a collective: every rank takes part
        return self.outputs.checkpointer.save_step(state, self.global_step)

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

    # -- checkpoint state: one loop over named parts each way (utils/checkpoint.py)
    def checkpoint_parts(self) -> dict[str, Stateful]:
        """The stateful parts a checkpoint holds, by name; a subclass adds its own to these."""
        sharded = self.settings.fsdp2 is not None  # by parameter name, for DCP (utils/sharded.py)
        parts = {TRAIN_STATE: self.state,
                 MODEL: ShardedWeights(self.model) if sharded else ModelWeights(self.model),
                 OPTIMIZER: ShardedOptimizer(self.model, self.optimizer) if sharded else self.optimizer,
                 SCHEDULER: self.schedule, MONITOR: self.monitor, RNG: RandomState()}
        if sharded:  # each rank's own buffers, restored after the model's
            parts[RANK_BUFFERS] = RankBuffers(self.model)
        return parts

    def state_dict(self) -> dict:
        """Everything a checkpoint holds: plain values and tensors only."""
        named = (self.config or {}).get("arch", {}).get("type")  # the config's name: resnet18 rather than ResNet
        return gather(self.checkpoint_parts(), arch=named or type(unwrap(self.model)).__name__, config=self.config,
                      monitor_best=self.monitor.best)

    def load_state_dict(self, state: dict, load_optimizer: bool = True) -> None:
        """Restore a checkpoint; training continues after its last step (the reporter forgets rows written after
        it)."""
        parts, skip = self.checkpoint_parts(), () if load_optimizer else (OPTIMIZER, SCHEDULER)
        if SHARDED in state:  # a sharded checkpoint's folder: every rank loads its shards and its own random states
            if self.settings.fsdp2 is None:
                raise UserError(f"{state[SOURCE]} is a sharded checkpoint (trainer.strategy fsdp2); resume it with "
                                f"trainer.strategy fsdp2, or evaluate it with test.py")
            load_shards(parts, state, skip)
            state, note = this_ranks_state(state, self.dist.rank, self.dist.world_size, self.config.get("seed"))
            if note:
                self.logger.warning("Resumed %s: %s.", state[SOURCE], note)
            skip = (*skip, *SHARDED_PARTS)
        elif self.settings.fsdp2 is not None:
            raise UserError("trainer.strategy fsdp2 resumes its own sharded checkpoint folders, and this checkpoint is a "
                            ".pth file; start a new run from its weights instead: --init-from CHECKPOINT (or resume it "
                            "with trainer.strategy \"ddp\")")
        restore(parts, state, skip=skip)
        self.outputs.reporter.resume(self.state.epoch,
                                     self.state.global_step if self.state.batch_in_epoch else None)
