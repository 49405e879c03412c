"""Small helpers: JSON files, seeding, device choice."""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUN_ID_FORMAT = "%m%d_%H%M%S"  # a run directory's default name: the start time, e.g. 1122_054040


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace path's content with text through a temporary file and a rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(content: Any, path: str | Path) -> None:
    """Write content as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(content, indent=4) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_device(n_gpu: int, force_cpu: bool = False) -> tuple[torch.device, list[int]]:
    """The main device and the GPU ids for DataParallel; warns when fewer GPUs exist than asked."""
    if force_cpu:
        if n_gpu > 0:
            logging.getLogger("train").info("-d cpu: training on the CPU (n_gpu=%d is not used).", n_gpu)
        return torch.device("cpu"), []
    available = torch.cuda.device_count()
    if n_gpu > available:
        logging.getLogger("train").warning(
            "n_gpu is %d but only %d GPU(s) are available here; training on %s.",
            n_gpu, available, f"{available} GPU(s)" if available else "the CPU")
        n_gpu = available
    device = torch.device("cuda:0" if n_gpu > 0 else "cpu")
    return device, list(range(n_gpu))
