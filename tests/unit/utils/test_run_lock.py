"""utils/run_lock.py: one training process per run directory; a second waits for the first, then says who holds it.
utils/distributed.py's stop_when_the_launcher_dies: a rank whose torchrun agent was killed stops (and saves)."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import train
import utils.run_lock as run_lock
from conftest import ROOT, run_dir, tiny_config
from utils.errors import UserError, run_cli
from utils.run_lock import RunLock


def held_elsewhere(directory):
    """The lock as another process holds it (another open file: flock locks conflict between files, not only
    between processes)."""
    file = open(directory / run_lock.NAME, "a+")
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    file.truncate(0)
    file.write("pid 4242 on elsewhere\n")
    file.flush()
    return file


def test_a_second_holder_waits_then_names_the_first(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="train")
    first = held_elsewhere(tmp_path)
    ticks = iter(range(100))
    with pytest.raises(UserError, match=r"run directory .* is in use by another training process \(pid 4242 on "
                                         r"elsewhere\) after waiting 2 s; stop that process"):
        RunLock(wait_s=2, clock=lambda: next(ticks)).acquire(tmp_path)
    assert "waiting up to 2 s for it to end" in caplog.text
    first.close()
    lock = RunLock(wait_s=0)
    lock.acquire(tmp_path)  # free again
    assert (tmp_path / run_lock.NAME).read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    lock.release()


def test_a_waiting_start_goes_on_once_the_holder_lets_go(tmp_path):
    first = held_elsewhere(tmp_path)
    threading.Timer(0.3, first.close).start()
    lock = RunLock(wait_s=60)
    lock.acquire(tmp_path)
    lock.release()


def test_the_same_command_started_while_the_run_trains_waits_and_touches_nothing(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tmp_path / "saved", epochs=1)))
    command = ["-c", str(config), "--run-id", "run", "--resume", "auto"]
    assert run_cli(train.main, command) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    (ckpt_dir / ".checkpoint-epoch2.pth.tmp").write_bytes(b"the other process is writing this")
    before = {p: p.read_bytes() for p in [*ckpt_dir.iterdir(), log_dir / "metrics.jsonl"] if p.name != ".lock"}
    holder = held_elsewhere(ckpt_dir)
    monkeypatch.setattr(run_lock, "WAIT_S", 0.5)
    assert run_cli(train.main, [*command, "trainer.epochs=2"]) == 2
    assert "is in use by another training process (pid 4242 on elsewhere)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before  # its temporary file, checkpoints and rows untouched
    holder.close()


LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)  # as torchrun starts ranks
print(child.pid, flush=True)
time.sleep(600)
"""
RANK = """
import signal, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from utils.distributed import stop_when_the_launcher_dies
signal.signal(signal.SIGTERM, lambda *_: (Path({said!r}).write_text("SIGTERM"), sys.exit(0)))
stop_when_the_launcher_dies()
Path({said!r}).write_text("ready")
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_rank_whose_launcher_is_killed_gets_sigterm(tmp_path):
    said = tmp_path / "said"
    rank = textwrap.dedent(RANK.format(root=str(ROOT), said=str(said)))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, rank], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not said.exists():
            assert time.monotonic() < deadline and not gone(child)
            time.sleep(0.02)
        launcher.kill()  # kill -9: the launcher passes nothing on
        launcher.wait()
        while not gone(child) and said.read_text() != "SIGTERM":
            assert time.monotonic() < deadline, "the rank outlived its launcher without a signal"
            time.sleep(0.02)
        assert said.read_text() == "SIGTERM"
    finally:
        launcher.kill()
        if not gone(child):
            os.kill(child, signal.SIGKILL)
