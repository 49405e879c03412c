"""Tests for trainer/step.py (the Stepper): gradient accumulation, clipping, optimizers that re-evaluate the loss,
and skipping a non-finite loss."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from base import BaseDataLoader
from config import TrainerSettings
from conftest import read_metrics
from tiny_trainers import make_trainer, outputs_in, poisoned
from trainer import Trainer
from utils.errors import UserError


def regression_trainer(tmp_path: Path, batch_size: int, **kwargs) -> Trainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1)
    loader = BaseDataLoader(TensorDataset(x, y), batch_size, False, 0, 0, seed=0)
    model = nn.Linear(5, 1)
    settings = TrainerSettings(**{"epochs": 2, "verbosity": 0, "tensorboard": False, **kwargs})
    return Trainer(model, nn.functional.mse_loss, {}, torch.optim.SGD(model.parameters(), lr=0.05), settings,
                   data_loader=loader, outputs=outputs_in(tmp_path, settings))


def test_accumulating_k_batches_equals_one_batch_k_times_larger(tmp_path):
    big = regression_trainer(tmp_path / "a", 32)
    small = regression_trainer(tmp_path / "b", 8, accumulate_steps=4)
    big.train(), small.train()
    assert torch.allclose(big.model.weight, small.model.weight, atol=1e-6)
    assert small.global_step == 16 and big.global_step == 4


def test_clip_grad_norm_bounds_each_update(tmp_path):
    trainer = regression_trainer(tmp_path, 64, epochs=1, clip_grad_norm=0.01)
    before = trainer.model.weight.detach().clone()
    trainer.train()
    step = torch.cat([trainer.model.weight.detach() - before, trainer.model.bias.detach().view(1, 1)], 1)
    assert step[:, :-1].norm() <= 0.05 * 0.01 + 1e-7  # lr * max_norm


def test_lbfgs_with_accumulation_is_refused_clearly(tmp_path):
    with pytest.raises(UserError, match="LBFGS re-evaluates the loss through a closure"):
        model = nn.Linear(5, 1)
        loader = BaseDataLoader(TensorDataset(torch.randn(8, 5), torch.randn(8, 1)), 4, False, 0, 0)
        Trainer(model, nn.functional.mse_loss, {}, torch.optim.LBFGS(model.parameters()),
                TrainerSettings(epochs=1, accumulate_steps=2), data_loader=loader)


@pytest.mark.parametrize("name", ["LBFGS", "SGD", "Adam"])
def test_optimizers_that_reevaluate_the_loss_train_too(tmp_path, name):
    trainer = make_trainer(tmp_path, epochs=2, optimizer=getattr(torch.optim, name))
    calls = []
    step = trainer.train_step
    trainer.train_step = lambda data, target: (calls.append(trainer.model.training), step(data, target))[1]
    trainer.train()
    losses = [e["val_loss"] for e in read_metrics(tmp_path)]
    assert losses[1] < losses[0]
    training_calls = calls.count(True)
    assert training_calls > 8 if name == "LBFGS" else training_calls == 8  # LBFGS re-evaluates; others once


def test_nonfinite_loss_skip_mode_skips_the_batch(tmp_path, caplog):
    trainer = poisoned(tmp_path, nonfinite_loss="skip")
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(row["loss"] == row["loss"] for row in read_metrics(tmp_path, timing=False))  # no NaN logged
    assert "skipped 1 batch(es) with a non-finite loss" in caplog.text
