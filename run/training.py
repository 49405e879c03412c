"""A training run's life around the trainer: its config (with -r, merged onto the checkpoint's), its directory,
resuming from a checkpoint, and the fast dev run."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import shutil
import sys
from typing import Iterator, Sequence

from base import BaseTrainer
from logger import get_logger, setup_logging
from logger.reporter import compact
from parse_config import SCHEMA, ConfigParser, TrainerSettings, differing_keys
from run.build import build_trainer
from run.data import test_split_problems
from run.devices import choose_device
from run.manifest import open_manifest
from trainer.checks import check_first_batch
from utils import distributed
from utils.checkpoint import MONITOR, RunDirs, find_checkpoint, holds_state
from utils.distributed import SINGLE, Dist
from utils.errors import UserError
from utils.fsdp import full_weights
from utils.monitor import Monitor
from utils.run_lock import RunLock
from utils.sharded import ShardedStore
from utils.util import seed_everything

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainerSettings)}
DIST_DEFAULTS = (_DEFAULTS["dist_backend"], _DEFAULTS["dist_timeout"])  # the process group's start, before -r
# What --fast-dev-run sets: one epoch of one training batch and one validation batch, nothing else on.
FAST_DEV_RUN = {"epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "len_epoch": None, "overfit_batches": 0,
                "val_every_steps": None, "val_every_epochs": 1, "save_every_steps": None, "checkpoint_every": None,
                "max_time": None}


AUTO = "auto"  # -r auto (--resume auto): resume the run --run-id names if it has a checkpoint, else start it


def load_config(args: argparse.Namespace, options: Sequence = (),
                dist: Dist = SINGLE) -> tuple[ConfigParser, dict | None, Dist]:
    """The validated config, and with -r the checkpoint it resumes (loaded here and passed on as data: the
    config object holds no tensors; config.resume is the checkpoint's path). Under torchrun the checkpoint is
    read by the lowest rank whose machine holds it and sent to the others; that rank writes the run (dist.main).
    options: the command's declared options (train.py's OPTIONS)."""
    if args.resume == AUTO:
        return _resume_or_start(args, options, dist)
    path, checkpoint = None, None
    if args.resume:
        dist, (path, checkpoint) = distributed.read_on_one_rank(args.resume, find_checkpoint, dist)
    config = ConfigParser.from_args(args, options, resume=path,
                                    checkpoint_config=checkpoint["config"] if checkpoint else None)
    return config, checkpoint, dist


def _resume_or_start(args: argparse.Namespace, options: Sequence,
                     dist: Dist) -> tuple[ConfigParser, dict | None, Dist]:
    """--resume auto: the run directory --run-id names under the config's trainer.save_dir. When it holds a
    checkpoint (on any machine of a torchrun job: the lowest rank whose machine does reads it), as -r DIR with the
    -c file merged onto the checkpoint's config; else a fresh start in that directory (which may exist: a run stopped
    before its first checkpoint starts again there)."""
    missing = [flag for flag, value in (("-c CONFIG", args.config), ("--run-id NAME", args.run_id)) if not value]
    if missing:
        raise UserError(f"--resume auto needs {' and '.join(missing)}: it resumes the run NAME of the config, or "
                        f"starts it; e.g. python train.py -c config.json --run-id NAME --resume auto")
    fresh = ConfigParser.from_args(args, options, reuse_run_dir=True)
    run_dir = fresh.named_run_dirs().checkpoint_dir
    dist, found = distributed.read_on_one_rank(run_dir, find_checkpoint, dist, holds=holds_state, required=False)
    if found is None:
        return fresh, None, dist
    path, checkpoint = found
    return ConfigParser.from_args(args, options, resume=path, checkpoint_config=checkpoint["config"]), checkpoint, dist


def finished(checkpoint: dict, config: ConfigParser) -> str | None:
    """With -r: the line to print instead of training when the run has nothing left to do (it trained its
    trainer.epochs, or early stopping ended it), saying how to go on; None when training goes on. A trainer.epochs
    below the epochs already trained is a UserError."""
    run_dir, epochs, done = config.resume.parent, config["trainer"]["epochs"], checkpoint["epoch"]
    mid_epoch = checkpoint.get("batch_in_epoch", 0) > 0
    if done > epochs or done == epochs and mid_epoch:
        raise UserError(f"trainer.epochs={epochs}, but run {run_dir} has already trained {done} epochs; give "
                        f"trainer.epochs above {done} to train longer")
    command = f"python train.py -r {run_dir}"
    if done == epochs:
        return (f"Run {run_dir} has finished its {epochs} epochs; nothing to train. To train longer: {command} "
                f"trainer.epochs={2 * epochs}")
    monitor = Monitor(config["trainer"]["monitor"], config["trainer"]["early_stop"])
    monitor.load_state_dict(checkpoint.get(MONITOR) or {})
    if monitor.should_stop:
        counted = "validation" if config["trainer"]["val_every_steps"] else "epoch"
        return (f"Run {run_dir} stopped early at epoch {done}: {monitor.key} did not improve for {monitor.wait} "
                f"{counted}{'s' if monitor.wait != 1 else ''} (trainer.early_stop={monitor.patience}); nothing to "
                f"train. To train longer: {command} trainer.early_stop=0")
    return None


def assemble(config: ConfigParser, device_flag: str | None = None, dist: Dist = SINGLE) -> tuple[BaseTrainer, Dist]:
    """The trainer of a training run and this rank: the process group restarted if the config names another backend
    or timeout, every random generator seeded, the parts built in dependency order on the device chosen (device_flag:
    -d), and the first batch checked against the model (one clear error before anything is written); the test split's
    paths are checked first."""
    problems = test_split_problems(config["data_loader"]["args"])
    if problems:  # found at the start, not by test.py after the run
        raise UserError(problems)
    settings = config.settings()
    dist = distributed.init(settings.dist_backend, settings.dist_timeout, main=dist.main)
    seed_everything(config["seed"])
    trainer = build_trainer(config, *choose_device(config["n_gpu"], device_flag, dist), dist)
    check_first_batch(trainer)
    return trainer, dist


@contextlib.contextmanager
def open_run(config: ConfigParser, trainer: BaseTrainer, dist: Dist,
             command: Sequence[str] | None = None) -> Iterator[RunDirs]:
    """While open, the run directory (the main rank creates it, or reuses it on resume): logs, TensorBoard,
    metrics.jsonl, checkpoints and run.json go there, written by that rank only, which holds the directory's lock (a
    second process training the same run waits for the first to end, utils/run_lock.py). command: the command's words
    for run.json (default: sys.argv)."""
    lock = RunLock()  # taken before anything in the directory is read or written
    made = config.make_run_dirs(lambda dirs: lock.acquire(dirs.checkpoint_dir)) if dist.is_main else None
    run = distributed.broadcast(made, src=dist.main)  # chosen once
    try:
        yield _opened(run, config, trainer, dist, sys.argv if command is None else command)
    finally:
        lock.release()


def _opened(run: RunDirs, config: ConfigParser, trainer: BaseTrainer, dist: Dist, command: Sequence[str]) -> RunDirs:
    verbosity = config["trainer"]["verbosity"]
    setup_logging(run.log_dir if dist.is_main else None, verbosity=verbosity if dist.is_main else 0)
    get_logger("trainer", verbosity)
    store = sharded_store(run, trainer.settings, dist)
    if dist.is_main:  # run.json's start is written as training starts (after a resume has loaded its checkpoint)
        trainer.outputs.open(run, trainer.settings, config["loggers"],
                             open_manifest(run.checkpoint_dir, config, trainer, command), store)
        if config.resume is None:  # a start in a directory an earlier start left without a checkpoint (--resume auto)
            trainer.outputs.reporter.resume(0, None)  # forgets the rows it wrote: they are trained again
    elif store is not None:  # the other ranks of a sharded run write their shards of each checkpoint
        trainer.outputs.take_part(run, trainer.settings, store)
    get_logger("train", verbosity).info("Run directory: %s (logs: %s)", run.checkpoint_dir, run.log_dir)
    return run


def sharded_store(run: RunDirs, settings: TrainerSettings, dist: Dist) -> ShardedStore | None:
    """How a run with trainer.strategy fsdp2 writes its checkpoints (every rank its shards into one folder); None
    for any other run. The run directory must be one that every rank sees (a shared disk): a UserError otherwise."""
    if settings.fsdp2 is None:
        return None
    if dist.enabled:
        blind = [rank for rank, sees in enumerate(distributed.all_gather(run.checkpoint_dir.is_dir())) if not sees]
        if blind:
            raise UserError(f"trainer.strategy fsdp2: every rank writes its shards into {run.checkpoint_dir}, but "
                            f"rank(s) {', '.join(map(str, blind))} do not see it; put trainer.save_dir on a disk "
                            f"that every machine shares")
    return ShardedStore(dist.rank, dist.world_size, dist.is_main)


@contextlib.contextmanager
def removed_if_it_fails_at_start(run: RunDirs, trainer: BaseTrainer, new: bool = True) -> Iterator[None]:
    """Around a new run's training: when it fails (an error, not a planned stop, which saves) having completed at
    most one step and written no checkpoint, its run directory holds only what the start wrote, and is removed; a
    run that fails later, or a resumed one, keeps every file."""
    try:
        yield
    except BaseException:
        if new and trainer.dist.is_main and trainer.global_step <= 1 and not any(run.checkpoint_dir.rglob("*.pth")):
            setup_logging(None)  # info.log closed before its folder goes
            for path in (run.checkpoint_dir, run.log_dir):
                shutil.rmtree(path, ignore_errors=True)
            get_logger("train").warning("The run failed at its start; its run directory %s was removed.",
                                        run.checkpoint_dir)
        raise


def resume(trainer: BaseTrainer, checkpoint: dict, config: ConfigParser) -> None:
    """Load the checkpoint into the trainer, saying what differs from the config it was trained with."""
    logger = get_logger("train")
    old = checkpoint["config"]
    changed = differing_keys(old, config.config, ("arch", "data_loader", "seed"))
    if changed:
        logger.warning("Resuming with settings that differ from the checkpoint's: %s", ", ".join(changed))
    # a changed grouping (or a group's options, which the saved state would override) starts the optimizer afresh
    regrouped = [key for key in ("type", "param_groups", "no_decay_bias_norm")
                 if old["optimizer"].get(key, SCHEMA["optimizer"][key][1]) != config["optimizer"][key]]
    same_optimizer = not regrouped
    if not same_optimizer:
        logger.warning("%s %s from the checkpoint's%s; its optimizer state is not loaded.",
                       ", ".join(f"optimizer.{key}" for key in regrouped), "differ" if regrouped[1:] else "differs",
                       f" ({old['optimizer']['type']})" if "type" in regrouped else "")
    trainer.load_state_dict(checkpoint, load_optimizer=same_optimizer)
    new_lr, old_lr = config["optimizer"]["args"].get("lr"), old["optimizer"]["args"].get("lr")
    if same_optimizer and new_lr is not None and new_lr != old_lr:
        trainer.schedule.set_lr(new_lr)
        logger.info("Learning rate changed from %s to %s for the resumed run.", old_lr, new_lr)
    read_by = f" (read by rank {trainer.dist.main}, sent to the others)" if trainer.dist.enabled else ""
    logger.info("Resumed from %s%s: continuing at epoch %d of %d.", config.resume, read_by, trainer.start_epoch,
                trainer.epochs)


def fast_dev_run(trainer: BaseTrainer, config: ConfigParser) -> None:
    """Train and validate one batch each (the config was given FAST_DEV_RUN), then evaluate one batch of the test
    split as test.py would, with nothing written; the first error stops it."""
    logger = get_logger("train")
    trainer.train()  # its outputs were never opened: no run directory, checkpoint or event file
    try:
        evaluator = build_trainer(config, trainer.device, training=False)
    except UserError as e:  # a config without a test split trains fine; test.py would stop here
        logger.warning("Fast dev run: test.py could not build the test split: %s", e)
        evaluator = None
    if evaluator is not None:
        evaluator.model.load_state_dict(full_weights(trainer.model))  # whole tensors of a sharded model
        results = evaluator.evaluate(itertools.islice(evaluator.data_loader, 1), desc="test")
        logger.info("Fast dev run, one test batch: %s", ", ".join(f"{k} {compact(v)}" for k, v in results.items()))
    logger.info("Fast dev run passed: one batch each of training, validation%s ran; nothing was written.",
                " and the test split" if evaluator is not None else "")
