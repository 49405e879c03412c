"""The learning-rate finder (python train.py -c config.json --find-lr): an exponential sweep of the learning rate
through the trainer's own train_step and Stepper (AMP, accumulation, clipping as configured), a suggestion at the
steepest descent of the smoothed loss, a plot and the raw values. The model, optimizer, scheduler, scaler and random
states are restored afterwards, bit for bit; nothing of a run is written, only the finder's results."""
from __future__ import annotations

import copy
import csv
import itertools
import math
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from base import BaseTrainer
from trainer.parts import Loop, set_epoch
from trainer.trainer import to_device
from utils.checkpoint import gather, restore
from utils.distributed import Dist
from utils.errors import UserError
from utils.util import RUN_ID_FORMAT

DEFAULT_RANGE = (1e-7, 10.0)
DEFAULT_STEPS = 200
MIN_STEPS = 10  # the fewest steps --lr-steps takes, and the fewest points a suggestion is made from
BETA = 0.98  # the smoothing of the loss: an exponential moving average, bias-corrected
DIVERGE = 4.0  # the sweep stops when the smoothed loss exceeds this many times its best
SKIP_START = 0.1  # the first points (this share) are left out of the suggestion: the average is still settling
FILES = ("lr_find.png", "lr_find.csv")


@dataclass(frozen=True)
class FinderOptions:
    """What --find-lr sweeps: from min_lr to max_lr in steps; run_id names the results directory; argv is the
    command line, from which the command to train with the suggestion is made."""
    min_lr: float = DEFAULT_RANGE[0]
    max_lr: float = DEFAULT_RANGE[1]
    steps: int = DEFAULT_STEPS
    run_id: str | None = None
    argv: Sequence[str] = ()


@dataclass
class Sweep:
    """The learning rates tried, the loss of each step and its smoothed value; why the sweep stopped early."""
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None


def finder_options(args: Any, argv: Sequence[str], dist: Dist) -> FinderOptions | None:
    """The finder's options from train.py's flags (None without --find-lr); a bad value or combination is a
    UserError naming the flag."""
    if not args.find_lr:
        given = [flag for flag, value in (("--lr-range", args.lr_range), ("--lr-steps", args.lr_steps))
                 if value is not None]
        if given:
            raise UserError(f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} with --find-lr; add it, "
                            f"or leave {'it' if len(given) == 1 else 'them'} out to train")
        return None
    if args.resume:
        raise UserError("--find-lr sweeps a model built from the config, and -r continues a run: give -c instead "
                        "(with --init-from RUN_DIR to start from a run's weights)")
    for flag in ("--dry-run", "--fast-dev-run"):
        if getattr(args, flag[2:].replace("-", "_"), False):
            raise UserError(f"--find-lr and {flag}: give one of them")
    if dist.enabled:
        raise UserError(f"--find-lr runs in one process, not under torchrun ({dist.world_size} processes): run "
                        f"python train.py -c CONFIG --find-lr")
    low, high = args.lr_range or DEFAULT_RANGE
    if not (math.isfinite(low) and math.isfinite(high) and low > 0 and high > 0):
        raise UserError(f"--lr-range MIN MAX takes two positive learning rates, got {low:g} {high:g}")
    if low >= high:
        raise UserError(f"--lr-range MIN MAX: MIN must be below MAX, got {low:g} {high:g}")
    steps = DEFAULT_STEPS if args.lr_steps is None else args.lr_steps
    if steps < MIN_STEPS:
        raise UserError(f"--lr-steps must be at least {MIN_STEPS}, got {steps}")
    return FinderOptions(low, high, steps, args.run_id, list(argv))


def find_lr(trainer: BaseTrainer, options: FinderOptions, name: str) -> tuple[Sweep, int | None, Path]:
    """Sweep, print the suggestion and write the plot and CSV under <save_dir>/lr_find/<name>/<run id>/.
    Returns the sweep, the index of the suggested learning rate (None when there is none) and the directory."""
    out = results_dir(Path(trainer.settings.save_dir) / "lr_find" / name, options.run_id)
    sweep = lr_sweep(trainer, options.min_lr, options.max_lr, options.steps)
    best = suggest(sweep.lrs, sweep.smoothed)
    out.mkdir(parents=True, exist_ok=True)
    png, csv_path = (out / f for f in FILES)
    write_csv(sweep, csv_path)
    plot(sweep, best, png, title=f"{name}: loss against learning rate")
    print(report(sweep, best, options))
    print(f"Plot: {png}\nValues: {csv_path}")
    return sweep, best, out


def results_dir(root: Path, run_id: str | None) -> Path:
    """A new directory under root: run_id (which must be new), else a timestamp as the run directories use, with a
    suffix when taken. Not created here: the sweep may still fail."""
    if run_id:
        if (root / run_id).exists():
            raise UserError(f"{root / run_id} already exists; choose another --run-id")
        return root / run_id
    base = datetime.now().strftime(RUN_ID_FORMAT)
    return next(root / rid for rid in itertools.chain([base], (f"{base}_{n}" for n in itertools.count(1)))
                if not (root / rid).exists())


def lr_sweep(trainer: BaseTrainer, min_lr: float, max_lr: float, steps: int) -> Sweep:
    """One optimizer step per learning rate of a geometric series from min_lr to max_lr, each on the next training
    batch(es), as training takes them; stops early when the smoothed loss diverges or is not finite. The trainer's
    checkpoint parts (model, optimizer, scheduler, scaler, random states, ...) and the loader's epoch are restored."""
    stepper = getattr(trainer, "stepper", None)
    if stepper is None or not callable(getattr(trainer, "train_step", None)):
        raise UserError(f"trainer.type {type(trainer).__name__} has no train_step and stepper, which --find-lr "
                        f"uses; derive it from trainer.Trainer")
    parts = trainer.checkpoint_parts()
    saved = copy.deepcopy(gather(parts))  # deep: the model's and optimizer's state dicts hold the live tensors
    was_training, loader_epoch = trainer.model.training, getattr(trainer.data_loader, "epoch", None)
    try:
        return _sweep(trainer, stepper, geometric(min_lr, max_lr, steps))
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        restore(parts, saved)
        trainer.model.train(was_training)
        if loader_epoch is not None:
            set_epoch(trainer.data_loader, loader_epoch)


def geometric(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """steps learning rates from min_lr to max_lr, each the previous one times the same factor."""
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def _sweep(trainer: Any, stepper: Any, lrs: list[float]) -> Sweep:
    _training_mode(trainer, stepper)
    batches = _cycle(trainer.data_loader)
    group = stepper.accumulate_steps  # one optimizer step per learning rate: a whole accumulation group
    sweep, average, best = Sweep(), 0.0, math.inf
    progress = trainer.settings.verbosity > 0
    with tqdm(lrs, desc="Finding lr", disable=not progress, leave=False, unit="step", dynamic_ncols=True) as bar:
        for i, lr in enumerate(bar):
            trainer.schedule.set_lr(lr)  # every parameter group keeps its ratio to the first
            total = 0.0
            for micro in range(group):
                data, target = next(batches)
                data = to_device(data, trainer.device, trainer.settings.channels_last)
                target = to_device(target, trainer.device)
                loss, _, _ = stepper.step(lambda: trainer.train_step(data, target), micro, group)
                total += loss.detach().float().item()  # a host read per step: the finder is not the hot loop
            loss = total / group
            average = BETA * average + (1 - BETA) * loss
            smoothed = average / (1 - BETA ** (i + 1))
            sweep.lrs.append(lr)
            sweep.losses.append(loss)
            sweep.smoothed.append(smoothed)
            bar.set_postfix(lr=f"{lr:.1e}", loss=f"{smoothed:.4f}", refresh=False)
            if not math.isfinite(smoothed):
                sweep.stopped = "the loss became NaN or infinite"
                break
            best = min(best, smoothed)
            if smoothed > best + (DIVERGE - 1) * abs(best):  # 4x the best, for a positive loss
                sweep.stopped = f"the smoothed loss exceeded {DIVERGE:g}x its best"
                break
    return sweep


def _training_mode(trainer: Any, stepper: Any) -> None:
    """The model as the first epoch trains it: training mode, trainer.freeze applied, a schedule-free optimizer
    in its train mode."""
    trainer.model.train()
    freezing = getattr(trainer, "freezing", None)
    if freezing is not None:
        loop = Loop(trainer.state, trainer.model, trainer.start_epoch)
        freezing.on_epoch_start(loop)
        trainer.model = stepper.model = loop.model
    switch = getattr(trainer.optimizer, "train", None)
    if callable(switch):
        switch()


def _cycle(loader: Any) -> Iterator:
    """The training batches, pass after pass, in the order of epochs 1, 2, ..."""
    for epoch in itertools.count(1):
        set_epoch(loader, epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("--find-lr: the training data loader gave no batch")


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> int | None:
    """The index of the suggested learning rate: the steepest descent of the smoothed loss against log(lr) (the
    most negative gradient), leaving out the first points (SKIP_START) and the points after the lowest loss of the
    rest, as torch-lr-finder and fastai do. None when there are fewer than MIN_STEPS points or no descent to judge."""
    values = np.asarray(smoothed, dtype=float)
    start = max(1, int(len(values) * SKIP_START))
    judged = np.where(np.isfinite(values[start:]), values[start:], np.nan)
    if len(values) < MIN_STEPS or np.isnan(judged).all():
        return None
    lowest = start + int(np.nanargmin(judged))
    if lowest - start < 2:  # fewer than 3 points up to the lowest loss: no descent to judge
        return None
    gradient = np.gradient(values[start:lowest + 1], np.log(np.asarray(lrs[start:lowest + 1], dtype=float)))
    return start + int(np.argmin(gradient))


def lowest_loss(sweep: Sweep) -> int:
    """The index of the lowest finite smoothed loss."""
    values = np.asarray(sweep.smoothed, dtype=float)
    return int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))


def report(sweep: Sweep, best: int | None, options: FinderOptions) -> str:
    """What the finder prints: how the sweep ended, the suggestion (or why there is none) and the command to use it."""
    lines = []
    if sweep.stopped:
        lines.append(f"The sweep stopped at step {len(sweep.lrs)} of {options.steps} (lr {sweep.lrs[-1]:.1e}): "
                     f"{sweep.stopped}.")
    if best is None:
        if len(sweep.lrs) < MIN_STEPS:
            lines.append(f"No suggestion: {len(sweep.lrs)} steps are too few to judge; sweep from a lower learning "
                         f"rate (--lr-range MIN MAX)")
        else:
            lines.append(f"No suggestion: the smoothed loss did not fall over the sweep (it was lowest at "
                         f"{sweep.lrs[lowest_loss(sweep)]:.1e}); sweep from a lower learning rate (--lr-range MIN MAX)")
        return "\n".join(lines)
    lr = f"{sweep.lrs[best]:.1e}"
    lines.append(f"Suggested learning rate: {lr} (steepest descent of the smoothed loss; the loss was lowest at "
                 f"{sweep.lrs[lowest_loss(sweep)]:.1e})")
    lines.append(f"Train with it:\n    {training_command(options.argv, lr)}")
    return "\n".join(lines)


_FINDER_FLAGS = {"--find-lr": 0, "--lr-range": 2, "--lr-steps": 1, "--run-id": 1, "--lr": 1, "--learning_rate": 1}
_LR_OVERRIDES = ("optimizer.args.lr=", "optimizer;args;lr=")  # would win over --lr


def training_command(argv: Sequence[str], lr: str) -> str:
    """The command line the finder ran, without the finder's flags and any learning rate, with --lr lr."""
    kept, args = [], list(argv)
    while args:
        arg = args.pop(0)
        flag = arg.split("=", 1)[0]
        if flag in _FINDER_FLAGS:
            if "=" not in arg:
                del args[:_FINDER_FLAGS[flag]]
            continue
        if not arg.startswith(_LR_OVERRIDES):
            kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--lr", lr])


def write_csv(sweep: Sweep, path: Path) -> None:
    """The sweep's values, one row a step: step (from 1), lr, loss, smoothed_loss (exact: repr of the floats)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(sweep.lrs, sweep.losses, sweep.smoothed), 1):
            writer.writerow([i, *map(repr, row)])


def read_csv(path: Path) -> Sweep:
    """Mirror of write_csv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return Sweep([float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows],
                 [float(r["smoothed_loss"]) for r in rows])


def plot(sweep: Sweep, best: int | None, path: Path, title: str = "loss against learning rate") -> None:
    """A PNG of the loss (raw and smoothed) against the learning rate on a log axis, the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only the finder needs matplotlib
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(sweep.lrs, sweep.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(sweep.lrs, sweep.smoothed, color="tab:blue", linewidth=2, label=f"smoothed (EMA, beta {BETA})")
    if any(math.isfinite(v) for v in sweep.smoothed):  # the scale of the descent, not of a diverging tail
        descent = [v for v in sweep.losses[: lowest_loss(sweep) + 1] + sweep.smoothed if math.isfinite(v)]
        low, high = min(descent), max(descent[: lowest_loss(sweep) + 1])
        margin = 0.05 * (high - low) or 0.1 * abs(high) or 1.0
        ax.set_ylim(low - margin, high + margin)
    if best is not None:
        lr, loss = sweep.lrs[best], sweep.smoothed[best]
        ax.axvline(lr, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([lr], [loss], "o", color="tab:red", markersize=8, label=f"suggested lr {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    figure.savefig(path, dpi=100)
