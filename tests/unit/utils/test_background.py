"""Checkpoints written in the background (trainer.async_checkpoint, utils/background.py): the state copied at the
step, one write at a time, the same files a synchronous save writes, and training that waits for its writes."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch

import utils.checkpoint as checkpoint_module
from tiny_trainers import build
from utils.checkpoint import BEST, Checkpointer, load_checkpoint
from utils.errors import UserError


def assert_equal_values(a, b, where: str = "") -> None:
    """Two loaded checkpoints hold the same values: tensors equal bit for bit (and of one dtype), the rest equal."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_values(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_values(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_the_files_written_in_the_background_are_those_a_synchronous_save_writes(tmp_path):
    for mode in ("sync", "async"):
        build(tmp_path / mode, epochs=3, save_every_steps=4, save_period=1,
              async_checkpoint=mode == "async").train()
    names = sorted(p.name for p in (tmp_path / "sync").glob("*.pth"))
    assert names == sorted(p.name for p in (tmp_path / "async").glob("*.pth"))
    assert len(names) == 3 + 3 + 1  # the epochs, steps 4, 8 and 12 of 15, model_best
    for name in names:
        assert_equal_values(*(torch.load(tmp_path / mode / name, weights_only=True) for mode in ("sync", "async")),
                            name)
    assert (tmp_path / "async" / "latest").read_text() == (tmp_path / "sync" / "latest").read_text()


@pytest.fixture
def gated_writes(monkeypatch):
    """atomic_save held at a gate until the test opens it; (gate, events: ("start"|"end", file name) in order)."""
    gate, events, real = threading.Event(), [], checkpoint_module.atomic_save

    def atomic_save(state, path):
        events.append(("start", path.name))
        assert gate.wait(timeout=60)
        real(state, path)
        events.append(("end", path.name))
    monkeypatch.setattr(checkpoint_module, "atomic_save", atomic_save)
    return gate, events


def test_a_save_copies_the_state_and_returns_before_its_file_is_written(tmp_path, gated_writes):
    gate, events = gated_writes
    checkpointer = Checkpointer(tmp_path, keep_last=2, background=True)
    weights = torch.zeros(3)
    shared = {"weight": weights, "view": weights[1:]}  # two tensors of one storage stay one storage
    checkpointer.save({"epoch": 1, "state_dict": shared}, 1, is_best=False, is_last=False)
    weights.add_(1)  # the next step changes the weights in place while the file is written
    assert not list(tmp_path.glob("*.pth")) and not (tmp_path / "latest").exists()
    gate.set()
    checkpointer.save({"epoch": 2, "state_dict": shared}, 2, is_best=False, is_last=False)
    checkpointer.close()
    first, second = (torch.load(tmp_path / f"checkpoint-epoch{e}.pth", weights_only=True) for e in (1, 2))
    assert first["state_dict"]["weight"].tolist() == [0, 0, 0] and second["state_dict"]["weight"].tolist() == [1, 1, 1]
    view = first["state_dict"]["view"]
    assert view.untyped_storage().data_ptr() == first["state_dict"]["weight"].untyped_storage().data_ptr()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch2.pth"


def test_one_save_at_a_time_the_next_waits_for_the_one_in_flight(tmp_path, gated_writes):
    gate, events = gated_writes
    checkpointer = Checkpointer(tmp_path, background=True)
    checkpointer.save({"epoch": 1}, 1, is_best=True, is_last=False)
    opener = threading.Timer(0.05, gate.set)  # the write in flight ends a moment later
    opener.start()
    path = checkpointer.save_step({"epoch": 1, "global_step": 7}, 7)
    assert ("end", BEST) in events  # the second save returned only once the first had written both its files
    checkpointer.close()
    assert events == [("start", "checkpoint-epoch1.pth"), ("end", "checkpoint-epoch1.pth"), ("start", BEST),
                      ("end", BEST), ("start", path.name), ("end", path.name)]
    assert (tmp_path / "latest").read_text().strip() == path.name and path.is_file()


def test_a_failed_background_write_is_raised_at_the_next_save_and_the_earlier_files_stay(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path, background=True)
    checkpointer.save({"epoch": 1}, 1, is_best=False, is_last=False)
    checkpointer.wait()

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    checkpointer.save({"epoch": 2}, 2, is_best=False, is_last=False)  # returns: the write fails in the background
    with pytest.raises(UserError, match="checkpoint-epoch2.pth: No space left on device"):
        checkpointer.save({"epoch": 3}, 3, is_best=False, is_last=False)
    checkpointer.close()  # the error was raised once
    assert load_checkpoint_epoch(tmp_path) == 1 and not list(tmp_path.glob(".*.tmp"))


def load_checkpoint_epoch(directory: Path) -> int:
    return torch.load(directory / (directory / "latest").read_text().strip(), weights_only=True)["epoch"]


def test_training_that_fails_waits_for_the_write_in_flight(tmp_path, monkeypatch, caplog):
    """An error in epoch 2: epoch 1's file, written slowly in the background, is complete when train() raises."""
    real = checkpoint_module.atomic_save

    def slow(state, path):
        time.sleep(0.3)  # still writing when the error comes
        real(state, path)
    monkeypatch.setattr(checkpoint_module, "atomic_save", slow)
    trainer = build(tmp_path, epochs=3)
    original = trainer.train_step

    def train_step(data, target):
        if trainer.global_step == 7:  # epoch 2 (5 steps an epoch)
            raise RuntimeError("a bug in the model")
        return original(data, target)
    trainer.train_step = train_step
    with pytest.raises(RuntimeError, match="a bug in the model"):
        trainer.train()
    assert load_checkpoint_epoch(tmp_path) == 1 and (tmp_path / BEST).is_file()


def test_a_failed_write_while_training_fails_of_itself_is_logged_beside_the_error(tmp_path, monkeypatch, caplog):
    def full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    trainer = build(tmp_path, epochs=3)
    original = trainer.train_step

    def train_step(data, target):
        if trainer.global_step == 7:
            raise RuntimeError("a bug in the model")
        return original(data, target)
    trainer.train_step = train_step
    with caplog.at_level(logging.ERROR, logger="trainer"), pytest.raises(RuntimeError, match="a bug in the model"):
        trainer.train()
    assert "The last checkpoint was not written either: cannot write checkpoint" in caplog.text


def test_a_stop_by_signal_returns_once_its_checkpoint_is_on_disk(tmp_path, monkeypatch):
    from tiny_trainers import sigterm_at
    from utils.interrupt import StopTraining

    real = checkpoint_module.atomic_save

    def slow(state, path):
        time.sleep(0.2)
        real(state, path)
    monkeypatch.setattr(checkpoint_module, "atomic_save", slow)
    trainer = build(tmp_path, epochs=3)
    sigterm_at(trainer, 8)
    with pytest.raises(StopTraining) as stop:
        trainer.train()
    assert stop.value.checkpoint == tmp_path / "checkpoint-step8.pth"
    assert load_checkpoint(stop.value.checkpoint)["global_step"] == 8


def test_a_write_a_kill_cut_short_leaves_a_temporary_file_that_the_next_start_removes(tmp_path):
    (tmp_path / ".checkpoint-epoch3.pth.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".model_best.pth.tmp").write_bytes(b"half")
    Checkpointer(tmp_path, background=True).close()
    assert list(tmp_path.iterdir()) == []
