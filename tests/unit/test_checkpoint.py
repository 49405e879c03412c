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
    (tmp_path / "model_best.pth").unlink()
    path, state = find_checkpoint(tmp_path)
    assert path.name == "checkpoint-epoch1.pth" and state["epoch"] == 1
    assert "checkpoint-epoch2.pth is truncated or corrupt" in caplog.text


def test_model_best_counts_as_a_complete_state_to_resume(tmp_path):
    build(tmp_path, epochs=2).train()
    for path in tmp_path.glob("checkpoint-*.pth"):
        path.unlink()
    (tmp_path / "latest").unlink()
    path, state = find_checkpoint(tmp_path)
    assert path.name == "model_best.pth" and state["epoch"] >= 1


def test_every_epoch_is_on_disk_until_the_next_and_save_period_decides_what_stays(tmp_path):
    trainer = build(tmp_path, epochs=5, save_period=2)
    seen = []
    save = trainer.outputs.checkpointer.save

    def recording(*args, **kwargs):
        written = save(*args, **kwargs)
        seen.append(sorted(p.name for p in tmp_path.glob("checkpoint-epoch*.pth")))
        return written
    trainer.outputs.checkpointer.save = recording
    trainer.train()
    assert seen == [["checkpoint-epoch1.pth"], ["checkpoint-epoch2.pth"],
                    ["checkpoint-epoch2.pth", "checkpoint-epoch3.pth"], ["checkpoint-epoch2.pth", "checkpoint-epoch4.pth"],
                    ["checkpoint-epoch2.pth", "checkpoint-epoch4.pth", "checkpoint-epoch5.pth"]]  # 5: the last
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch5.pth"


def test_a_resumed_run_replaces_the_epoch_file_save_period_would_not_keep(tmp_path):
    build(tmp_path, epochs=3, save_period=2, early_stop=0).train()  # keeps 2 and 3 (the last)
    trainer = build(tmp_path, epochs=5, save_period=2)
    trainer.load_state_dict(load_checkpoint(tmp_path / "checkpoint-epoch3.pth"))
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-epoch*.pth")) == [
        "checkpoint-epoch2.pth", "checkpoint-epoch4.pth", "checkpoint-epoch5.pth"]


# ---- a checkpoint is named parts: one loop each way ----

class Counter:
    """A stateful part."""

    def __init__(self, value: int = 0):
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def test_gather_and_restore_are_mirror_images_over_named_parts():
    from base.base_trainer import TrainState
    from utils.checkpoint import FORMAT, FORMAT_VERSION, TRAIN_STATE, gather, restore

    saved = {TRAIN_STATE: TrainState(3, 40, 2), "a": Counter(1), "b": Counter(2)}
    checkpoint = gather(saved, config={"name": "x"})
    assert checkpoint == {FORMAT: FORMAT_VERSION, "config": {"name": "x"}, "epoch": 3, "global_step": 40,
                          "batch_in_epoch": 2, "a": {"value": 1}, "b": {"value": 2}}  # train state at the top level
    loaded = {TRAIN_STATE: TrainState(), "a": Counter(), "b": Counter(), "new": Counter(7)}
    restore(loaded, checkpoint, skip=("b",))
    assert loaded[TRAIN_STATE] == TrainState(3, 40, 2) and loaded["a"].value == 1
    assert loaded["b"].value == 0  # skipped
    assert loaded["new"].value == 7  # a part the checkpoint does not hold keeps its own state


def test_a_trainer_checkpoint_holds_each_part_under_its_format_1_name(tmp_path):
    from utils.checkpoint import FORMAT, FORMAT_VERSION

    trainer = build(tmp_path, epochs=1)
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint-epoch1.pth")
    assert set(trainer.checkpoint_parts()) == {"train_state", "state_dict", "optimizer", "lr_scheduler", "monitor",
                                               "rng", "scaler", "epoch_tracker"}
    assert set(state) == {FORMAT, "arch", "config", "monitor_best", "epoch", "global_step", "batch_in_epoch",
                          "state_dict", "optimizer", "lr_scheduler", "monitor", "rng", "scaler", "epoch_tracker"}
    assert state[FORMAT] == FORMAT_VERSION and state["epoch_tracker"] is None and state["scaler"] is None
