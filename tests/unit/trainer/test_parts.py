"""Tests for trainer/parts.py and utils/part.py: the loop's parts share one interface; a feature that is off is a
do-nothing Part; a new part is one entry in Trainer.parts (its hooks called in order with the Loop, its state in the
checkpoint under its checkpoint_name)."""
from __future__ import annotations

import torch
from torch import nn

from config import EMASettings
from tiny_trainers import build, make_trainer
from trainer.ema import WeightAverage
from trainer.parts import Histograms, ImageLog, StepCheckpoints
from utils.checkpoint import load_checkpoint
from utils.distributed import SINGLE
from utils.part import Part


CPU = torch.device("cpu")


def test_a_feature_that_is_off_is_a_part_that_does_nothing(tmp_path):
    trainer = make_trainer(tmp_path)
    off = [WeightAverage.from_setting(nn.Linear(1, 1), None), ImageLog.from_setting(False, trainer.outputs),
           Histograms.from_setting(False, trainer.outputs),
           StepCheckpoints.from_setting((None, None), lambda: None, SINGLE, CPU)]
    assert all(type(part) is Part for part in off)
    assert sum(type(part) is Part for part in trainer.parts) == 5 and None not in trainer.parts  # TRAIN_FAULT's too
    on = [WeightAverage.from_setting(nn.Linear(1, 1), EMASettings(decay=0.9)), ImageLog.from_setting(True, trainer.outputs),
          Histograms.from_setting(True, trainer.outputs),
          StepCheckpoints.from_setting((3, None), lambda: None, SINGLE, CPU)]
    assert [type(part) for part in on] == [WeightAverage, ImageLog, Histograms, StepCheckpoints]
    assert "ema" not in trainer.checkpoint_parts()


class Counting(Part):
    """A new feature: counts the optimizer steps, a checkpoint part of its own."""

    checkpoint_name = "counting"

    def __init__(self):
        self.calls, self.steps = [], 0

    def on_epoch_start(self, loop):
        self.calls.append(("start", loop.epoch, loop.global_step))

    def on_step_end(self, loop):
        self.steps += loop.stepped
        self.calls.append(("step", loop.epoch, loop.global_step, loop.batch_in_epoch, loop.stepped, loop.synced))

    def on_epoch_end(self, loop):
        self.calls.append(("end", loop.epoch, sorted(loop.values)))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_a_new_part_is_one_entry_its_hooks_see_the_loop_and_its_state_is_checkpointed(tmp_path):
    trainer = build(tmp_path, epochs=2, accumulate_steps=2, log_step=2, save_period=1)
    counting = Counting()
    trainer.parts.append(counting)
    trainer.train()
    first = counting.calls[:7]
    assert first == [("start", 1, 0), ("step", 1, 1, 1, False, False), ("step", 1, 2, 2, True, True),
                     ("step", 1, 3, 3, False, False), ("step", 1, 4, 4, True, True), ("step", 1, 5, 5, True, False),
                     ("end", 1, ["accuracy", "loss", "samples_per_sec"])]  # 5 batches: groups of 2, 2 and 1
    assert counting.steps == 6 and [c[0] for c in counting.calls].count("start") == 2
    assert load_checkpoint(tmp_path / "checkpoint-epoch2.pth")["counting"] == {"steps": 6}
    fresh = build(tmp_path / "fresh", epochs=2)
    fresh.parts.append(Counting())
    fresh.load_state_dict(load_checkpoint(tmp_path / "checkpoint-epoch1.pth"))
    assert fresh.parts[-1].steps == 3


def test_validating_wraps_each_validation(tmp_path):
    entered = []

    class Around(Part):
        def validating(self, loop):
            entered.append(loop.epoch)
            return torch.no_grad()

    trainer = build(tmp_path, epochs=2)
    trainer.parts.append(Around())
    trainer.train()
    assert entered == [1, 2]


class Clock:
    """A clock the test moves: no test depends on how long anything takes."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_checkpoints_by_time_save_at_the_first_optimizer_step_past_the_interval():
    saved, clock = [], Clock()
    part = StepCheckpoints(lambda: saved.append(loop.global_step), seconds=60, clock=clock)
    loop = type("L", (), {"stepped": True, "global_step": 0, "synced": False})()
    for step, now, stepped in ((1, 30, True), (2, 59.9, True), (3, 61, False), (4, 61, True), (5, 100, True),
                               (6, 121, True)):
        loop.global_step, loop.stepped, clock.now = step, stepped, now
        part.on_step_end(loop)
    assert saved == [4, 6]  # 60 s after the start (not inside an accumulation group), then 60 s after step 4's save
    clock.now = 200
    part.on_epoch_end(loop)  # the epoch's own checkpoint: the interval starts again
    loop.global_step, clock.now = 7, 259
    part.on_step_end(loop)
    assert saved == [4, 6]
