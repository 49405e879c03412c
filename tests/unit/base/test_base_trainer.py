"""Tests for base/base_trainer.py: the checkpoint state protocol (resume is exact: straight runs and
stop-and-resume runs compared tensor by tensor), and subclassing BaseTrainer."""
from __future__ import annotations

import dataclasses
import signal

import pytest
import torch
from torch import nn

from base import BaseTrainer
from config import TrainerSettings
from conftest import read_metrics
from tiny_trainers import assert_same_state, build, make_trainer, mse, outputs_in, resumed, sigterm_at
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.errors import UserError
from utils.interrupt import StopTraining


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: starts worker processes
def test_resume_at_an_epoch_boundary_is_bit_exact(tmp_path, workers):
    straight = build(tmp_path / "straight", workers=workers)
    straight.train()
    first = build(tmp_path / "split", epochs=1, workers=workers)
    first.train()
    second = resumed(tmp_path / "split", tmp_path / "split" / "checkpoint-epoch1.pth", workers=workers)
    second.train()
    assert_same_state(straight, second)
    assert read_metrics(tmp_path / "straight", timing=False) == read_metrics(tmp_path / "split", timing=False)


# 5 batches per epoch: the first step, the last batch of an epoch (before validation), mid-epoch, the very
# last step; and iteration-based epochs of 7 batches that wrap around the data.
@pytest.mark.parametrize("stop_step, len_epoch", [(1, None), (5, None), (7, None), (15, None), (6, 7), (12, 7)])
def test_signal_mid_epoch_saves_that_step_and_resume_is_bit_exact(tmp_path, stop_step, len_epoch):
    straight = build(tmp_path / "straight", len_epoch=len_epoch)
    straight.train()
    interrupted = build(tmp_path / "split", len_epoch=len_epoch)
    sigterm_at(interrupted, stop_step)
    with pytest.raises(StopTraining) as stop:
        interrupted.train()
    assert stop.value.reason == StopTraining.SIGNAL and stop.value.exit_code == 128 + signal.SIGTERM
    assert interrupted.global_step == stop_step
    path, state = find_checkpoint(tmp_path / "split")  # the run directory's newest checkpoint
    assert path == stop.value.checkpoint and state["global_step"] == stop_step
    resumed(tmp_path / "split", path, len_epoch=len_epoch).train()
    final = build(tmp_path / "check", len_epoch=len_epoch)
    final.load_state_dict(load_checkpoint(tmp_path / "split" / "checkpoint-epoch3.pth"))
    assert_same_state(straight, final)
    assert read_metrics(tmp_path / "straight", timing=False) == read_metrics(tmp_path / "split", timing=False)


def test_a_checkpoint_loads_into_a_data_parallel_model_and_back(tmp_path):
    build(tmp_path, epochs=1).train()
    trainer = build(tmp_path / "dp")
    trainer.model = nn.DataParallel(trainer.model)  # on the CPU it simply wraps the module
    trainer.load_state_dict(load_checkpoint(tmp_path / "checkpoint-epoch1.pth"))
    trainer.settings = dataclasses.replace(trainer.settings, epochs=2)
    trainer.train()
    plain = build(tmp_path / "plain")
    plain.load_state_dict(load_checkpoint(tmp_path / "dp" / "checkpoint-epoch2.pth"))
    assert all(not k.startswith("module.") for k in plain.state_dict()["state_dict"])


def test_load_state_dict_restores_everything_state_dict_saves(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, patience=5,
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint-epoch2.pth")
    fresh = make_trainer(tmp_path / "x", epochs=4, patience=5,
                         scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    fresh.load_state_dict(state)
    assert fresh.start_epoch == 3 and fresh.global_step == trainer.global_step
    assert torch.equal(fresh.model.weight, trainer.model.weight)
    assert fresh.schedule.state_dict() == trainer.schedule.state_dict()
    assert fresh.monitor.state_dict() == trainer.monitor.state_dict()
    assert fresh.schedule.learning_rates() == trainer.schedule.learning_rates()


@pytest.mark.slow
def test_checkpoint_holds_plain_data_and_the_unwrapped_model(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.model = nn.DataParallel(trainer.model)  # on the CPU it simply calls the module
    trainer.train()
    ckpt = torch.load(tmp_path / "checkpoint-epoch1.pth", weights_only=True, map_location="cpu")
    assert set(ckpt["state_dict"]) == {"weight", "bias"}
    assert ckpt["arch"] == "Linear" and ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert {"optimizer", "lr_scheduler", "monitor_best", "monitor", "config", "rng"} <= set(ckpt)
    compiled = torch.compile(nn.Linear(3, 1))
    trainer.model = compiled
    assert set(trainer.state_dict()["state_dict"]) == {"weight", "bias"}


def test_subclassing_base_trainer_with_only_train_epoch(tmp_path):
    class Fixed(BaseTrainer):
        def _train_epoch(self, epoch):
            return {"loss": 1.0 / epoch}

    model = nn.Linear(1, 1)
    settings = TrainerSettings(epochs=3, monitor="min loss", save_period=2, tensorboard=False)
    trainer = Fixed(model, mse, {}, torch.optim.SGD(model.parameters(), lr=0.1), settings,
                    outputs=outputs_in(tmp_path, settings))
    trainer.train()
    assert [e["loss"] for e in read_metrics(tmp_path)] == [1.0, 0.5, 1.0 / 3]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch2.pth", "checkpoint-epoch3.pth",
                                                               "model_best.pth"]


def test_a_base_trainer_without_evaluate_tells_test_py_users_what_to_write():
    class Fixed(BaseTrainer):
        def _train_epoch(self, epoch):
            return {"loss": 1.0}

    model = nn.Linear(1, 1)
    trainer = Fixed(model, mse, {}, torch.optim.SGD(model.parameters(), lr=0.1), TrainerSettings(epochs=1))
    with pytest.raises(UserError, match=r"trainer\.type Fixed has no evaluate\(loader, desc\), which test\.py calls; "
                                        r"derive it from trainer\.Trainer or write one"):
        trainer.evaluate([])
