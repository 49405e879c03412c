"""Tests for utils/faults.py: TRAIN_FAULT names a rank, a step and a signal; a bad value is one error naming the
variable; the fault fires once, after that optimizer step, on the rank it names, on torchrun's first attempt only
(several, separated by ';': one per attempt)."""
from __future__ import annotations

import signal

import pytest

from tiny_trainers import build
from utils.errors import UserError
from utils.faults import Fault, InjectedFault, parse
from utils.interrupt import StopTraining
from utils.part import Part


def test_a_fault_names_a_rank_a_step_and_a_signal_sigkill_by_default():
    assert parse("rank=1,step=17", world_size=2) == Fault(1, 17, signal.SIGKILL)
    assert parse(" step=3 , rank=0 , signal=term ") == Fault(0, 3, signal.SIGTERM)
    assert parse("rank=0,step=1,signal=SIGUSR1").signum == signal.SIGUSR1


@pytest.mark.parametrize("text, problem", [
    ("rank=1", "step must be a global optimizer step, 1 or more, not None"),
    ("rank=0,step=0", "step must be a global optimizer step, 1 or more, not '0'"),
    ("rank=2,step=5", "rank must be a rank of this job, 0 to 1, not '2'"),
    ("rank=0,step=5,signal=HUP", "signal must be one of KILL, TERM, INT, USR1, not 'HUP'"),
    ("rank=0,step=5,rank=1", "'rank=1' is not one of rank=R, step=N, signal=S, each given once"),
    ("1,13", "'1' is not one of rank=R, step=N, signal=S"),
])
def test_a_bad_value_is_one_error_that_names_the_variable_and_the_format(text, problem):
    with pytest.raises(UserError, match="^TRAIN_FAULT=") as error:
        parse(text, world_size=2)
    assert len(error.value.problems) == 1 and problem in error.value.problems[0]
    assert 'Give TRAIN_FAULT="rank=R,step=N"' in error.value.problems[0]


def test_the_fault_is_armed_on_its_rank_on_torchruns_first_attempt_only():
    armed = {"TRAIN_FAULT": "rank=1,step=5"}
    assert type(InjectedFault.from_environment(1, 2, armed)) is InjectedFault
    assert type(InjectedFault.from_environment(1, 2, {**armed, "TORCHELASTIC_RESTART_COUNT": "0"})) is InjectedFault
    assert type(InjectedFault.from_environment(1, 2, {**armed, "TORCHELASTIC_RESTART_COUNT": "1"})) is Part
    assert type(InjectedFault.from_environment(0, 2, armed)) is Part
    assert type(InjectedFault.from_environment(0, 1, {})) is Part
    with pytest.raises(UserError, match="TRAIN_FAULT"):  # checked on every rank, armed or not
        InjectedFault.from_environment(0, 2, {"TRAIN_FAULT": "rank=one"})


def test_several_faults_fire_one_per_torchrun_attempt():
    faults = {"TRAIN_FAULT": "rank=1,step=14,signal=TERM;rank=0,step=22"}
    first = InjectedFault.from_environment(1, 2, faults)
    second = InjectedFault.from_environment(0, 2, {**faults, "TORCHELASTIC_RESTART_COUNT": "1"})
    assert first.fault == Fault(1, 14, signal.SIGTERM) and second.fault == Fault(0, 22, signal.SIGKILL)
    assert type(InjectedFault.from_environment(1, 2, {**faults, "TORCHELASTIC_RESTART_COUNT": "1"})) is Part
    assert type(InjectedFault.from_environment(0, 2, {**faults, "TORCHELASTIC_RESTART_COUNT": "2"})) is Part
    with pytest.raises(UserError, match="rank must be a rank of this job"):  # each one checked, on every attempt
        InjectedFault.from_environment(0, 2, {"TRAIN_FAULT": "rank=0,step=3;rank=5,step=4"})


def test_it_fires_once_right_after_that_optimizer_step(tmp_path):
    sent = []
    trainer = build(tmp_path, epochs=2, accumulate_steps=2)  # 5 batches an epoch: optimizer steps at 2, 4, 5, ...
    trainer.parts.append(InjectedFault(Fault(0, 4), kill=lambda pid, signum: sent.append((trainer.global_step,
                                                                                            signum))))
    trainer.train()
    assert sent == [(4, signal.SIGKILL)]


def test_the_trainer_asks_for_it_and_a_real_sigterm_saves_the_step(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIN_FAULT", "rank=0,step=3,signal=TERM")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    trainer = build(tmp_path)
    assert type(trainer.parts[-1]) is InjectedFault
    with pytest.raises(StopTraining) as stop:
        trainer.train()
    # sent after step 3's every part (its stop check included): the next step stops, as a signal arriving then would
    assert stop.value.signum == signal.SIGTERM and stop.value.checkpoint.name == "checkpoint-step4.pth"
