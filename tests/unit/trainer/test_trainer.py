"""Tests for trainer/trainer.py: the epoch loop's semantics, on tiny synthetic data with the Trainer built
directly; and the bound on host syncs."""
from __future__ import annotations

import dataclasses
import math
import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from base import BaseDataLoader
from config import TrainerSettings
from conftest import ROOT, read_metrics
from tiny_trainers import BATCH, build, make_trainer, mse, outputs_in, resumed, sigterm_at
from trainer import Trainer
from utils.checkpoint import load_checkpoint
from utils.interrupt import StopTraining


def test_len_epoch_runs_exactly_that_many_batches(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, len_epoch=7)  # 4 training batches per pass: cycles
    seen = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (seen.append(1), original(*a, **k))
    trainer.train()
    assert len(seen) == 21 and trainer.global_step == 21


def test_epoch_without_len_epoch_is_one_pass(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.train()
    assert trainer.global_step == 2 * 4  # 32 training samples in batches of 8


def test_model_best_written_on_every_improvement_and_last_epoch_always_saved(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, save_period=10)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", "model_best.pth"]
    best = load_checkpoint(tmp_path / "model_best.pth")
    assert best["epoch"] == 3  # training the linear model improves val_loss every epoch here
    assert best["monitor_best"] == pytest.approx(read_metrics(tmp_path)[-1]["val_loss"])


def test_early_stop_after_exactly_patience_epochs_without_strict_improvement(tmp_path):
    trainer = make_trainer(tmp_path, lr=0.0, epochs=20, patience=3, save_period=100)  # lr 0: val_loss constant
    trainer.train()
    assert [e["epoch"] for e in read_metrics(tmp_path)] == [1, 2, 3, 4]  # best at 1, then 3 equal epochs
    assert trainer.monitor.wait == 3
    # the early-stopped last epoch is checkpointed; model_best.pth holds epoch 1 (ties do not improve)
    assert (tmp_path / "checkpoint-epoch4.pth").is_file()
    assert load_checkpoint(tmp_path / "model_best.pth")["epoch"] == 1


def test_early_stop_zero_never_stops(tmp_path):
    trainer = make_trainer(tmp_path, lr=0.0, epochs=6, patience=0)
    trainer.train()
    assert len(read_metrics(tmp_path)) == 6


@pytest.mark.parametrize("interval, expected", [("epoch", 0.1 * 0.5**2), ("step", 0.1 * 0.5**8)])
def test_scheduler_steps_per_epoch_or_per_step(tmp_path, interval, expected):
    trainer = make_trainer(tmp_path, epochs=2, scheduler_interval=interval,
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer.train()
    assert trainer.schedule.learning_rates()["lr"] == pytest.approx(expected)
    assert read_metrics(tmp_path)[0]["lr"] == pytest.approx(0.1 if interval == "epoch" else 0.1 * 0.5**4)


def test_reduce_on_plateau_receives_the_monitored_value(tmp_path):
    received = []

    class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            received.append(metrics)
            super().step(metrics, *args, **kwargs)

    trainer = make_trainer(tmp_path, lr=0.0, epochs=3, monitor="min val_loss",
                           scheduler=lambda opt: Recording(opt, patience=0))
    trainer.train()
    assert received == [e["val_loss"] for e in read_metrics(tmp_path)]


def test_custom_train_step_is_used_for_the_loss(tmp_path):
    class Penalised(Trainer):
        def train_step(self, data, target):
            loss, output = super().train_step(data, target)
            return loss + 100.0, output  # a constant: same gradients, logged loss shifted

    plain, custom = make_trainer(tmp_path / "a", epochs=1), make_trainer(tmp_path / "b", epochs=1, cls=Penalised)
    for t, d in ((plain, "a"), (custom, "b")):
        (tmp_path / d).mkdir()
        t.train()
    a, b = read_metrics(tmp_path / "a")[0], read_metrics(tmp_path / "b")[0]
    assert b["loss"] == pytest.approx(a["loss"] + 100.0)
    assert b["val_loss"] == pytest.approx(a["val_loss"] + 100.0)  # eval_step defaults to train_step
    assert torch.equal(plain.model.weight, custom.model.weight)


def test_resume_skips_by_index_without_loading_the_skipped_batches(tmp_path):
    interrupted = build(tmp_path)
    sigterm_at(interrupted, 4)
    with pytest.raises(StopTraining):
        interrupted.train()
    trainer = resumed(tmp_path, tmp_path / "checkpoint-step4.pth")
    loaded = []
    dataset = trainer.data_loader.dataset
    original = type(dataset).__getitem__
    type(dataset).__getitem__ = lambda self, i: (loaded.append(i), original(self, i))[1]
    try:
        trainer.settings = dataclasses.replace(trainer.settings, epochs=1)
        trainer.train()
    finally:
        type(dataset).__getitem__ = original
    per_epoch = len(trainer.data_loader.sampler.indices)
    assert len(loaded) == per_epoch - 4 * 16 + len(trainer.valid_data_loader.sampler)


# ---- host syncs: a bound on the reads of device values, wherever in the project they are made ----

# Reading a tensor on the host (.item(), float(t), ...) waits for the device; the loop may do it once per
# log_step steps (the logged loss) and PER_EPOCH_READS times per epoch, never once per batch. The reads counted
# are those made from project code: any file under the repository root but tests/ (and installed packages).
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")
# C, per epoch: the epoch's training sums and its validation sums (MetricTracker.result, one read each), and the
# epoch order of the training and of the validation sampler (EpochSampler reads its index order once per pass;
# loaders served from memory slice by a tensor of indices and do not). A new once-per-epoch read raises this,
# with its reason; a per-step one must not be absorbed here.
PER_EPOCH_READS = 4
# With stateful (torchmetrics) metrics configured, one more read per phase: their computed values, all at once.
STATEFUL_READS = 2


class Indexed(Dataset):
    """x, y served one sample at a time: the loader goes through its sampler and collate, not memory slices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def host_reads(tmp_path, monkeypatch, *, epochs: int, steps: int, log_step: int, in_memory: bool,
               metrics: dict | None = None) -> list[str]:
    """The host reads project code makes while a trainer runs `epochs` epochs of `steps` training batches (one
    pass over the data each, plus a validation pass), logging every log_step steps: one 'name at file:line' each."""
    project, tests = f"{ROOT}{os.sep}", f"{ROOT / 'tests'}{os.sep}"
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if path.startswith(project) and not path.startswith(tests) and "site-packages" not in path:
                reads.append(f"{name} at {path[len(project):]}:{caller.f_lineno}")
            return original(self, *args, **kwargs)
        return wrapper

    torch.manual_seed(0)
    n_valid = 8
    x = torch.randn(steps * BATCH + n_valid, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    loader = BaseDataLoader(TensorDataset(x, y) if in_memory else Indexed(x, y), BATCH, True, n_valid, 0, seed=0)
    assert len(loader) == steps and loader.in_memory == in_memory
    model = nn.Linear(3, 1)
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = TrainerSettings(epochs=epochs, log_step=log_step, monitor="min val_loss", verbosity=0,
                               tensorboard=False)
    trainer = Trainer(model, mse, metrics or {}, torch.optim.SGD(model.parameters(), lr=0.1), settings,
                      data_loader=loader, valid_data_loader=loader.split_validation(),
                      outputs=outputs_in(tmp_path, settings))
    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, counting(name))
        trainer.train()
    assert trainer.global_step == epochs * steps
    return reads


def test_no_host_sync_per_step_in_the_training_loop(tmp_path, monkeypatch):
    """Our code reads device values once per log_step and once per epoch, never per batch."""
    epochs, steps, log_step = 2, 10, 4
    for in_memory in (True, False):
        reads = host_reads(tmp_path / f"in_memory_{in_memory}", monkeypatch, epochs=epochs, steps=steps,
                           log_step=log_step, in_memory=in_memory)
        assert len(reads) <= math.ceil(epochs * steps / log_step) + PER_EPOCH_READS * epochs, reads


def test_torchmetrics_metrics_add_one_read_per_phase_and_epoch_not_per_step(tmp_path, monkeypatch):
    from utils.registry import METRICS

    epochs, log_step = 2, 4
    metrics = {"mae": METRICS.get("MeanAbsoluteError", "metrics.0")(), "r2": METRICS.get("R2Score", "metrics.1")()}
    counts = {steps: len(host_reads(tmp_path / str(steps), monkeypatch, epochs=epochs, steps=steps, log_step=log_step,
                                    in_memory=True, metrics=metrics))
              for steps in (10, 20)}
    assert counts[10] <= math.ceil(epochs * 10 / log_step) + (PER_EPOCH_READS + STATEFUL_READS) * epochs, counts
    assert counts[20] - counts[10] <= math.ceil(epochs * 20 / log_step) - math.ceil(epochs * 10 / log_step), counts


def test_host_syncs_grow_with_the_log_steps_only_not_with_the_steps(tmp_path, monkeypatch):
    """Twice the steps per epoch with the same log_step: at most the extra log_step reads more, whatever C is."""
    epochs, log_step = 2, 4
    for in_memory in (True, False):
        counts = {steps: len(host_reads(tmp_path / f"{in_memory}_{steps}", monkeypatch, epochs=epochs, steps=steps,
                                        log_step=log_step, in_memory=in_memory))
                  for steps in (10, 20)}
        extra_log_reads = math.ceil(epochs * 20 / log_step) - math.ceil(epochs * 10 / log_step)
        assert counts[20] - counts[10] <= extra_log_reads, (in_memory, counts)
