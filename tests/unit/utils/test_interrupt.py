"""Tests for utils/interrupt.py: SIGINT stops training like SIGTERM, the previous handlers come back, and a
signal outside the training loop ends the command with one line, and once a command is done a signal cannot
turn its exit into a kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from tiny_trainers import build, sigterm_at
from utils.errors import run_cli
from utils.interrupt import StopTraining


def test_sigint_is_handled_like_sigterm(tmp_path):
    trainer = build(tmp_path)
    sigterm_at(trainer, 3, signal.SIGINT)
    with pytest.raises(StopTraining) as stop:
        trainer.train()
    assert stop.value.reason == StopTraining.SIGNAL and stop.value.signum == signal.SIGINT
    assert stop.value.exit_code == 130 and stop.value.checkpoint.name == "checkpoint-step3.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored afterwards


def test_stop_training_says_why_and_the_exit_status():
    by_signal = StopTraining.by_signal(signal.SIGUSR1, "ckpt")
    assert (by_signal.reason, by_signal.signum, by_signal.exit_code) == (StopTraining.SIGNAL, signal.SIGUSR1, 138)
    assert str(by_signal) == "stopped by SIGUSR1; saved ckpt"
    assert StopTraining.by_signal(None).signum == signal.SIGTERM  # under DDP another rank received it
    limit = StopTraining(StopTraining.TIME_LIMIT, seconds=90.0)
    assert limit.exit_code == 0 and str(limit) == "trainer.max_time (90 s) reached"
    assert StopTraining(StopTraining.EARLY_STOP).exit_code == 0


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


SETTLE = """
import gc, multiprocessing, signal, sys, threading, time
from utils.interrupt import settle_for_exit
wait, child = threading.Event(), None
if sys.argv[1] == "thread":  # still running when the command is done: the exit waits for it
    threading.Thread(target=wait.wait, args=(60,)).start()
if sys.argv[1] == "child":  # a process that is not a daemon: the exit waits for it too
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
try:
    settle_for_exit()
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
    print(gc.get_freeze_count() > 0, *(getattr(h, "name", None) or h.__name__ for h in handlers))
finally:
    wait.set()
    if child is not None:
        child.terminate()
"""


@pytest.mark.parametrize("running, handlers", [("nothing", "SIG_IGN SIG_IGN SIG_IGN"),
                                               ("thread", "default_int_handler SIG_DFL SIG_DFL"),
                                               ("child", "default_int_handler SIG_DFL SIG_DFL")])
def test_once_done_stop_signals_are_ignored_unless_a_thread_or_child_is_still_running(running, handlers):
    out = subprocess.run([sys.executable, "-c", SETTLE, running], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == f"True {handlers}"


COLLECTED = """
import sys
from utils import distributed
from utils.interrupt import settle_for_exit

class HoldsAGroup:  # a DistributedDataParallel model, say: garbage in a cycle once the command is done
    def __del__(self):
        print("collected", flush=True)

held = HoldsAGroup()
held.cycle = held
del held
if sys.argv[1] == "joined":
    distributed._started.append(("gloo", 1800))  # as distributed.init records a process group it joined
settle_for_exit()
print("settled", flush=True)
"""


@pytest.mark.parametrize("joined", ["joined", "alone"])
def test_a_process_that_joined_a_group_frees_what_holds_it_before_the_exit(joined):
    # Frozen instead, a process group's threads are left to C++'s exit, which aborts the process (SIGABRT) at random
    out = subprocess.run([sys.executable, "-c", COLLECTED, joined], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == (["collected", "settled"] if joined == "joined" else ["settled"])  # alone: frozen, a faster exit
