"""Trainers built directly on tiny synthetic data, shared by the unit tests of the training loop.

make_trainer: linear regression on 40 samples (4 training batches of 8 per epoch, 1 validation batch).
build: a classifier with shuffling, dropout, augmentation, Adam and a per-step scheduler, seeded like train.py,
for the resume tests; resumed, assert_same_state, sigterm_at and poisoned (a NaN sample) go with it.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from base import BaseDataLoader, RunOutputs
from config import TrainerSettings
from trainer import Trainer
from utils.checkpoint import RunDirs, load_checkpoint
from utils.schedule import LRSchedule
from utils.util import seed_everything


N, BATCH = 40, 8  # 5 batches per epoch


def mse(output, target):
    return nn.functional.mse_loss(output, target)


def outputs_in(directory: Path, settings: TrainerSettings, loggers: list | None = None) -> RunOutputs:
    """Checkpoints and metrics.jsonl written straight into directory, and the loggers (TensorBoard by default, where
    settings ask for it)."""
    return RunOutputs().open(RunDirs(directory, directory), settings, *([loggers] if loggers is not None else []))


def make_trainer(tmp_path: Path, *, lr: float = 0.1, epochs: int = 3, monitor: str = "min val_loss",
                 patience: int = 0, save_period: int = 1, cls: type = Trainer, scheduler=None,
                 scheduler_interval: str = "epoch", optimizer: type = torch.optim.SGD, metrics: dict | None = None,
                 model: Callable[[], nn.Module] = lambda: nn.Linear(3, 1), **settings) -> Trainer:
    """Linear regression (by model(), 3 inputs, 1 output); settings: any other TrainerSettings field (len_epoch,
    log_step, ...)."""
    torch.manual_seed(0)
    x = torch.randn(N, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    loader = BaseDataLoader(TensorDataset(x, y), BATCH, True, 0.2, 0, seed=0)
    model = model()
    optimizer = optimizer(model.parameters(), lr=lr)
    schedule = LRSchedule(scheduler(optimizer) if scheduler else None, scheduler_interval)
    settings = TrainerSettings(**{"epochs": epochs, "monitor": monitor, "early_stop": patience,
                                  "save_period": save_period, "verbosity": 0, "tensorboard": False, **settings})
    return cls(model, mse, metrics or {}, optimizer, settings, data_loader=loader,
               valid_data_loader=loader.split_validation(), lr_scheduler=schedule, outputs=outputs_in(tmp_path, settings))


class NoisyDigits(Dataset):
    """Random data with random augmentation (noise drawn from the torch RNG, in workers too)."""

    def __init__(self, n: int = 96):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 16, generator=generator)
        self.y = torch.randint(0, 4, (n,), generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(16), self.y[i]


def build(tmp_path: Path, *, epochs: int = 3, workers: int = 0, **kwargs) -> Trainer:
    """A trainer with shuffling, dropout, augmentation, Adam and a per-step scheduler, seeded like train.py;
    kwargs: lr_scheduler (a torch scheduler instead), metrics (more, by name), or TrainerSettings fields."""
    seed_everything(7)
    loader = BaseDataLoader(NoisyDigits(), 16, True, 0.25, workers)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.9)
    accuracy = lambda output, target: (output.argmax(1) == target).float().mean()  # noqa: E731
    tmp_path.mkdir(parents=True, exist_ok=True)
    schedule = LRSchedule(kwargs.pop("lr_scheduler", scheduler), "step")
    metrics = {"accuracy": accuracy, **kwargs.pop("metrics", {})}
    settings = TrainerSettings(**{"epochs": epochs, "monitor": "min val_loss", "early_stop": 5, "verbosity": 0,
                                  "tensorboard": False, **kwargs})
    return Trainer(model, nn.functional.cross_entropy, metrics, optimizer, settings,
                   data_loader=loader, valid_data_loader=loader.split_validation(), lr_scheduler=schedule,
                   outputs=outputs_in(tmp_path, settings))


def resumed(tmp_path: Path, checkpoint: Path, **kwargs) -> Trainer:
    """A fresh trainer (as in a new process: other random state) loaded from checkpoint."""
    trainer = build(tmp_path, **kwargs)
    torch.manual_seed(12345)  # a new process would not share the old one's random state
    trainer.load_state_dict(load_checkpoint(checkpoint))
    return trainer


def assert_same_state(a: Trainer, b: Trainer) -> None:
    """Parameters, optimizer, scheduler, monitor and step: equal bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][key], sb["state_dict"][key]), key
    for i, state in sa["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][i][name]), (i, name)
    assert sa["lr_scheduler"] == sb["lr_scheduler"]
    assert sa["monitor"] == sb["monitor"] and sa["global_step"] == sb["global_step"]


def sigterm_at(trainer: Trainer, step: int, signum: int = signal.SIGTERM) -> None:
    """Send a real signal to this process while global step `step` is computed."""
    original = trainer.train_step

    def train_step(data, target):
        if trainer.model.training and trainer.global_step + 1 == step:
            os.kill(os.getpid(), signum)
        return original(data, target)
    trainer.train_step = train_step


class PoisonedDigits(NoisyDigits):
    """Sample 5 is NaN."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (x * float("nan"), y) if i == 5 else (x, y)


def poisoned(tmp_path: Path, **kwargs) -> Trainer:
    trainer = build(tmp_path, **kwargs)
    trainer.data_loader.dataset.__class__ = PoisonedDigits
    return trainer
