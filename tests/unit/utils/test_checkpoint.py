"""Tests for utils/checkpoint.py, through a trainer: which checkpoint files are kept, a write that fails, and a
damaged newest file; save_top_k through the Checkpointer with fake states."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_trainers import build
from config import CheckpointEvery
from utils.checkpoint import _UNRANKED, BEST, Checkpointer, find_checkpoint, load_checkpoint, monitored_value
from utils.errors import UserError
from utils.monitor import Monitor


def test_save_every_steps_and_keep_last(tmp_path):
    build(tmp_path, save_every_steps=5, keep_last=2).train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pth"))
    assert names == ["checkpoint-epoch3.pth", "checkpoint-step15.pth"]  # 5 steps per epoch: steps 5, 10, 15
    assert (tmp_path / "model_best.pth").is_file()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch3.pth"


def test_by_default_only_the_newest_checkpoint_and_model_best_stay(tmp_path):
    build(tmp_path, save_every_steps=2).train()  # save_period, keep_last and save_top_k all null
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", "model_best.pth"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch3.pth"


def test_by_default_the_previous_checkpoint_is_deleted_only_once_the_next_is_complete(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path)  # the defaults: save_period, keep_last and save_top_k null
    real_unlink, unlinked = Path.unlink, []

    def unlink(path, missing_ok=False):
        newest = tmp_path / (tmp_path / "latest").read_text().strip()
        epoch = int(newest.stem.removeprefix("checkpoint-epoch"))
        assert newest != path and torch.load(newest, weights_only=True)["epoch"] == epoch  # complete
        unlinked.append(path.name)
        real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", unlink)
    for epoch in (1, 2, 3):
        checkpointer.save({"epoch": epoch}, epoch, is_best=epoch == 1, is_last=epoch == 3)
    assert unlinked == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", BEST]


class Killed(BaseException):
    """The process dying at that moment (kill -9): nothing after it runs, not even except clauses for Exception."""


@pytest.mark.parametrize("moment", ["writing the new file", "after its rename, before latest",
                                    "before the old file's deletion"])
def test_by_default_a_kill_during_a_save_leaves_a_complete_state_to_resume(tmp_path, monkeypatch, moment):
    import utils.checkpoint as checkpoint_module
    trainer = build(tmp_path, epochs=3)
    real_save, real_pointer, real_unlink = torch.save, checkpoint_module.write_text_atomic, Path.unlink

    def save(obj, f, *args, **kwargs):
        if obj["epoch"] == 2 and not isinstance(f, (str, Path)):
            f.write(b"partial")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    def pointer(path, text):
        if text.startswith("checkpoint-epoch2"):
            raise Killed
        real_pointer(path, text)

    def unlink(path, missing_ok=False):
        if path.name == "checkpoint-epoch1.pth":
            raise Killed
        real_unlink(path, missing_ok=missing_ok)
    patch = {"writing the new file": (torch, "save", save),
             "after its rename, before latest": (checkpoint_module, "write_text_atomic", pointer),
             "before the old file's deletion": (Path, "unlink", unlink)}[moment]
    monkeypatch.setattr(*patch)
    with pytest.raises(Killed):
        trainer.train()
    monkeypatch.undo()
    path, state = find_checkpoint(tmp_path)
    assert state["epoch"] == (1 if moment != "before the old file's deletion" else 2) and path.name != BEST
    resumed = build(tmp_path, epochs=3)
    resumed.load_state_dict(state)
    resumed.train()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", BEST]


def test_keep_last_alone_keeps_the_newest_n(tmp_path):
    build(tmp_path, epochs=4, keep_last=2).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-epoch3.pth",
                                                                         "checkpoint-epoch4.pth"]


def test_an_explicit_save_period_1_keeps_every_checkpoint(tmp_path):
    build(tmp_path, save_every_steps=2, save_period=1).train()  # the original template's meaning: no keep_last
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
    build(tmp_path, epochs=2, save_period=1).train()
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
        save(*args, **kwargs)
        trainer.outputs.checkpointer.wait()  # written in the background
        seen.append(sorted(p.name for p in tmp_path.glob("checkpoint-epoch*.pth")))
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


# ---- save_top_k: the k best epoch files by the stored monitored value, and the newest ----

def top_k_state(epoch: int, value: float | None, key: str = "val_accuracy", mode: str = "max") -> dict:
    """What a trainer saves at the end of epoch, as far as save_top_k reads it; value None: not validated (the
    monitor's last value is the previous epoch's)."""
    monitor = Monitor(f"{mode} {key}")
    monitor.update({"epoch": epoch - 1 if value is None else epoch, key: 0.0 if value is None else value})
    return {"epoch": epoch, "global_step": 10 * epoch, "monitor": monitor.state_dict()}


def epoch_files(directory) -> list[int]:
    return sorted(int(p.name[len("checkpoint-epoch"):-4]) for p in directory.glob("checkpoint-epoch*.pth"))


def test_save_top_k_keeps_the_k_best_epochs_and_the_newest_ties_keep_the_older(tmp_path):
    checkpointer = Checkpointer(tmp_path, save_period=3, save_top_k=2, monitor="max val_accuracy")
    values = [0.5, 0.7, 0.7, None, 0.6, 0.9, 0.7, 0.1]
    seen = []
    for epoch, value in enumerate(values, 1):
        checkpointer.save(top_k_state(epoch, value), epoch, is_best=False, is_last=False)
        assert (tmp_path / f"checkpoint-epoch{epoch}.pth").is_file()
        assert (tmp_path / "latest").read_text().strip() == f"checkpoint-epoch{epoch}.pth"
        seen.append(epoch_files(tmp_path))
    assert seen == [[1], [1, 2], [2, 3], [2, 3, 4], [2, 3, 5], [2, 6], [2, 6, 7], [2, 6, 8]]
    # 3 ties 2 (older stays); 4 has no value: kept only while newest; 7 ties 2: kept only while newest


def test_save_top_k_min_mode_nan_and_untouched_files(tmp_path):
    (tmp_path / "checkpoint-step5.pth").write_bytes(b"step")
    checkpointer = Checkpointer(tmp_path, save_top_k=1, monitor="min val_loss")
    for epoch, value in enumerate([3.0, 1.0, float("nan"), 2.0], 1):
        checkpointer.save(top_k_state(epoch, value, "val_loss", "min"), epoch, is_best=epoch == 2, is_last=epoch == 4)
    assert epoch_files(tmp_path) == [2, 4]  # NaN is never among the best
    assert (tmp_path / "checkpoint-step5.pth").is_file() and (tmp_path / BEST).is_file()


def test_save_top_k_deletes_only_once_the_new_file_is_in_place(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path, save_top_k=1, monitor="max val_accuracy")
    checkpointer.save(top_k_state(1, 0.5), 1, is_best=True, is_last=False)
    checkpointer.save(top_k_state(2, 0.4), 2, is_best=False, is_last=False)
    assert epoch_files(tmp_path) == [1, 2]

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="cannot write checkpoint .*checkpoint-epoch3.pth"):
        checkpointer.save(top_k_state(3, 0.9), 3, is_best=True, is_last=False)
    assert epoch_files(tmp_path) == [1, 2]  # nothing deleted: epoch 2 is still the newest state on disk
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch2.pth"

    monkeypatch.setattr(torch, "save", real_save)
    real_unlink, unlinked = Path.unlink, []

    def unlink(path, missing_ok=False):
        assert torch.load(tmp_path / "checkpoint-epoch3.pth", weights_only=True)["epoch"] == 3  # complete
        assert (tmp_path / "latest").read_text().strip() == "checkpoint-epoch3.pth"
        unlinked.append(path.name)
        real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", unlink)
    checkpointer.save(top_k_state(3, 0.9), 3, is_best=False, is_last=False)
    assert sorted(unlinked) == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth"] and epoch_files(tmp_path) == [3]


def test_save_top_k_after_a_resume_ranks_the_files_there_by_their_stored_values(tmp_path, monkeypatch, caplog):
    first = Checkpointer(tmp_path, save_top_k=2, monitor="max val_accuracy")
    for epoch, value in enumerate([0.5, 0.9, 0.7, 0.6], 1):
        first.save(top_k_state(epoch, value), epoch, is_best=False, is_last=epoch == 4)
    assert epoch_files(tmp_path) == [2, 3, 4]
    (tmp_path / "checkpoint-epoch9.pth").write_bytes(b"not a checkpoint")  # unreadable: left alone
    old = top_k_state(10, 0.0)
    old["monitor"] = {k: v for k, v in old["monitor"].items() if k not in ("last", "last_at")}  # before save_top_k
    torch.save(old, tmp_path / "checkpoint-epoch10.pth")

    real_load, loads = torch.load, []

    def load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", load)
    resumed = Checkpointer(tmp_path, save_top_k=2, monitor="max val_accuracy")  # a new process
    monkeypatch.setattr(torch, "load", real_load)
    assert len(loads) == 5 and all(kw["mmap"] and kw["weights_only"] for kw in loads)
    assert "checkpoint-epoch9.pth in place: it cannot be read" in caplog.text
    assert "checkpoint-epoch10.pth in place: it stores no value of val_accuracy" in caplog.text

    resumed.save(top_k_state(5, 0.8), 5, is_best=False, is_last=False)
    assert epoch_files(tmp_path) == [2, 5, 9, 10]  # 3 (0.7) and 4 (0.6) ranked below 5 (0.8) from their files
    resumed.save(top_k_state(6, 0.1), 6, is_best=False, is_last=True)
    assert epoch_files(tmp_path) == [2, 5, 6, 9, 10]


def test_save_top_k_with_keep_last_keeps_what_both_keep(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep_last=2, save_top_k=1, monitor="max val_accuracy")
    for epoch, value in enumerate([0.9, 0.5, 0.7], 1):
        checkpointer.save(top_k_state(epoch, value), epoch, is_best=False, is_last=False)
    assert epoch_files(tmp_path) == [3]  # keep_last dropped 1 (the best), top-k then dropped 2


def test_save_top_k_without_a_monitor_is_an_error():
    with pytest.raises(UserError, match="trainer.save_top_k is set but trainer.monitor is 'off'"):
        Checkpointer(None, save_top_k=2, monitor="off")


def test_monitored_value_is_the_value_measured_on_the_checkpoint_s_state():
    assert monitored_value(top_k_state(3, 0.25), "val_accuracy") == 0.25
    assert monitored_value(top_k_state(3, None), "val_accuracy") is None  # not validated: the last value is epoch 2's
    assert monitored_value(top_k_state(3, 0.25), "val_loss") is _UNRANKED  # written while another key was monitored
    mid_epoch = top_k_state(3, 0.25)
    mid_epoch["monitor"]["last_at"] = [3, 25]  # a validation at step 25, then training went on to step 30
    assert monitored_value(mid_epoch, "val_accuracy") is None
    mid_epoch["monitor"]["last_at"] = [3, 30]
    assert monitored_value(mid_epoch, "val_accuracy") == 0.25


def test_by_default_time_based_checkpoints_keep_the_newest_state_and_delete_only_after_the_next(tmp_path,
                                                                                                 monkeypatch):
    """trainer.checkpoint_every by minutes writes step checkpoints (here after every optimizer step: the interval is
    tiny; when is not the point) that follow the default retention: each replaces the previous once complete."""
    real_unlink, unlinked = Path.unlink, []

    def unlink(path, missing_ok=False):
        newest = tmp_path / (tmp_path / "latest").read_text().strip()
        assert newest != path and "state_dict" in torch.load(newest, weights_only=True)  # complete
        unlinked.append(path.name)
        real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", unlink)
    build(tmp_path, checkpoint_every=CheckpointEvery(minutes=1e-9)).train()
    assert sum(name.startswith("checkpoint-step") for name in unlinked) >= 1
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", BEST]


def test_a_kill_before_a_time_based_checkpoint_replaces_the_previous_resumes_exactly(tmp_path, monkeypatch):
    straight = build(tmp_path / "straight")
    straight.train()
    real_unlink = Path.unlink

    def unlink(path, missing_ok=False):
        if path.name.startswith("checkpoint-step") and unlink.calls == 3:
            raise Killed
        unlink.calls += 1
        real_unlink(path, missing_ok=missing_ok)
    unlink.calls = 0
    monkeypatch.setattr(Path, "unlink", unlink)
    every = CheckpointEvery(minutes=1e-9)
    with pytest.raises(Killed):
        build(tmp_path / "timed", checkpoint_every=every).train()
    monkeypatch.undo()
    path, state = find_checkpoint(tmp_path / "timed")
    assert path.name.startswith("checkpoint-step") and state["batch_in_epoch"] > 0  # in the middle of an epoch
    resumed = build(tmp_path / "timed", checkpoint_every=every)
    resumed.load_state_dict(state)
    resumed.train()
    a, b = (torch.load(tmp_path / run / "checkpoint-epoch3.pth", weights_only=True) for run in ("straight", "timed"))
    assert all(torch.equal(value, b["state_dict"][key]) for key, value in a["state_dict"].items())
    assert all(torch.equal(value, b["optimizer"]["state"][i][name])
               for i, s in a["optimizer"]["state"].items() for name, value in s.items())
