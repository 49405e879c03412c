"""The parts the Trainer's loop asks, through one interface (utils/part.py's Part: on_epoch_start, on_step_end and
on_epoch_end, each told the Loop; validating around each validation; checkpoint_name where it has state), in the
fixed order of Trainer.parts:

    Freezing         at each epoch's start: the parameters trainer.freeze names frozen or not, as the epoch says
    ProgressBar      the epoch's progress bar
    TrainMetrics     the epoch's sample-weighted sums on the device and the non-finite guard (a checkpoint part)
    StepLog          every log_step steps: the loop's one host sync (a sync point), loss_step, the bar's loss
    ImageLog         a grid of the epoch's first batch (log_images)
    LRSchedule       the scheduler stepped after each optimizer step (lr_scheduler.interval "step"; utils/schedule.py)
    WeightAverage    the EMA of the weights, which validation uses (trainer.ema; trainer/ema.py; a checkpoint part)
    Validation       when to validate (epochs, steps), on which batches; validates in the middle of an epoch
    StepCheckpoints  checkpoint-step<N>.pth every N optimizer steps or M minutes (trainer.checkpoint_every)
    Stops            whether a signal or trainer.max_time stops training here, agreed by every rank
    Histograms       weight histograms after each epoch (log_histograms)
    InjectedFault    a test's fault: this rank kills itself after a given step (TRAIN_FAULT; utils/faults.py)

and EpochBatches, which batches an epoch trains on. A feature that is off is a do-nothing Part (its from_setting
returns one), never None. A new feature is one more part here, one setting in config/settings.py and one line in
Trainer.parts.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from tqdm import tqdm

from base.base_trainer import RunOutputs, TrainState
from utils.checkpoint import TRACKER, unwrap
from utils.distributed import Dist, any_rank, rewrap
from utils.errors import UserError
from utils.fsdp import whole
from utils.interrupt import SignalStop, StopTraining
from utils.params import matching, unmatched
from utils.part import Part
from utils.tracker import EpochMetrics, MetricTracker, NonFiniteGuard, split_metrics


@dataclass(eq=False)
class Loop:
    """What the loop tells its parts: where training stands (state: its counts, a checkpoint part), the epoch under
    way and the model being trained (Freezing may wrap it anew); after each step its batch, loss and output, whether
    the batch counted (not skipped as non-finite), whether the optimizer stepped (the end of an accumulation group: a
    point where the state can be saved) and whether values were read on the host (a sync point, set by StepLog); at
    the epoch's end its logged values (set by TrainMetrics)."""
    state: TrainState
    model: nn.Module
    epoch: int = 0
    data: Any = None
    target: Any = None
    loss: torch.Tensor | None = None
    output: Any = None
    counted: bool = True
    stepped: bool = False
    synced: bool = False
    values: dict = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def batch_in_epoch(self) -> int:
        return self.state.batch_in_epoch

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        self.epoch, self.model, self.values = epoch, model, {}

    def step_done(self, data: Any, target: Any, loss: torch.Tensor, output: Any, counted: bool, stepped: bool) -> None:
        """A step was taken on this batch: one more step and batch."""
        self.state.global_step += 1
        self.state.batch_in_epoch += 1
        self.data, self.target, self.loss, self.output = data, target, loss, output
        self.counted, self.stepped, self.synced = counted, stepped, False

    def release_batch(self) -> None:
        """Let go of the last step's batch and output (they are not kept past the epoch's steps)."""
        self.data = self.target = self.loss = self.output = None


def batch_size_of(target: Any) -> int:
    return target.shape[0] if isinstance(target, torch.Tensor) else len(target)


def track(tracker: MetricTracker, metric_ftns: dict[str, Callable], loss: torch.Tensor, output: Any,
          target: Any, epoch_metrics: EpochMetrics | None = None) -> None:
    """Add a batch's loss and function metrics to the tracker, weighted by its size, and the batch to the stateful
    metrics (epoch_metrics); stays on the device."""
    n = batch_size_of(target)
    tracker.update("loss", loss, n)
    with torch.no_grad():
        for name, fn in metric_ftns.items():
            tracker.update(name, fn(output, target), n)
        if epoch_metrics:
            epoch_metrics.update(output.detach() if isinstance(output, torch.Tensor) else output, target)


def in_config_order(log: dict, metric_names: Iterable[str]) -> dict:
    """log with loss and the metrics in config order first (functions and stateful metrics are read apart)."""
    first = [k for k in ("loss", *metric_names) if k in log]
    return {**{k: log[k] for k in first}, **{k: v for k, v in log.items() if k not in first}}


class EpochBatches:
    """The batches of an epoch: one pass over the loader (from a position, by index), or len_epoch batches
    of passes 1, 2, ... cycled (iteration-based training)."""

    def __init__(self, loader: Any, len_epoch: int | None, limit: int | float | None = None):
        """limit: trainer.limit_train_batches, a count or a fraction of one pass's batches."""
        self.loader = loader
        self.iteration_based = len_epoch is not None
        self.batches_per_pass = len(loader) if loader is not None else 0
        self.len_epoch = len_epoch if self.iteration_based else self.batches_per_pass
        self.limited = limit is not None and limited(self.len_epoch, limit) < self.len_epoch
        self.len_epoch = limited(self.len_epoch, limit)

    def epoch(self, epoch: int, done: int, global_step: int) -> Iterable:
        """Epoch's batches after the first `done` of them (global_step batches trained so far in all)."""
        if self.iteration_based:
            return itertools.islice(self._endless(global_step), self.len_epoch - done)
        set_epoch(self.loader, epoch)
        skip(self.loader, done)
        return itertools.islice(self.loader, self.len_epoch - done) if self.limited else self.loader

    def _endless(self, position: int) -> Iterator:
        passes, offset = divmod(position, self.batches_per_pass)
        for n in itertools.count(passes + 1):
            set_epoch(self.loader, n)
            skip(self.loader, offset if n == passes + 1 else 0)
            yield from self.loader

    def accumulation(self, done: int, k: int) -> tuple[int, int]:
        """(the next batch's place in its accumulation group of k, the group's size: smaller at the epoch's end)."""
        micro = done % k
        return micro, min(k, self.len_epoch - (done - micro))

    def samples(self) -> int | None:
        """Samples in one epoch, for the progress bar (None when unknown)."""
        sampler = getattr(self.loader, "sampler", None)
        if not self.iteration_based and not self.limited and hasattr(sampler, "__len__"):
            return len(sampler)
        batch_size = getattr(self.loader, "batch_size", None)
        return self.len_epoch * batch_size if batch_size else None


class TrainMetrics(Part):
    """The epoch's loss and function metrics, summed on the device weighted by batch size, and its stateful
    (torchmetrics) metrics; the losses since the last sync point (to name the first NaN or infinite one); the
    batches skipped; the samples per second. In a mid-epoch checkpoint it holds the partial sums and the stateful
    metrics' states (every rank's, carried by rank 0)."""

    checkpoint_name = TRACKER

    def __init__(self, metric_ftns: dict[str, Any], dist: Dist, outputs: RunOutputs,
                 device: torch.device = torch.device("cpu"), classes: list[str] | None = None):
        self.names = list(metric_ftns)
        self.metric_ftns, stateful = split_metrics(metric_ftns)
        self.epoch_metrics = EpochMetrics(stateful, device, classes)
        self.dist = dist
        self.outputs = outputs
        self.tracker = MetricTracker()
        self.guard = NonFiniteGuard()
        self.skipped = self.samples = 0
        self.started = 0.0
        self.open = False  # an epoch is under way (its sums belong in a checkpoint)

    def on_epoch_start(self, loop: Loop) -> None:
        """Start the epoch's sums, or go on with those of a checkpoint taken in the middle of it."""
        if not self.open:
            self.tracker.reset()
            self.epoch_metrics.reset()
        self.open, self.skipped, self.samples, self.started = True, 0, 0, time.perf_counter()
        self.guard.reset(loop.global_step)

    def on_step_end(self, loop: Loop) -> None:
        self.samples += batch_size_of(loop.target)
        if loop.counted:
            track(self.tracker, self.metric_ftns, loop.loss, loop.output, loop.target, self.epoch_metrics)
            self.guard.update(loop.loss)
        else:
            self.skipped += 1

    def on_epoch_end(self, loop: Loop) -> None:
        """The epoch's values become the loop's (loop.values)."""
        loop.values = self.result(loop.epoch)

    def running_loss(self) -> torch.Tensor | float:
        return self.tracker.running("loss")

    def all_finite_until(self, global_step: int) -> None:
        """Every loss up to global_step was finite (checked at a sync point): forget them."""
        self.guard.reset(global_step)

    def check_finite(self, epoch: int) -> None:
        """Stop with a clear message when a loss since the last sync point was NaN or infinite."""
        bad = self.guard.first_bad_step()
        if bad is not None:
            latest = self.outputs.checkpointer.latest
            raise UserError(
                f"the training loss became NaN or infinite at epoch {epoch}, step {bad} (global); training "
                f"stopped without saving, so the newest valid checkpoint is {latest or 'none'}. Lower "
                f"optimizer.args.lr or check the data, or set trainer.nonfinite_loss=\"skip\" to skip such batches")

    def result(self, epoch: int) -> dict[str, float]:
        """The epoch's means (summed over ranks: one host sync) and the job's samples per second. Ends the epoch."""
        log = in_config_order({**self.tracker.result(across_ranks=self.dist.enabled), **self.epoch_metrics.result()},
                              self.names)
        log["samples_per_sec"] = self.samples * self.dist.world_size / (time.perf_counter() - self.started)
        if not math.isfinite(log.get("loss", 0.0)):
            self.check_finite(epoch)
        if self.skipped:
            logging.getLogger("trainer").warning("Epoch %d: skipped %d batch(es) with a non-finite loss.", epoch,
                                                 self.skipped)
        self.open = False
        return log

    def state_dict(self) -> dict | None:
        if not self.open:
            return None
        state = self.tracker.state_dict(self.dist.enabled)  # under DDP: a collective
        if self.epoch_metrics:
            state["stateful"] = self.epoch_metrics.state_dict(self.dist.enabled)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Each rank goes on with its own sums when the checkpoint holds those of as many ranks; otherwise the main
        rank carries everyone's. The stateful metrics' states are every rank's: the main rank carries them."""
        own = self.tracker.holds_each_rank(state, self.dist.world_size)
        if own or self.dist.is_main:
            self.tracker.load_state_dict(state, self.dist.rank if own else None)
        if self.dist.is_main:
            self.epoch_metrics.load_state_dict(state.get("stateful", {}))
        else:
            self.epoch_metrics.reset()
        self.open = True


class ProgressBar(Part):
    """The epoch's progress bar (shown: verbosity > 0, on the main rank): the samples done, and the running loss
    StepLog reads at each sync point."""

    def __init__(self, batches: EpochBatches, shown: bool):
        self.batches, self.shown = batches, shown
        self.bar: tqdm | None = None

    def on_epoch_start(self, loop: Loop) -> None:
        self.bar = tqdm(total=self.batches.samples(), desc=f"Epoch {loop.epoch}", disable=not self.shown, leave=False,
                        unit="samples", dynamic_ncols=True)

    def on_step_end(self, loop: Loop) -> None:
        self.bar.update(batch_size_of(loop.target))

    def on_epoch_end(self, loop: Loop) -> None:
        self.bar.close()

    def show(self, running_loss: float) -> None:
        self.bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)


class StepLog(Part):
    """Every log_step steps: reads this step's loss and the epoch's running mean (the loop's one host sync: it marks
    the loop's sync point), checks them, reports loss_step and shows the running loss on the progress bar."""

    def __init__(self, log_step: int, outputs: RunOutputs, metrics: TrainMetrics, progress: ProgressBar):
        self.log_step = log_step
        self.outputs, self.metrics, self.progress = outputs, metrics, progress

    def on_step_end(self, loop: Loop) -> None:
        step = loop.global_step
        if step % self.log_step:
            return
        loss, running = loop.loss.detach().float(), torch.as_tensor(self.metrics.running_loss())
        value, running = torch.stack([loss, running]).tolist()
        if not math.isfinite(running):
            self.metrics.check_finite(loop.epoch)
        self.metrics.all_finite_until(step)
        self.outputs.reporter.log_step({"step": step, "loss_step": value})
        self.progress.show(running)
        loop.synced = True


class ImageLog(Part):
    """A grid of the first 64 inputs of each epoch's first batch (4-D image batches only)."""

    def __init__(self, outputs: RunOutputs):
        self.outputs = outputs

    @classmethod
    def from_setting(cls, log_images: bool, outputs: RunOutputs) -> Part:
        return cls(outputs) if log_images else Part()

    def on_step_end(self, loop: Loop) -> None:
        data = loop.data
        if loop.batch_in_epoch == 1 and isinstance(data, torch.Tensor) and data.dim() == 4:
            from torchvision.utils import make_grid  # torchvision only when images are logged

            grid = make_grid(data[:64].detach().cpu(), nrow=8, normalize=True)
            self.outputs.reporter.log_image("input", grid, loop.epoch)


class StepCheckpoints(Part):
    """A checkpoint in the middle of an epoch (written by save: the trainer's save_step_checkpoint) every `steps`
    optimizer steps, or at the first optimizer step `seconds` after the last checkpoint (or this process's start; an
    epoch's end writes one too). Under DDP the time is read on the main rank's clock and every rank learns its
    verdict at a sync point (as trainer.max_time is agreed: a collective there, none per step); in a single process
    the clock is read after each optimizer step, which needs no host sync."""

    def __init__(self, save: Callable[[], Any], steps: int | None = None, seconds: float | None = None,
                 dist: Dist | None = None, device: torch.device | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.save, self.steps, self.seconds = save, steps, seconds
        self.dist, self.device, self.clock = dist or Dist(), device or torch.device("cpu"), clock
        self.last = clock()

    @classmethod
    def from_setting(cls, every: tuple[int | None, float | None], save: Callable[[], Any], dist: Dist,
                     device: torch.device) -> Part:
        """every: TrainerSettings.step_checkpoints, (steps, seconds)."""
        steps, seconds = every
        return cls(save, steps, seconds, dist, device) if steps or seconds else Part()

    def on_step_end(self, loop: Loop) -> None:
        if not loop.stepped:
            return
        if self.steps and loop.global_step % self.steps == 0 or self.seconds is not None and self._due(loop.synced):
            self.save()
            self.last = self.clock()

    def on_epoch_end(self, loop: Loop) -> None:
        self.last = self.clock()  # the epoch's checkpoint follows

    def _due(self, at_sync_point: bool) -> bool:
        due = self.clock() - self.last >= self.seconds
        if not self.dist.enabled:
            return due
        return at_sync_point and any_rank(self.dist.is_main and due, self.device)


class Stops(Part):
    """Whether training stops here, and why: a stop signal (SIGINT, SIGTERM, SIGUSR1) arrived, or trainer.max_time
    (seconds; None: no limit) has passed for this process. Under DDP every rank agrees, at sync points only (the
    agreement is a collective, and the clocks differ). It raises StopTraining; the loop saves the state."""

    def __init__(self, signals: SignalStop, seconds: float | None, dist: Dist, device: torch.device):
        self.signals, self.seconds, self.dist, self.device = signals, seconds, dist, device
        self.at = None if seconds is None else time.monotonic() + seconds
        self.epochs_started = 0

    def between_epochs(self) -> None:
        """At an epoch's start, before the other parts: the time limit (every rank agrees here); this process's first
        epoch always runs."""
        self.epochs_started += 1
        if self.epochs_started > 1 and self._late(at_sync_point=True):
            raise StopTraining(StopTraining.TIME_LIMIT, seconds=self.seconds)

    def on_step_end(self, loop: Loop) -> None:
        """After an optimizer step: a signal first, then the time limit."""
        if not loop.stepped:
            return
        if self._signalled(loop.synced):
            raise StopTraining.by_signal(self.signals.requested)
        if self._late(loop.synced):
            raise StopTraining(StopTraining.TIME_LIMIT, seconds=self.seconds)

    def _signalled(self, at_sync_point: bool) -> bool:
        if not self.dist.enabled:
            return self.signals.requested is not None
        return at_sync_point and any_rank(self.signals.requested is not None, self.device)

    def _late(self, at_sync_point: bool) -> bool:
        if self.at is None:
            return False
        late = time.monotonic() > self.at
        return late if not self.dist.enabled else at_sync_point and any_rank(late, self.device)


class Validation(Part):
    """When to validate and on which batches: after every every_epochs-th epoch and the last one, every every_steps
    optimizer steps (None: never mid-epoch), on the first limit batches (a count or a fraction; None: all). In the
    middle of an epoch of len_epoch batches it calls mid_epoch(epoch); the epoch's last step is validated at its
    end."""

    def __init__(self, loader: Any, every_epochs: int = 1, every_steps: int | None = None,
                 limit: int | float | None = None, *, len_epoch: int = 0,
                 mid_epoch: Callable[[int], None] = lambda epoch: None):
        self.loader, self.every_epochs, self.every_steps, self.limit = loader, every_epochs, every_steps, limit
        self.len_epoch, self.mid_epoch = len_epoch, mid_epoch

    def on_step_end(self, loop: Loop) -> None:
        if loop.stepped and self.at_step(loop.global_step) and loop.batch_in_epoch < self.len_epoch:
            self.mid_epoch(loop.epoch)

    def should_validate(self, epoch: int, last_epoch: int | None = None) -> bool:
        """At the end of epoch."""
        return self.loader is not None and (epoch % self.every_epochs == 0 or epoch == last_epoch)

    def at_step(self, global_step: int) -> bool:
        """After this optimizer step, in the middle of an epoch."""
        return self.loader is not None and bool(self.every_steps) and global_step % self.every_steps == 0

    def batches(self, epoch: int) -> Iterable:
        """The loader, set to epoch, cut to limit batches."""
        set_epoch(self.loader, epoch)
        if self.limit is None:
            return self.loader
        return itertools.islice(self.loader, limited(len(self.loader), self.limit))


def limited(n: int, limit: int | float | None) -> int:
    """n batches cut by a limit: a count (an int), or a fraction (a float; at least one batch)."""
    if limit is None:
        return n
    return min(n, limit) if isinstance(limit, int) else min(n, max(1, int(n * limit)))


class Histograms(Part):
    """Every parameter's histogram after each epoch (a sharded one's whole tensor: every rank takes part)."""

    def __init__(self, outputs: RunOutputs):
        self.outputs = outputs

    @classmethod
    def from_setting(cls, log_histograms: bool, outputs: RunOutputs) -> Part:
        return cls(outputs) if log_histograms else Part()

    def on_epoch_end(self, loop: Loop) -> None:
        for name, param in loop.model.named_parameters():
            self.outputs.reporter.log_histogram(name, whole(param), loop.epoch)


class Freezing(Part):
    """trainer.freeze: the parameters its patterns name get no gradient until unfreeze_at_epoch. The optimizer
    holds them all along: it skips a parameter without a gradient, so its values stay bit-identical and no
    weight decay touches it, and unfreezing changes no optimizer structure. The norm layers whose parameters are
    all frozen (by their buffers' names when they have none) stay in eval mode, their running statistics as
    loaded. Whether an epoch is frozen follows from its number: resume needs no state. Parameters the model
    itself made untrainable are left alone."""

    def __init__(self, model: nn.Module, patterns: list[str], unfreeze_at: int | None):
        plain = unwrap(model)
        arch, named = type(plain).__name__, dict(plain.named_parameters())
        norms = [(name, m) for name, m in plain.named_modules() if isinstance(m, _NormBase)]
        stats = {name: [f"{name}.{b}" for b, _ in m.named_buffers(recurse=False)]  # norm layers without parameters
                 for name, m in norms if not list(m.parameters(recurse=False))}
        problems = unmatched([*named, *itertools.chain(*stats.values())], patterns, "trainer.freeze", arch)
        if problems:
            raise UserError(problems)
        chosen = set(matching(named, patterns))
        self.params = [p for name, p in named.items() if name in chosen and p.requires_grad]
        if self.params and not any(p.requires_grad for name, p in named.items() if name not in chosen):
            raise UserError(f"trainer.freeze: {patterns} freezes every trainable parameter of {arch}, so nothing "
                            f"would train; leave some out (the head, say)")
        ids = {id(p) for p in self.params}
        self.norms = [m for name, m in norms if (matching(stats[name], patterns) if name in stats
                                                 else all(id(p) in ids for p in m.parameters(recurse=False)))]
        self.unfreeze_at = unfreeze_at
        self.frozen = False  # the state the model is in now
        self.logger = logging.getLogger("trainer")

    def is_frozen(self, epoch: int) -> bool:
        return bool(self.params or self.norms) and (self.unfreeze_at is None or epoch < self.unfreeze_at)

    def on_epoch_start(self, loop: Loop) -> None:
        """Freeze or unfreeze as the epoch says (after model.train()); under torchrun loop.model is wrapped in a new
        DistributedDataParallel when the parameters that train changed."""
        frozen = self.is_frozen(loop.epoch)
        if frozen != self.frozen:
            self.frozen = frozen
            for p in self.params:
                p.requires_grad_(not frozen)
            count = f"{sum(p.numel() for p in self.params):,} parameters in {len(self.params)} tensors"
            if frozen:
                until = f"until epoch {self.unfreeze_at}" if self.unfreeze_at else "for the whole run"
                self.logger.info("Epoch %d: freezing %s (trainer.freeze) and %d norm layers' statistics %s.",
                                 loop.epoch, count, len(self.norms), until)
            else:
                self.logger.info("Epoch %d: unfreezing %s (trainer.unfreeze_at_epoch).", loop.epoch, count)
            loop.model = rewrap(loop.model)
        if frozen:
            for norm in self.norms:
                norm.eval()


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell an epoch-aware loader or sampler which epoch starts (fixes its shuffle order)."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def skip(loader: Any, batches: int) -> None:
    """Make the loader's next pass start after `batches` batches, by index (nothing is loaded)."""
    if not batches:
        return
    sampler = getattr(loader, "sampler", None)
    if not hasattr(sampler, "skip"):
        raise UserError(f"cannot resume in the middle of an epoch: the data loader's sampler "
                        f"({type(sampler).__name__}) cannot skip samples; use a BaseDataLoader, or resume "
                        f"from a checkpoint-epoch<N>.pth")
    sampler.skip(batches * loader.batch_size)
