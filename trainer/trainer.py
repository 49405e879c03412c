"""The default Trainer, and your own: every public BaseTrainer subclass defined here can be named in
trainer.type. One optimizer step per batch, validation each epoch, no host sync per step."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from base import BaseTrainer
from trainer.ema import WeightAverage
from trainer.parts import (EpochBatches, Freezing, Histograms, ImageLog, Loop, ProgressBar, StepCheckpoints, StepLog,
                           Stops, TrainMetrics, Validation, in_config_order, track)
from trainer.step import Stepper
from utils.checkpoint import SCALER, Stateful
from utils.faults import InjectedFault
from utils.part import Part
from utils.tracker import EpochMetrics, MetricTracker, split_metrics

Step = Callable[[Any, Any], "tuple[torch.Tensor, Any]"]


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a tensor, or tensors nested in lists/tuples/dicts, to device without blocking (from pinned
    memory the copy overlaps with compute); 4-D tensors in channels_last format when asked."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def logged_keys(metric_ftns: Iterable[str], validates: bool, lr_keys: Iterable[str] = ("lr",)) -> list[str]:
    """The keys each epoch's log holds (what trainer.monitor may name); lr_keys: 'lr' and each group's 'lr/<name>'."""
    train = ["loss", *metric_ftns]
    return train + ([f"val_{k}" for k in train] if validates else []) + [*lr_keys, "samples_per_sec"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, step: Step, metric_ftns: dict[str, Any],
             device: torch.device, *, channels_last: bool = False, progress: bool = False, desc: str = "valid",
             across_ranks: bool = False, classes: list[str] | None = None) -> dict[str, float | list | dict]:
    """Sample-weighted loss and function metrics, and the stateful metrics over all samples, of
    step(data, target) -> (loss, output) over loader (and over every rank's share), read from the device once each;
    classes: the class names that label per-class results."""
    model.eval()
    functions, stateful = split_metrics(metric_ftns)
    tracker, epoch_metrics = MetricTracker(), EpochMetrics(stateful, device, classes)
    for data, target in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        data, target = to_device(data, device, channels_last), to_device(target, device)
        loss, output = step(data, target)
        track(tracker, functions, loss, output, target, epoch_metrics)
    return in_config_order({**tracker.result(across_ranks), **epoch_metrics.result()}, metric_ftns)


class Trainer(BaseTrainer):
    """Trains on data_loader and validates on valid_data_loader each epoch, as settings say; each step and epoch
    asks the parts (trainer/parts.py) in the fixed order of self.parts."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        s, outputs = self.settings, self.outputs
        self.stepper = Stepper(self.model, self.optimizer, self.device, amp=s.amp, accumulate_steps=s.accumulate_steps,
                               clip_grad_norm=s.clip_grad_norm, skip_nonfinite=s.nonfinite_loss == "skip")
        self.batches = EpochBatches(self.data_loader, s.len_epoch, s.limit_train_batches)
        self.progress = s.verbosity > 0 and self.dist.is_main
        self.freezing = Freezing(self.model, s.freeze, s.unfreeze_at_epoch)
        self.metrics = TrainMetrics(self.metric_ftns, self.dist, outputs, self.device, self.classes)
        bar = ProgressBar(self.batches, self.progress)
        self.validation = Validation(self.valid_data_loader, s.val_every_epochs, s.val_every_steps, s.limit_val_batches,
                                     len_epoch=self.batches.len_epoch, mid_epoch=self._validate_mid_epoch)
        self.stops = Stops(self.signals, s.max_time_seconds, self.dist, self.device)
        self.loop = Loop(self.state, self.model)
        self.parts: list[Part] = [  # asked in this order at each epoch's start, after each step, at each epoch's end
            self.freezing, bar, self.metrics, StepLog(s.log_step, outputs, self.metrics, bar),
            ImageLog.from_setting(s.log_images, outputs),
            self.schedule,
            WeightAverage.from_setting(self.model, s.ema),
            self.validation,
            StepCheckpoints.from_setting(s.step_checkpoints, self.save_step_checkpoint, self.dist, self.device),
            self.stops,
            Histograms.from_setting(s.log_histograms, outputs),
            InjectedFault.from_environment(self.dist.rank, self.dist.world_size),  # TRAIN_FAULT, for tests
        ]

    def train_step(self, data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """Forward one batch and return (loss, output); override for a custom loss computation.

        The trainer does zero_grad, backward and the optimizer step around it.
        """
        output = self.model(data)
        return self.criterion(output, target), output

    def eval_step(self, data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """Forward one evaluation batch (validation and test.py); the same computation as train_step unless
        overridden."""
        return self.train_step(data, target)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        loop = self._start_epoch(epoch)
        for data, target in self.batches.epoch(epoch, loop.batch_in_epoch, loop.global_step):
            data, target = to_device(data, self.device, self.settings.channels_last), to_device(target, self.device)
            micro, group = self.batches.accumulation(loop.batch_in_epoch, self.stepper.accumulate_steps)
            loss, output, counted = self.stepper.step(lambda: self.train_step(data, target), micro, group)
            loop.step_done(data, target, loss, output, counted, stepped=micro == group - 1)
            for part in self.parts:
                part.on_step_end(loop)
        _optimizer_mode(self.optimizer, "eval")  # schedule-free: validate and save the averaged weights
        for part in self.parts:
            part.on_epoch_end(loop)  # the bar closed, the epoch's values (loop.values), histograms
        loop.release_batch()
        if self.validation.should_validate(epoch, self.epochs):
            loop.values.update(self._validate(epoch))
        return loop.values

    def _start_epoch(self, epoch: int) -> Loop:
        """The time limit between epochs (before anything of the epoch starts), training mode, then every part's
        on_epoch_start (Freezing may wrap the model anew under DDP)."""
        self.stops.between_epochs()
        self.model.train()
        _optimizer_mode(self.optimizer, "train")
        self.loop.start_epoch(epoch, self.model)
        for part in self.parts:
            part.on_epoch_start(self.loop)
        self.model = self.stepper.model = self.loop.model
        return self.loop

    def _validate(self, epoch: int) -> dict:
        """{val_<key>: value} over the validation batches, inside every part's validating() (the weights validation
        uses, say)."""
        with contextlib.ExitStack() as parts:
            for part in self.parts:
                parts.enter_context(part.validating(self.loop))
            values = self.evaluate(self.validation.batches(epoch), f"Valid {epoch}")
        return {f"val_{k}": v for k, v in values.items()}

    def _validate_mid_epoch(self, epoch: int) -> None:
        """Validate after this step; the monitor, model_best.pth, early stop and metrics.jsonl follow (BaseTrainer),
        and training goes on with every module in the mode it had."""
        modes = [(module, module.training) for module in self.model.modules()]
        _optimizer_mode(self.optimizer, "eval")
        row = {"epoch": epoch, "step": self.global_step, **self._validate(epoch)}
        _optimizer_mode(self.optimizer, "train")
        for module, training in modes:
            module.training = training
        self.on_validation(row)

    def evaluate(self, loader: Iterable, desc: str = "valid") -> dict[str, float]:
        """Loss and metrics over loader through eval_step, with the AMP autocast and memory format of training
        (summed over ranks under torchrun): validation, and test.py on the test split."""
        with self.stepper.autocast():
            return evaluate(self.model, loader, self.eval_step, self.metric_ftns, self.device,
                            channels_last=self.settings.channels_last, progress=self.progress, desc=desc,
                            across_ranks=self.dist.enabled, classes=self.classes)

    def save_step_checkpoint(self):
        self.metrics.check_finite(self.state.epoch + 1)  # nothing is saved after a NaN or infinite loss
        return super().save_step_checkpoint()

    def logged_keys(self) -> list[str]:
        return logged_keys(self.metric_ftns, self.valid_data_loader is not None, self.schedule.learning_rates())

    def checkpoint_parts(self) -> dict[str, Stateful]:
        named = {part.checkpoint_name: part for part in self.parts if part.checkpoint_name}
        return {**super().checkpoint_parts(), SCALER: self.stepper, **named}


def _optimizer_mode(optimizer: Any, mode: str) -> None:
    """Schedule-free optimizers (pytorch_optimizer's ScheduleFree*) keep train and eval weights: switch."""
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()
