"""Tests for utils/monitor.py: best value and patience for 'min'/'max'/'off', and a key the run never logs."""
from __future__ import annotations

import pytest

from tiny_trainers import make_trainer
from utils.errors import UserError
from utils.monitor import Monitor


def test_monitor_max_and_off(tmp_path):
    monitor = Monitor("max val_accuracy", 2)
    assert [monitor.update({"val_accuracy": v}) for v in (0.5, 0.7, 0.7, 0.6)] == [True, True, False, False]
    assert monitor.best == 0.7 and monitor.should_stop
    off = Monitor("off", 1)
    assert not off.update({"loss": 0.1}) and not off.should_stop


def test_monitor_on_a_key_the_run_never_logs_fails_before_training(tmp_path):
    with pytest.raises(UserError, match=r"trainer.monitor: 'val_acc' is not logged.*val_loss"):
        make_trainer(tmp_path, monitor="max val_acc")


def test_monitor_saves_the_last_value_and_where_it_was_measured_and_loads_old_states():
    monitor = Monitor("min val_loss", 3)
    assert monitor.state_dict()["last"] is None and monitor.state_dict()["last_at"] is None
    monitor.update({"epoch": 1, "val_loss": 0.5})
    monitor.update({"epoch": 2, "step": 40, "val_loss": 0.7})
    state = monitor.state_dict()
    assert state == {"mode": "min", "key": "val_loss", "best": 0.5, "wait": 1, "last": 0.7, "last_at": [2, 40]}
    resumed = Monitor("min val_loss", 3)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    old = Monitor("min val_loss", 3)
    old.load_state_dict({"mode": "min", "key": "val_loss", "best": 0.4, "wait": 2})  # from before save_top_k
    assert (old.best, old.wait, old.last, old.last_at) == (0.4, 2, None, None)
