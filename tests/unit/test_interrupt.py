"""Tests for utils/interrupt.py: SIGINT stops training like SIGTERM, and the previous handlers come back."""
from __future__ import annotations

import signal

import pytest

from tiny_trainers import build, sigterm_at
from utils.interrupt import TrainingInterrupted


def test_sigint_is_handled_like_sigterm(tmp_path):
    trainer = build(tmp_path)
    sigterm_at(trainer, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.exit_code == 130 and stop.value.checkpoint.name == "checkpoint-step3.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored afterwards
