"""Tests for utils/interrupt.py: SIGINT stops training like SIGTERM, the previous handlers come back, and a
signal outside the training loop ends the command with one line."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tiny_trainers import build, sigterm_at
from utils.errors import run_cli
from utils.interrupt import TrainingInterrupted


def test_sigint_is_handled_like_sigterm(tmp_path):
    trainer = build(tmp_path)
    sigterm_at(trainer, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.exit_code == 130 and stop.value.checkpoint.name == "checkpoint-step3.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored afterwards


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_outside_the_training_loop_ends_with_one_line_and_its_status(capsys, signum, status):
    def start_up(argv):
        os.kill(os.getpid(), signum)  # e.g. while the data loads, before training starts
        time.sleep(30)  # interrupted by the handler's exception
        raise AssertionError("not reached")

    assert run_cli(start_up) == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"stopped by {signal.Signals(signum).name} outside the training loop: nothing was saved now; "
                     f"files already written (checkpoints, logs) are as they were"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
