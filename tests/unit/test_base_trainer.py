"""Resume is exact: straight runs and stop-and-resume runs compared tensor by tensor."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from base import BaseDataLoader
from conftest import read_metrics
from logger import MetricsFile
from trainer import Trainer
from utils.checkpoint import Checkpointer, find_checkpoint, load_checkpoint
from utils.errors import UserError
from utils.interrupt import TrainingInterrupted
from utils.monitor import Monitor
from utils.util import seed_everything


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


def build(tmp_path: Path, *, epochs: int = 3, workers: int = 0, len_epoch: int | None = None, **kwargs) -> Trainer:
    """A trainer with shuffling, dropout, augmentation, Adam and a per-step scheduler, seeded like train.py."""
    seed_everything(7)
    loader = BaseDataLoader(NoisyDigits(), 16, True, 0.25, workers)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.9)
    accuracy = lambda output, target: (output.argmax(1) == target).float().mean()  # noqa: E731
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Trainer(model, nn.functional.cross_entropy, {"accuracy": accuracy}, optimizer,
                   device=torch.device("cpu"), epochs=epochs, data_loader=loader,
                   valid_data_loader=loader.split_validation(), lr_scheduler=lr_scheduler_or(scheduler, kwargs),
                   scheduler_interval="step", monitor=Monitor("min val_loss", 5), progress=False,
                   checkpointer=Checkpointer(tmp_path), metrics_file=MetricsFile(tmp_path / "metrics.jsonl"),
                   len_epoch=len_epoch, **kwargs)


def lr_scheduler_or(scheduler, kwargs):
    return kwargs.pop("lr_scheduler", scheduler)


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


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_an_epoch_boundary_is_bit_exact(tmp_path, workers):
    straight = build(tmp_path / "straight", workers=workers)
    straight.train()
    first = build(tmp_path / "split", epochs=1, workers=workers)
    first.train()
    second = resumed(tmp_path / "split", tmp_path / "split" / "checkpoint-epoch1.pth", workers=workers)
    second.train()
    assert_same_state(straight, second)
    assert read_metrics(tmp_path / "straight", timing=False) == read_metrics(tmp_path / "split", timing=False)


def sigterm_at(trainer: Trainer, step: int, signum: int = signal.SIGTERM) -> None:
    """Send a real signal to this process while global step `step` is computed."""
    original = trainer.train_step

    def train_step(data, target):
        if trainer.model.training and trainer.global_step + 1 == step:
            os.kill(os.getpid(), signum)
        return original(data, target)
    trainer.train_step = train_step


# 5 batches per epoch: the first step, the last batch of an epoch (before validation), mid-epoch, the very
# last step; and iteration-based epochs of 7 batches that wrap around the data.
@pytest.mark.parametrize("stop_step, len_epoch", [(1, None), (5, None), (7, None), (15, None), (6, 7), (12, 7)])
def test_signal_mid_epoch_saves_that_step_and_resume_is_bit_exact(tmp_path, stop_step, len_epoch):
    straight = build(tmp_path / "straight", len_epoch=len_epoch)
    straight.train()
    interrupted = build(tmp_path / "split", len_epoch=len_epoch)
    sigterm_at(interrupted, stop_step)
    with pytest.raises(TrainingInterrupted) as stop:
        interrupted.train()
    assert stop.value.exit_code == 128 + signal.SIGTERM and interrupted.global_step == stop_step
    path, state = find_checkpoint(tmp_path / "split")  # the run directory's newest checkpoint
    assert path == stop.value.checkpoint and state["global_step"] == stop_step
    resumed(tmp_path / "split", path, len_epoch=len_epoch).train()
    final = build(tmp_path / "check", len_epoch=len_epoch)
    final.load_state_dict(load_checkpoint(tmp_path / "split" / "checkpoint-epoch3.pth"))
    assert_same_state(straight, final)
    assert read_metrics(tmp_path / "straight", timing=False) == read_metrics(tmp_path / "split", timing=False)


def test_sigint_is_handled_like_sigterm(tmp_path):
    trainer = build(tmp_path)
    sigterm_at(trainer, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.exit_code == 130 and stop.value.checkpoint.name == "checkpoint-step3.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored afterwards


def test_resume_skips_by_index_without_loading_the_skipped_batches(tmp_path):
    interrupted = build(tmp_path)
    sigterm_at(interrupted, 4)
    with pytest.raises(TrainingInterrupted):
        interrupted.train()
    trainer = resumed(tmp_path, tmp_path / "checkpoint-step4.pth")
    loaded = []
    dataset = trainer.data_loader.dataset
    original = type(dataset).__getitem__
    type(dataset).__getitem__ = lambda self, i: (loaded.append(i), original(self, i))[1]
    try:
        trainer.epochs = 1
        trainer.train()
    finally:
        type(dataset).__getitem__ = original
    per_epoch = len(trainer.data_loader.sampler.indices)
    assert len(loaded) == per_epoch - 4 * 16 + len(trainer.valid_data_loader.sampler)


def test_save_every_steps_and_keep_last(tmp_path):
    trainer = build(tmp_path, save_every_steps=5)
    trainer.checkpointer.keep_last = 2
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pth"))
    assert names == ["checkpoint-epoch3.pth", "checkpoint-step15.pth"]  # 5 steps per epoch: steps 5, 10, 15
    assert (tmp_path / "model_best.pth").is_file()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch3.pth"


def test_keep_last_default_keeps_every_checkpoint(tmp_path):
    build(tmp_path, save_every_steps=2).train()
    assert len(list(tmp_path.glob("checkpoint-*.pth"))) == 3 + 7  # 3 epochs, steps 2, 4, ..., 14


class PoisonedDigits(NoisyDigits):
    """Sample 5 is NaN."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (x * float("nan"), y) if i == 5 else (x, y)


def poisoned(tmp_path: Path, **kwargs) -> Trainer:
    trainer = build(tmp_path, **kwargs)
    trainer.data_loader.dataset.__class__ = PoisonedDigits
    return trainer


def test_nonfinite_loss_stops_naming_the_step_and_saves_nothing_after_it(tmp_path):
    trainer = poisoned(tmp_path, save_every_steps=100)
    with pytest.raises(UserError, match=r"NaN or infinite at epoch 1, step \d+ .*newest valid checkpoint is none"):
        trainer.train()
    assert not list(tmp_path.glob("*.pth"))


def test_nonfinite_loss_found_at_a_log_step_names_the_first_bad_step(tmp_path):
    trainer = poisoned(tmp_path, log_step=1)
    positions = trainer.data_loader.sampler
    positions.set_epoch(1)
    bad_step = list(positions).index(5) // 16 + 1
    with pytest.raises(UserError, match=rf"epoch 1, step {bad_step} "):
        trainer.train()


def test_nonfinite_loss_after_a_checkpoint_leaves_that_checkpoint_newest(tmp_path):
    build(tmp_path, epochs=1).train()  # epoch 1 is clean and saved
    trainer = resumed(tmp_path, tmp_path / "checkpoint-epoch1.pth", epochs=2)
    trainer.data_loader.dataset.__class__ = PoisonedDigits
    with pytest.raises(UserError, match=r"epoch 2, .*newest valid checkpoint is .*checkpoint-epoch1.pth"):
        trainer.train()
    assert find_checkpoint(tmp_path)[0].name == "checkpoint-epoch1.pth"


def test_nonfinite_loss_skip_mode_skips_the_batch(tmp_path, caplog):
    trainer = poisoned(tmp_path, nonfinite_loss="skip")
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(row["loss"] == row["loss"] for row in read_metrics(tmp_path, timing=False))  # no NaN logged
    assert "skipped 1 batch(es) with a non-finite loss" in caplog.text


def test_disk_full_is_a_clear_error_and_earlier_checkpoints_stay(tmp_path, monkeypatch):
    trainer = build(tmp_path)
    real_save = torch.save
    saves = []

    def failing_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 2:  # epoch 1: checkpoint and model_best; then the disk is full
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*checkpoint-epoch2.pth: No space left on device"):
        trainer.train()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint-epoch1.pth")["epoch"] == 1
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch1.pth"
    assert not (tmp_path / "checkpoint-epoch2.pth").exists() and not list(tmp_path.glob(".*.tmp"))


def test_truncated_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog):
    build(tmp_path, epochs=2).train()
    newest = tmp_path / "checkpoint-epoch2.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    path, state = find_checkpoint(tmp_path)
    assert path.name == "checkpoint-epoch1.pth" and state["epoch"] == 1
    assert "checkpoint-epoch2.pth is truncated or corrupt" in caplog.text


def test_a_checkpoint_loads_into_a_data_parallel_model_and_back(tmp_path):
    build(tmp_path, epochs=1).train()
    trainer = build(tmp_path / "dp")
    trainer.model = nn.DataParallel(trainer.model)  # on the CPU it simply wraps the module
    trainer.load_state_dict(load_checkpoint(tmp_path / "checkpoint-epoch1.pth"))
    trainer.epochs = 2
    trainer.train()
    plain = build(tmp_path / "plain")
    plain.load_state_dict(load_checkpoint(tmp_path / "dp" / "checkpoint-epoch2.pth"))
    assert all(not k.startswith("module.") for k in plain.state_dict()["state_dict"])
