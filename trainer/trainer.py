"""The default Trainer: one optimizer step per batch, validation each epoch, no host sync per step."""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from base import BaseTrainer
from utils.tracker import MetricTracker

Step = Callable[[Any, Any], "tuple[torch.Tensor, Any]"]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or tensors nested in lists/tuples/dicts, to device without blocking."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
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
             device: torch.device, progress: bool = False, desc: str = "valid") -> dict[str, float]:
    """Sample-weighted loss and metrics of model over loader, read from the device once."""
    model.eval()
    tracker = MetricTracker()
    for data, target in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        data, target = to_device(data, device), to_device(target, device)
        loss, output = step(data, target)
        track(tracker, metric_ftns, loss, output, target)
    return tracker.result()


class Trainer(BaseTrainer):
    """Trains on data_loader and validates on valid_data_loader each epoch."""

    def __init__(self, model: nn.Module, criterion: Callable, metric_ftns: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, *, data_loader: Any, valid_data_loader: Any = None,
                 len_epoch: int | None = None, log_step: int = 50, progress: bool = True,
                 log_images: bool = False, log_histograms: bool = False, **kwargs: Any):
        super().__init__(model, criterion, metric_ftns, optimizer, **kwargs)
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.iteration_based = len_epoch is not None
        self.len_epoch = len_epoch if self.iteration_based else len(data_loader)
        self._cycle: Iterator | None = None
        self.log_step = log_step
        self.progress = progress
        self.log_images = log_images
        self.log_histograms = log_histograms
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
        tracker = MetricTracker()
        samples, started = 0, time.perf_counter()
        bar = tqdm(total=self._epoch_samples(), desc=f"Epoch {epoch}", disable=not self.progress, leave=False,
                   unit="samples", dynamic_ncols=True)
        for batch_idx, (data, target) in enumerate(self._epoch_batches(epoch)):
            data, target = to_device(data, self.device), to_device(target, self.device)
            loss, output = self._optimizer_step(data, target)
            if self.lr_scheduler is not None and self.scheduler_interval == "step":
                self.lr_scheduler.step()
            self.global_step += 1
            n = batch_size_of(target)
            samples += n
            track(tracker, self.metric_ftns, loss, output, target)
            if self.global_step % self.log_step == 0:
                self._log_step(loss, tracker, bar)
            if batch_idx == 0 and self.log_images:
                self._log_images(data, epoch)
            bar.update(n)
        bar.close()
        log = tracker.result()
        log["samples_per_sec"] = samples / (time.perf_counter() - started)
        if self.valid_data_loader is not None:
            valid = evaluate(self.model, self.valid_data_loader, self.eval_step, self.metric_ftns, self.device,
                             progress=self.progress, desc=f"Valid {epoch}")
            log.update({f"val_{k}": v for k, v in valid.items()})
        if self.log_histograms:
            for name, param in self.model.named_parameters():
                self.writer.add_histogram(name, param, epoch)
        return log

    def _optimizer_step(self, data: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """zero_grad, train_step, backward and the optimizer step; returns the (last) loss and output.

        The step gets a closure: most optimizers call it once, and those that must re-evaluate
        the loss (LBFGS, ...) call it as often as they need.
        """
        result = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss, output = self.train_step(data, target)
            loss.backward()
            result[:] = [loss, output]
            return loss

        self.optimizer.step(closure)
        return result[0], result[1]

    def _epoch_batches(self, epoch: int) -> Iterable:
        """One pass over the data, or len_epoch batches of an endless cycle through it."""
        if not self.iteration_based:
            _set_epoch(self.data_loader, epoch)
            return self.data_loader
        if self._cycle is None:
            self._cycle = self._endless()
        return itertools.islice(self._cycle, self.len_epoch)

    def _epoch_samples(self) -> int | None:
        """Samples in one epoch, for the progress bar (None when unknown)."""
        sampler = getattr(self.data_loader, "sampler", None)
        if not self.iteration_based and hasattr(sampler, "__len__"):
            return len(sampler)
        batch_size = getattr(self.data_loader, "batch_size", None)
        return self.len_epoch * batch_size if batch_size else None

    def _endless(self) -> Iterator:
        for n in itertools.count(1):
            _set_epoch(self.data_loader, n)
            yield from self.data_loader

    def _log_step(self, loss: torch.Tensor, tracker: MetricTracker, bar: tqdm) -> None:
        # the one host sync in the loop, every log_step steps: this step's loss and the epoch's running mean
        value, running = torch.stack([loss.detach().float(), torch.as_tensor(tracker.running("loss"))]).tolist()
        self.writer.add_scalar("loss/train_step", value, self.global_step)
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)

    def _log_images(self, data: Any, epoch: int) -> None:
        if isinstance(data, torch.Tensor) and data.dim() == 4:
            from torchvision.utils import make_grid

            self.writer.add_image("input/train", make_grid(data[:64].detach().cpu(), nrow=8, normalize=True), epoch)


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell an epoch-aware sampler which epoch starts (fixes its shuffle order)."""
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return
