"""What a checkpoint file is made of, below everything that decides which to write or read: its parts' names and
format version, the model unwrapped for it, and torch files written safely (temporary file, fsync, rename) and read
safely (weights_only: no code runs). utils/checkpoint.py (.pth checkpoints) and utils/sharded.py (a sharded run's
folders) both build on it."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError

# Format 1 (before format_version existed) had the same keys: it loads as it is.
FORMAT_VERSION = 2
FORMAT = "format_version"
# The parts' names in a checkpoint (format 1's keys, kept).
TRAIN_STATE = "train_state"  # its values (epoch, global_step, batch_in_epoch) sit at the top level, as DESIGN says
EMA = "ema"  # the checkpoint part: {"state_dict": the averaged weights (unwrapped names), "updates": count}
MODEL, OPTIMIZER, SCHEDULER, SCALER = "state_dict", "optimizer", "lr_scheduler", "scaler"
MONITOR, TRACKER, RNG = "monitor", "epoch_tracker", "rng"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel, DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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


def read_torch_file(path: Path, what: str, fix: str) -> Any:
    """torch.load onto the CPU with weights_only (no code runs); a refused or corrupt file is a UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))  # the object it would build
        if unsafe is None:  # not a pickle torch can read at all
            raise UserError(f"{what} {path} is not a file torch.save wrote, or it is corrupt; {fix}") from None
        raise UserError(f"{what} {path} was refused: it holds a {unsafe[1]} object, not only tensors and plain "
                        f"values, and loading it could run code. Only load files you trust, re-saved with plain "
                        f"data") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{what} {path} is truncated or corrupt ({str(e).splitlines()[0]}); {fix}") from None
