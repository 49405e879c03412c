"""Checkpoint files: what goes in, how it is written and read back, and where the newest one is.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(weights_only=True)` reads
it and nothing in it can run code. The model is saved unwrapped (no `module.`/`_orig_mod.` prefix).
Files are written to a temporary name in the same directory, fsynced, then renamed into place.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parse_config import RunDirs
from utils.errors import UserError
from utils.util import write_text_atomic

CHECKPOINT_RE = re.compile(r"^checkpoint-(epoch|step)(\d+)\.pth$")
BEST = "model_best.pth"
LATEST = "latest"  # a small text file holding the newest checkpoint's file name


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel, DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside path, fsync, then rename over path."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; free space or fix "
                        f"permissions of {path.parent} (earlier checkpoints are untouched)") from None


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (weights_only, onto the CPU); every failure is a clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; give a checkpoint file or a run directory to -r")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {path} was refused: it holds objects other than tensors and plain "
                        f"values, which could run code when loaded ({str(e).splitlines()[0]}). Only load "
                        f"checkpoints you trust, re-saved with plain data") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({str(e).splitlines()[0]}); "
                        f"resume from an earlier checkpoint") from None
    missing = [k for k in ("state_dict", "config", "epoch") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a checkpoint of this template: it lacks {', '.join(missing)}")
    return ckpt


def checkpoints_in(directory: Path) -> list[Path]:
    """checkpoint-epoch<N>.pth and checkpoint-step<N>.pth files in directory, newest first."""
    found = [p for p in directory.glob("checkpoint-*.pth") if CHECKPOINT_RE.search(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def find_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """Load a checkpoint file, or a run directory's newest valid one: its `latest` pointer first, then
    the others newest first; a truncated or corrupt file there is reported and skipped."""
    path = Path(path)
    if not path.is_dir():
        return path, load_checkpoint(path)
    pointer = path / LATEST
    named = [path / pointer.read_text().strip()] if pointer.is_file() else []
    candidates = list(dict.fromkeys(p for p in named + checkpoints_in(path) if p.is_file()))
    if not candidates:
        raise UserError(f"run directory {path} holds no checkpoint-epoch<N>.pth; nothing to resume")
    for candidate in candidates:
        try:
            return candidate, load_checkpoint(candidate)
        except UserError as e:
            logging.getLogger("train").warning("Skipping %s", e)
    raise UserError(f"run directory {path}: none of its {len(candidates)} checkpoints can be read; see the "
                    f"warnings above")


def run_dirs_of(checkpoint: Path) -> RunDirs:
    """The run directories a checkpoint belongs to: <save>/models/<name>/<id> and <save>/log/<name>/<id>."""
    ckpt_dir = checkpoint.resolve().parent
    if len(ckpt_dir.parents) >= 3 and ckpt_dir.parents[1].name == "models":
        return RunDirs(ckpt_dir, ckpt_dir.parents[2] / "log" / ckpt_dir.parent.name / ckpt_dir.name)
    return RunDirs(ckpt_dir, ckpt_dir / "log")  # a checkpoint moved out of the layout: log beside it


class Checkpointer:
    """Decides which checkpoint files to write, writes them safely, and keeps the newest keep_last."""

    def __init__(self, directory: Path, save_period: int = 1, keep_last: int | None = None):
        self.directory = Path(directory)
        self.save_period = save_period
        self.keep_last = keep_last
        pointer = self.directory / LATEST
        self.latest: Path | None = self.directory / pointer.read_text().strip() if pointer.is_file() else None

    def save(self, state: dict, epoch: int, *, is_best: bool, is_last: bool) -> list[Path]:
        """Write checkpoint-epoch<N>.pth every save_period epochs and at the last; model_best.pth on improvement."""
        written = []
        if epoch % self.save_period == 0 or is_last:
            written.append(self._write(state, f"checkpoint-epoch{epoch}.pth"))
        if is_best:
            atomic_save(state, self.directory / BEST)
            written.append(self.directory / BEST)
        return written

    def save_step(self, state: dict, global_step: int) -> Path:
        """Write checkpoint-step<N>.pth: the state after global step N, in the middle of an epoch."""
        return self._write(state, f"checkpoint-step{global_step}.pth")

    def _write(self, state: dict, name: str) -> Path:
        path = self.directory / name
        atomic_save(state, path)
        write_text_atomic(self.directory / LATEST, name + "\n")
        self.latest = path
        if self.keep_last:  # only now that the new file is in place
            for old in checkpoints_in(self.directory)[self.keep_last:]:
                old.unlink(missing_ok=True)
        return path
