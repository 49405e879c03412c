"""The default Trainer: one optimizer step per batch, validation each epoch, no host sync per step."""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from base import BaseTrainer
from utils.errors import UserError
from utils.interrupt import StopRequested
from trainer.step import Stepper
from utils.distributed import any_rank
from utils.tracker import MetricTracker, NonFiniteGuard

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


def batch_size_of(target: Any) -> int:
    return target.shape[0] if isinstance(target, torch.Tensor) else len(target)


def track(tracker: MetricTracker, metric_ftns: dict[str, Callable], loss: torch.Tensor, output: Any,
          target: Any) -> None:
    """Add a batch's loss and metrics to the tracker, weighted by its size; stays on the device."""
    n = batch_size_of(target)
    tracker.update("loss", loss, n)
    with torch.no_grad():
        for name, fn in metric_ftns.items():
            tracker.update(name, fn(output, target), n)


def logged_keys(metric_ftns: Iterable[str], validates: bool) -> list[str]:
    """The keys each epoch's log holds (what trainer.monitor may name)."""
    train = ["loss", *metric_ftns]
    return train + ([f"val_{k}" for k in train] if validates else []) + ["lr", "samples_per_sec"]


def loss_step(model: nn.Module, criterion: Callable) -> Step:
    """(data, target) -> (loss, output): the default forward pass."""
    def step(data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        output = model(data)
        return criterion(output, target), output
    return step


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, step: Step, metric_ftns: dict[str, Callable],
             device: torch.device, progress: bool = False, desc: str = "valid",
             across_ranks: bool = False) -> dict[str, float]:
    """Sample-weighted loss and metrics of model over loader (and over every rank's share), read once."""
    model.eval()
    tracker = MetricTracker()
    for data, target in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        data, target = to_device(data, device), to_device(target, device)
        loss, output = step(data, target)
        track(tracker, metric_ftns, loss, output, target)
    return tracker.result(across_ranks)


class Trainer(BaseTrainer):
    """Trains on data_loader and validates on valid_data_loader each epoch."""

    def __init__(self, model: nn.Module, criterion: Callable, metric_ftns: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, *, data_loader: Any, valid_data_loader: Any = None,
                 len_epoch: int | None = None, log_step: int = 50, save_every_steps: int | None = None,
                 nonfinite_loss: str = "stop", channels_last: bool = False, amp: str | None = None,
                 accumulate_steps: int = 1, clip_grad_norm: float | None = None, progress: bool = True,
                 log_images: bool = False, log_histograms: bool = False, **kwargs: Any):
        super().__init__(model, criterion, metric_ftns, optimizer, **kwargs)
        self.stepper = Stepper(model, optimizer, self.device, amp=amp, accumulate_steps=accumulate_steps,
                               clip_grad_norm=clip_grad_norm, skip_nonfinite=nonfinite_loss == "skip")
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.iteration_based = len_epoch is not None
        self.batches_per_pass = len(data_loader)
        self.len_epoch = len_epoch if self.iteration_based else self.batches_per_pass
        self.log_step = log_step
        self.save_every_steps = save_every_steps
        self.channels_last = channels_last
        self.progress = progress
        self.log_images = log_images
        self.log_histograms = log_histograms
        self.guard = NonFiniteGuard()
        self.monitor.check_keys(logged_keys(metric_ftns, valid_data_loader is not None))

    def train_step(self, data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """Forward one batch and return (loss, output); override for a custom loss computation.

        The trainer does zero_grad, backward and the optimizer step around it.
        """
        output = self.model(data)
        return self.criterion(output, target), output

    def eval_step(self, data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """Forward one validation batch; the same computation as train_step unless overridden."""
        return self.train_step(data, target)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        _optimizer_mode(self.optimizer, "train")
        if not self.batch_in_epoch:  # else: resuming mid-epoch with the saved partial sums
            self.train_tracker.reset()
        tracker, skipped = self.train_tracker, 0
        self.guard.reset(self.global_step)
        samples, started = 0, time.perf_counter()
        bar = tqdm(total=self._epoch_samples(), desc=f"Epoch {epoch}", disable=not self.progress, leave=False,
                   unit="samples", dynamic_ncols=True)
        for data, target in self._epoch_batches(epoch):
            data, target = to_device(data, self.device, self.channels_last), to_device(target, self.device)
            micro, group = self._accumulation_position()
            loss, output, finite = self.stepper.step(lambda: self.train_step(data, target), micro, group)
            stepped = micro == group - 1  # an optimizer step was taken: a point where state can be saved
            if stepped and self.lr_scheduler is not None and self.scheduler_interval == "step":
                self.lr_scheduler.step()
            self.global_step += 1
            self.batch_in_epoch += 1
            n = batch_size_of(target)
            samples += n
            if finite:
                track(tracker, self.metric_ftns, loss, output, target)
                self.guard.update(loss)
            else:
                skipped += 1
            log_now = self.global_step % self.log_step == 0
            if log_now:
                self._log_step(loss, tracker, bar, epoch)
            if self.batch_in_epoch == 1 and self.log_images:
                self._log_images(data, epoch)
            bar.update(n)
            if stepped and self.save_every_steps and self.global_step % self.save_every_steps == 0:
                self._check_finite(epoch)
                self.save_step_checkpoint()
            if stepped and self._stop_requested(at_sync_point=log_now):
                self._check_finite(epoch)
                raise StopRequested
        bar.close()
        log = tracker.result(across_ranks=self.dist.enabled)
        if not math.isfinite(log.get("loss", 0.0)):
            self._check_finite(epoch)
        if skipped:
            self.logger.warning("Epoch %d: skipped %d batch(es) with a non-finite loss.", epoch, skipped)
        log["samples_per_sec"] = samples * self.dist.world_size / (time.perf_counter() - started)  # the job's
        _optimizer_mode(self.optimizer, "eval")  # schedule-free: validate and save the averaged weights
        if self.valid_data_loader is not None:
            _set_epoch(self.valid_data_loader, epoch)
            with self.stepper.autocast():
                valid = evaluate(self.model, self.valid_data_loader, self.eval_step, self.metric_ftns, self.device,
                                 progress=self.progress, desc=f"Valid {epoch}", across_ranks=self.dist.enabled)
            log.update({f"val_{k}": v for k, v in valid.items()})
        if self.log_histograms:
            for name, param in self.model.named_parameters():
                self.writer.add_histogram(name, param, epoch)
        return log

    def _accumulation_position(self) -> tuple[int, int]:
        """(this batch's place in its accumulation group, the group's size: smaller at the end of an epoch)."""
        k = self.stepper.accumulate_steps
        micro = self.batch_in_epoch % k
        return micro, min(k, self.len_epoch - (self.batch_in_epoch - micro))

    def _stop_requested(self, at_sync_point: bool) -> bool:
        """Whether a stop signal arrived; under DDP every rank agrees, at the log_step sync points only."""
        if not self.dist.enabled:
            return self.signals.requested is not None
        return at_sync_point and any_rank(self.signals.requested is not None, self.device)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scaler": self.stepper.state_dict()}

    def load_state_dict(self, state: dict, load_optimizer: bool = True) -> None:
        super().load_state_dict(state, load_optimizer)
        self.stepper.load_state_dict(state.get("scaler"))

    def _check_finite(self, epoch: int) -> None:
        """Stop with a clear message when a loss since the epoch began was NaN or infinite."""
        bad = self.guard.first_bad_step()
        if bad is not None:
            latest = self.checkpointer.latest if self.checkpointer else None
            raise UserError(
                f"the training loss became NaN or infinite at epoch {epoch}, step {bad} (global); training "
                f"stopped without saving, so the newest valid checkpoint is {latest or 'none'}. Lower "
                f"optimizer.args.lr or check the data, or set trainer.nonfinite_loss=\"skip\" to skip such batches")

    def _epoch_batches(self, epoch: int) -> Iterable:
        """One pass over the data (from batch_in_epoch on), or len_epoch batches of an endless cycle."""
        if self.iteration_based:
            return itertools.islice(self._endless(self.global_step), self.len_epoch - self.batch_in_epoch)
        _set_epoch(self.data_loader, epoch)
        _skip(self.data_loader, self.batch_in_epoch)
        return self.data_loader

    def _endless(self, position: int) -> Iterator:
        """Batches of passes 1, 2, ... over the data, starting after `position` batches (by index)."""
        passes, offset = divmod(position, self.batches_per_pass)
        for n in itertools.count(passes + 1):
            _set_epoch(self.data_loader, n)
            _skip(self.data_loader, offset if n == passes + 1 else 0)
            yield from self.data_loader

    def _epoch_samples(self) -> int | None:
        """Samples in one epoch, for the progress bar (None when unknown)."""
        sampler = getattr(self.data_loader, "sampler", None)
        if not self.iteration_based and hasattr(sampler, "__len__"):
            return len(sampler)
        batch_size = getattr(self.data_loader, "batch_size", None)
        return self.len_epoch * batch_size if batch_size else None

    def _log_step(self, loss: torch.Tensor, tracker: MetricTracker, bar: tqdm, epoch: int) -> None:
        # the one host sync in the loop, every log_step steps: this step's loss and the epoch's running mean
        value, running = torch.stack([loss.detach().float(), torch.as_tensor(tracker.running("loss"))]).tolist()
        if not math.isfinite(running):
            self._check_finite(epoch)
        self.guard.reset(self.global_step)  # every loss so far was finite: forget them
        self.writer.add_scalar("loss/train_step", value, self.global_step)
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)

    def _log_images(self, data: Any, epoch: int) -> None:
        if isinstance(data, torch.Tensor) and data.dim() == 4:
            from torchvision.utils import make_grid

            self.writer.add_image("input/train", make_grid(data[:64].detach().cpu(), nrow=8, normalize=True), epoch)


def _optimizer_mode(optimizer: Any, mode: str) -> None:
    """Schedule-free optimizers (pytorch_optimizer's ScheduleFree*) keep train and eval weights: switch."""
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell an epoch-aware loader or sampler which epoch starts (fixes its shuffle order)."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def _skip(loader: Any, batches: int) -> None:
    """Make the loader's next pass start after `batches` batches, by index (nothing is loaded)."""
    if not batches:
        return
    sampler = getattr(loader, "sampler", None)
    if not hasattr(sampler, "skip"):
        raise UserError(f"cannot resume in the middle of an epoch: the data loader's sampler "
                        f"({type(sampler).__name__}) cannot skip samples; use a BaseDataLoader, or resume "
                        f"from a checkpoint-epoch<N>.pth")
    sampler.skip(batches * loader.batch_size)
