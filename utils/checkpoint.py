"""Checkpoint files: what goes in, how it is written and read back, and where the newest one is.

A checkpoint is a set of named parts, `{MODEL: ..., OPTIMIZER: ..., ...}` plus `format_version`: each
part is an object with state_dict()/load_state_dict(), and `gather`/`restore` are one loop over the
parts each way. It holds tensors and plain Python values only, so `torch.load(weights_only=True)`
reads it and nothing in it can run code. The model is saved unwrapped (no `module.`/`_orig_mod.`).
Files are written to a temporary name in the same directory, fsynced, then renamed into place.
"""
from __future__ import annotations

import logging
import math
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn

from utils.background import BackgroundWriter
from utils.checkpoint_format import (EMA, FORMAT, FORMAT_VERSION, MODEL, MONITOR, OPTIMIZER, RNG, SCALER,  # noqa: F401
                                     SCHEDULER, TRACKER, TRAIN_STATE, atomic_save, read_torch_file, unwrap)
from utils.errors import UserError
from utils.monitor import SAVE_TOP_K_NEEDS_MONITOR, parse_monitor
from utils.run_records import log_dir_of
from utils.sharded import CONSOLIDATED_FROM, PLAIN, consolidated, is_sharded_checkpoint, read_plain
from utils.util import write_text_atomic

CHECKPOINT_RE = re.compile(r"^checkpoint-(epoch|step)(\d+)(\.pth)?$")  # a file, or a sharded run's folder
BEST = "model_best.pth"
BEST_SHARDED = "model_best"  # a sharded run's folder (utils/sharded.py)
LATEST = "latest"  # a small text file holding the newest checkpoint's file name
_log = logging.getLogger("trainer")  # "Saved <file>", once a file is in place



class Stateful(Protocol):
    """What a checkpoint part is: torch's own protocol (modules, optimizers, schedulers, GradScaler)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def gather(parts: dict[str, Stateful], **plain: Any) -> dict:
    """A checkpoint: each part's state under its name, the plain values beside them, and the format version."""
    checkpoint: dict[str, Any] = {FORMAT: FORMAT_VERSION, **plain}
    for name, part in parts.items():
        if name == TRAIN_STATE:
            checkpoint.update(part.state_dict())
        else:
            checkpoint[name] = part.state_dict()
    return checkpoint


def restore(parts: dict[str, Stateful], checkpoint: dict, skip: Iterable[str] = ()) -> None:
    """Mirror of gather: each part (but those in skip) loads its state; a part the checkpoint does not hold
    (an older one, or a scheduler added on resume) keeps its own."""
    for name, part in parts.items():
        state = checkpoint if name == TRAIN_STATE else checkpoint.get(name)
        if name not in skip and state is not None:
            part.load_state_dict(state)


@dataclass(frozen=True)
class RunDirs:
    """Where one run writes: checkpoints and config copy, logs and event files."""
    checkpoint_dir: Path
    log_dir: Path


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA random states as plain values and tensors."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                  "gauss": np_state["gauss"]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Mirror of rng_state()."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomState:
    """The random states of Python, NumPy and torch as a checkpoint part."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


class ModelWeights:
    """A model's weights as a checkpoint part: saved unwrapped; weights that do not fit are a UserError."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return unwrap(self.model).state_dict()

    def load_state_dict(self, state: dict) -> None:
        model = unwrap(self.model)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise UserError(f"the checkpoint's weights do not fit arch {type(model).__name__}: "
                            f"{lines[1].strip() if len(lines) > 1 else e}; "
                            f"resume with the arch the checkpoint was trained with") from None


# What a command does with a checkpoint, as its messages say it: train.py resumes, test.py evaluates, ...
RESUME, EVALUATE, PREDICT, EXPORT, START = "resume from", "evaluate", "predict with", "export", "start a new run from"


def load_checkpoint(path: str | Path, use: str = RESUME, fix: str | None = None) -> dict:
    """Read a checkpoint safely (weights_only, onto the CPU); every failure is a clear UserError. use: what the command
    does with it (RESUME, EVALUATE, ...), for the messages; fix: what to do when the file is damaged."""
    path = Path(path)
    fix = fix or f"{use} an earlier checkpoint"
    if is_sharded_checkpoint(path):  # resuming reads the plain values (each rank its shards, later); the others join them
        ckpt = read_plain(path, use, fix) if use == RESUME else consolidated(path)
        needed = ("config", "epoch") if use == RESUME else ("state_dict", "config", "epoch")
    elif not path.is_file():
        raise UserError(f"checkpoint {path} not found; give a checkpoint file or a run directory to -r")
    else:
        ckpt = read_torch_file(path, "checkpoint", fix)
        needed = ("state_dict", "config", "epoch")
    missing = [k for k in needed if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a checkpoint of this template: it lacks {', '.join(missing)}")
    if ckpt.get(FORMAT, 1) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format {ckpt[FORMAT]}, newer than this template reads "
                        f"({FORMAT_VERSION}); update the template's code to the version that wrote it")
    if use == RESUME and ckpt.get(CONSOLIDATED_FROM):
        raise UserError(f"{path} holds only the weights of the sharded checkpoint {ckpt[CONSOLIDATED_FROM]} (for "
                        f"test.py, predict.py and export.py); resume from that folder: -r {path.parent}")
    return ckpt


def _mtime(path: Path) -> int:
    """When a checkpoint was written: a file's modification time, a sharded folder's plain file's."""
    return (path / PLAIN if path.is_dir() else path).stat().st_mtime_ns


def checkpoints_in(directory: Path) -> list[Path]:
    """checkpoint-epoch<N>.pth and checkpoint-step<N>.pth files (a sharded run's checkpoint-epoch<N> and
    checkpoint-step<N> folders) in directory, newest first."""
    found = [p for p in directory.glob("checkpoint-*") if CHECKPOINT_RE.search(p.name)
             and (p.is_file() or is_sharded_checkpoint(p))]
    return sorted(found, key=_mtime, reverse=True)


def find_checkpoint(path: str | Path, use: str = RESUME) -> tuple[Path, dict]:
    """Load a checkpoint file, or a run directory's newest valid state: its `latest` pointer first, then the
    checkpoints and model_best.pth newest first; a truncated or corrupt file there is reported and skipped.
    use: what the command does with it (RESUME, EVALUATE, ...), for the messages."""
    path = Path(path)
    if not path.is_dir() or is_sharded_checkpoint(path):
        return path, load_checkpoint(path, use)
    candidates = _newest_first(path)
    if not candidates:
        raise UserError(f"run directory {path} holds no checkpoint-*.pth or {BEST}; nothing to {use}")
    for candidate in candidates:
        try:
            return candidate, load_checkpoint(candidate, use)
        except UserError as e:
            logging.getLogger("train").warning("Skipping %s", e)
    raise UserError(f"run directory {path}: none of its {len(candidates)} checkpoints can be read; see the "
                    f"warnings above")


def holds_state(run_dir: Path) -> bool:
    """Whether run_dir is a run directory with a checkpoint file to resume from (--resume auto resumes it)."""
    return run_dir.is_dir() and bool(_newest_first(run_dir))


def _newest_first(run_dir: Path) -> list[Path]:
    """The checkpoint files of a run directory, newest first: the one `latest` names, then by modification time."""
    pointer = run_dir / LATEST
    named = [run_dir / pointer.read_text().strip()] if pointer.is_file() else []
    best = best_in(run_dir)
    others = checkpoints_in(run_dir) + ([best] if best is not None else [])
    others.sort(key=_mtime, reverse=True)
    return list(dict.fromkeys(p for p in named + others if p.is_file() or is_sharded_checkpoint(p)))


def best_in(run_dir: Path) -> Path | None:
    """The run directory's model_best.pth, or a sharded run's model_best folder; None when it has neither."""
    if (run_dir / BEST).is_file():
        return run_dir / BEST
    return run_dir / BEST_SHARDED if is_sharded_checkpoint(run_dir / BEST_SHARDED) else None


def checkpoint_to_use(path: str | Path, use: str, last: bool = False) -> tuple[Path, dict, str]:
    """The checkpoint test.py, predict.py and export.py use (use: EVALUATE, PREDICT or EXPORT): a file as given; in a
    run directory its model_best.pth when it has one, else (or with last: --last) its newest valid state. Returns
    (path, checkpoint, why: the words that say why this file, for the line the command prints)."""
    path = Path(path)
    if not path.is_dir() or is_sharded_checkpoint(path):
        if last:
            raise UserError(f"--last picks the newest checkpoint of a run directory, but -r {path} is a file; give "
                            f"the run directory, or leave out --last")
        checkpoint = load_checkpoint(path, use)
        return path, checkpoint, f"{_state_of(checkpoint)}: the file given"
    best = best_in(path)
    if best is not None and not last:
        checkpoint = load_checkpoint(best, use, fix=f"{use} the newest checkpoint instead with --last, or give a "
                                                    f"checkpoint file to -r")
        newest = _newest_first(path)[0]
        also = f"; --last for the newest, {newest.name}" if newest != best else ""
        return best, checkpoint, f"{_state_of(checkpoint)}: the run's best{_monitored(checkpoint)}{also}"
    chosen, checkpoint = find_checkpoint(path, use)
    if last:
        return chosen, checkpoint, f"{_state_of(checkpoint)}: the newest, as --last asks"
    monitor = (checkpoint["config"].get("trainer") or {}).get("monitor", "off")
    return chosen, checkpoint, (f"{_state_of(checkpoint)}: the newest; the run has no {BEST}"
                                f"{' (trainer.monitor was off)' if monitor == 'off' else ''}")


def _state_of(checkpoint: dict) -> str:
    """'epoch 7', or 'epoch 7 and 12 batches (step 96)' for a state in the middle of an epoch."""
    batches = checkpoint.get("batch_in_epoch", 0)
    more = f" and {batches} batches (step {checkpoint.get('global_step')})" if batches else ""
    return f"epoch {checkpoint['epoch']}{more}"


def _monitored(checkpoint: dict) -> str:
    """' by max val_accuracy (0.97)': what model_best.pth is the best by, as far as the checkpoint says."""
    state = checkpoint.get(MONITOR)
    if not isinstance(state, dict) or state.get("mode") is None:
        return ""
    best = state.get("best")
    value = f" ({best:.6g})" if isinstance(best, (int, float)) and math.isfinite(best) else ""
    return f" by {state['mode']} {state['key']}{value}"


def run_dirs_of(checkpoint: Path) -> RunDirs:
    """The run directories a checkpoint belongs to: <save>/models/<name>/<id> and <save>/log/<name>/<id> (a checkpoint
    moved out of that layout: log/ beside it)."""
    ckpt_dir = checkpoint.resolve().parent
    return RunDirs(ckpt_dir, log_dir_of(ckpt_dir))


_UNRANKED = object()  # a checkpoint that does not say what its epoch's monitored value was


def monitored_value(checkpoint: Any, key: str) -> float | None | object:
    """The value of the monitored key measured on a checkpoint's state: a finite number; None when there is none
    (the epoch was not validated, the monitor's last value is an earlier epoch's or step's, NaN); _UNRANKED when
    the checkpoint does not say (written before values were stored, or while another key was monitored)."""
    state = checkpoint.get(MONITOR) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "last" not in state or state.get("key") != key:
        return _UNRANKED
    epoch, step = state.get("last_at") or (None, None)
    earlier = (epoch is not None and epoch != checkpoint.get("epoch")
               or step is not None and step != checkpoint.get("global_step"))
    if earlier:  # the monitor's last value was measured on an earlier state: this one was not validated
        return None
    value = state["last"]
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if number else None


def _epoch_of(path: Path) -> int:
    return int(CHECKPOINT_RE.search(path.name).group(2))


class Checkpointer:
    """Decides which checkpoint files to write, writes them safely, and keeps the newest keep_last.
    Without a directory it writes nothing (dry runs, test.py, ranks other than 0).

    Every epoch's state is written, so that a crash loses at most the epoch under way. With none of save_period,
    keep_last and save_top_k given, only the newest checkpoint file stays (keep_last 1), beside model_best.pth: disk
    stays bounded. save_period decides which checkpoint-epoch<N>.pth files stay: the others are replaced by the next
    epoch's. With save_top_k, the k best epoch files by the monitored value (stored in each checkpoint; ties keep the
    older) and the newest stay instead, whatever save_period says. keep_last applies as well: a file stays only if
    every rule given keeps it. A file is deleted only once the state that replaces it is complete on disk.

    In the background (trainer.async_checkpoint) each save copies the state off the training path and returns; one
    thread writes the files, decides what stays and updates `latest` as a synchronous save does, one save at a time.
    wait() returns when the files are in place (and raises a failed write's error); close() also ends the thread.

    The store writes one state: a .pth file (FileStore), or a sharded run's folder (utils/sharded.py ShardedStore),
    which every rank writes with a Checkpointer of its own; the main rank's alone (store.main) decides what stays,
    deletes, logs and keeps `latest`."""

    def __init__(self, directory: Path | None, save_period: int | None = None, keep_last: int | None = None,
                 save_top_k: int | None = None, monitor: str = "off", background: bool = False,
                 store: Any = None):
        """monitor: trainer.monitor ('max val_accuracy', 'min val_loss' or 'off'), which save_top_k ranks by;
        background: write in a background thread; store: how a state is written (default: a .pth file)."""
        self.directory = None if directory is None else Path(directory)
        self.store = store or FileStore()
        self.manages = self.store.main  # decides what stays, deletes, logs and keeps `latest`
        self.best = self.directory / f"model_best{self.store.suffix}" if self.directory is not None else None
        if save_period is None and keep_last is None and save_top_k is None:
            keep_last = 1  # the default: the newest state to resume from (and model_best.pth), nothing more
        self.save_period = save_period or 1  # null: every epoch file is kept by the period, keep_last decides
        self.keep_last = keep_last
        self.save_top_k = save_top_k
        self.mode, self.key = parse_monitor(monitor)
        if save_top_k is not None and self.mode is None:
            raise UserError(SAVE_TOP_K_NEEDS_MONITOR)
        pointer = self.directory / LATEST if self.directory is not None else None
        self.latest: Path | None = (self.directory / pointer.read_text().strip() if pointer and pointer.is_file()
                                    else None)
        # An epoch's file that is not to be kept, deleted once the next one is in place (on resume: the newest
        # file, when save_period would not have kept it). save_top_k, when set, decides instead.
        self._replaceable = self.latest if self.latest is not None and not self._kept(self.latest.name) else None
        # save_top_k: each epoch file in the directory and its stored value (None: never among the best). On resume
        # the files already there are read back; one that cannot be read or does not say is left alone.
        self._ranked: dict[Path, float | None] = {}
        if save_top_k is not None and self.manages and self.directory is not None and self.directory.is_dir():
            for path in checkpoints_in(self.directory):
                if path.name.startswith("checkpoint-epoch"):
                    self._rank_stored(path)
        if self.manages and self.directory is not None and self.directory.is_dir():
            for tmp in self.directory.glob(".*.tmp"):  # a write that a kill cut short: never a complete state
                _remove(tmp)
        self._writer = BackgroundWriter() if background and self.directory is not None else None

    @property
    def writes(self) -> bool:
        return self.directory is not None

    def wait(self) -> None:
        """Return once every save so far is on disk (at once for synchronous saves); a background write's error is
        raised here."""
        if self._writer is not None:
            self._writer.wait()

    def close(self) -> None:
        """Wait for the saves (as wait), then end the background thread; saving after this writes synchronously."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _submit(self, write: Callable[..., None], state: dict, *args: Any) -> None:
        if self._writer is None:
            write(state, *args)
        else:
            self._writer.submit(write, state, *args)

    def _rank_stored(self, path: Path) -> None:
        """Rank an epoch file written before this process by the value it stores (mmap: not read whole)."""
        try:
            stored = path / PLAIN if path.is_dir() else path
            value = monitored_value(torch.load(stored, map_location="cpu", weights_only=True, mmap=True), self.key)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            logging.getLogger("train").warning("save_top_k leaves %s in place: it cannot be read (%s)", path,
                                               str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        if value is _UNRANKED:
            logging.getLogger("train").warning("save_top_k leaves %s in place: it stores no value of %s", path,
                                               self.key)
        else:
            self._ranked[path] = value

    def _kept(self, name: str) -> bool:
        """Whether save_period keeps this file (step checkpoints and other files are not this class's to drop); with
        save_top_k every epoch file is kept here and ranked after the next save."""
        match = CHECKPOINT_RE.search(name)
        top_k = self.save_top_k is not None
        return top_k or not (match and match.group(1) == "epoch" and int(match.group(2)) % self.save_period)

    def save(self, state: dict, epoch: int, *, is_best: bool, is_last: bool) -> None:
        """Write checkpoint-epoch<N>.pth (kept every save_period epochs and at the last, else replaced by the next
        epoch's; with save_top_k kept while among the k best or the newest) and model_best.pth on improvement;
        logs the files written that stay for now."""
        if self.directory is not None:
            self._submit(self._save_epoch, state, epoch, is_best, is_last)

    def _save_epoch(self, state: dict, epoch: int, is_best: bool, is_last: bool) -> None:
        path = self._write(state, f"checkpoint-epoch{epoch}{self.store.suffix}")
        if is_best:
            self.store.write(state, self.best)
        if not self.manages:
            return
        if self._replaceable is not None and self._replaceable != path:
            _remove(self._replaceable)  # only now that the new state is on disk
        kept = self._kept(path.name) or is_last
        self._replaceable = None if kept else path
        written = [path] if kept else []
        if is_best:
            written.append(self.best)
        if self.save_top_k is not None:  # only now that the new state (and model_best.pth) is on disk
            value = monitored_value(state, self.key)
            if value is not _UNRANKED:
                self._ranked[path] = value
            self._drop_all_but_top_k(newest=path)
        for kept_path in written:
            _log.info("Saved %s", kept_path)

    def _drop_all_but_top_k(self, newest: Path) -> None:
        """Delete the ranked epoch files but the save_top_k best and the newest (called once the newest is in
        place). Strictly better wins: among equal values the older epoch stays."""
        self._ranked = {p: v for p, v in self._ranked.items() if p.exists()}  # keep_last may have deleted some
        sign = -1 if self.mode == "max" else 1
        valued = sorted((p for p, v in self._ranked.items() if v is not None),
                        key=lambda p: (sign * self._ranked[p], _epoch_of(p)))
        keep = set(valued[:self.save_top_k]) | {newest}
        for path in [p for p in self._ranked if p not in keep]:
            _remove(path)
            del self._ranked[path]

    def save_best(self, state: dict) -> None:
        """Write model_best.pth alone: the best state found by a validation in the middle of an epoch."""
        if self.directory is not None:
            self._submit(self._save_best, state)

    def _save_best(self, state: dict) -> None:
        self.store.write(state, self.best)
        if self.manages:
            _log.info("Saved %s", self.best)

    def save_step(self, state: dict, global_step: int) -> Path | None:
        """Write checkpoint-step<N>.pth: the state after global step N, in the middle of an epoch. Returns the file
        (complete once wait() returns)."""
        if self.directory is None:
            return None
        name = f"checkpoint-step{global_step}{self.store.suffix}"
        self._submit(self._save_step, state, name)
        return self.directory / name

    def _save_step(self, state: dict, name: str) -> None:
        path = self._write(state, name)
        if self.manages:
            _log.info("Saved %s", path)

    def _write(self, state: dict, name: str) -> Path:
        path = self.directory / name
        self.store.write(state, path)
        self.latest = path
        if not self.manages:
            return path
        write_text_atomic(self.directory / LATEST, name + "\n")
        if self.keep_last:  # only now that the new file is in place
            for old in checkpoints_in(self.directory)[self.keep_last:]:
                _remove(old)
        return path


class FileStore:
    """Writes a checkpoint state as one .pth file (atomic_save); the one process that writes manages the files."""

    suffix = ".pth"
    main = True

    def write(self, state: dict, path: Path) -> None:
        atomic_save(state, path)


def _remove(path: Path) -> None:
    """Delete a checkpoint file, or a sharded checkpoint's folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def inference_weights(checkpoint: dict) -> dict:
    """The weights to evaluate, predict or start a new run with: the averaged ones when the run kept an average
    (trainer.ema), else the model's."""
    return checkpoint[EMA][MODEL] if averaged(checkpoint) else checkpoint[MODEL]


def averaged(checkpoint: dict) -> bool:
    """Whether the run kept an average of its weights (trainer.ema), which inference_weights then gives."""
    return isinstance(checkpoint.get(EMA), dict)
