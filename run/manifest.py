"""What a training run's run.json records of each start (utils/manifest.py writes it): the command, the project's git
state, the software and devices, and a fingerprint of the data the config names."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from base import BaseTrainer
from parse_config import ConfigParser
from utils.errors import PROJECT_ROOT
from utils.manifest import RunManifest, environment, fingerprint_path, fingerprint_tensors, git_state, packages

PATH_ARGS = ("_dir", "_file")  # data_loader.args whose names end so name data on disk


def open_manifest(directory: Path, config: ConfigParser, trainer: BaseTrainer, command: Sequence[str],
                  root: Path | None = None) -> RunManifest:
    """The manifest of this start of the run in directory (its checkpoint directory), its facts gathered now;
    command: the command's words (e.g. ["train.py", "-c", "config.json"]); root: the checkout whose git state is
    recorded (default: this project's)."""
    git, patch = git_state(PROJECT_ROOT if root is None else root)
    facts = {"command": shlex.join([Path(sys.executable).name, *command]), "cwd": os.getcwd(), "pid": os.getpid(),
             "resumed_from": str(config.resume) if config.resume is not None else None,
             "git": git, **environment(), "device": str(trainer.device), "world_size": trainer.dist.world_size,
             "packages": packages(), "data": data_fingerprint(config["data_loader"]["args"], trainer.data_loader)}
    return RunManifest(directory, facts, patch)


def data_fingerprint(args: dict, loader: Any) -> dict:
    """The fingerprints of the training data: the loader's dataset when it holds its samples as tensors in memory
    ("dataset"), and each file or folder that data_loader.args names (keys ending in _dir or _file) and that exists."""
    fingerprints = {}
    dataset = getattr(loader, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and tensors and all(isinstance(t, torch.Tensor) for t in tensors):
        fingerprints["dataset"] = fingerprint_tensors(tensors)
    for key, value in args.items():
        if key.endswith(PATH_ARGS) and isinstance(value, str) and value and os.path.exists(value):
            fingerprints[f"data_loader.args.{key}"] = fingerprint_path(value)
    return fingerprints
