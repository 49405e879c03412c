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
