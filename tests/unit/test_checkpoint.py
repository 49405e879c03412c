"""Tests for utils/checkpoint.py, through a trainer: which checkpoint files are kept, a write that fails, and a
damaged newest file."""
from __future__ import annotations

import pytest
import torch

from tiny_trainers import build
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.errors import UserError


def test_save_every_steps_and_keep_last(tmp_path):
    build(tmp_path, save_every_steps=5, keep_last=2).train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pth"))
    assert names == ["checkpoint-epoch3.pth", "checkpoint-step15.pth"]  # 5 steps per epoch: steps 5, 10, 15
    assert (tmp_path / "model_best.pth").is_file()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch3.pth"


def test_keep_last_default_keeps_every_checkpoint(tmp_path):
    build(tmp_path, save_every_steps=2).train()
    assert len(list(tmp_path.glob("checkpoint-*.pth"))) == 3 + 7  # 3 epochs, steps 2, 4, ..., 14


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
