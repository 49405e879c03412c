"""train.py -c CONFIG --run-id NAME --resume auto: the same command starts a run, resumes it after each stop and, once
the run has finished, says so and exits 0 with nothing written; the run ends bit for bit as a straight run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import ROOT, read_metrics, run_dir, tiny_config
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging


def config_file(tmp_path: Path, **trainer) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(tmp_path / "saved", **trainer)))
    return path


def auto(config: Path, run_id: str, *more: str) -> list[str]:
    return ["-c", str(config), "--run-id", run_id, "--resume", "auto", *more]


def files(directory: Path) -> dict[str, int]:
    """Each file under directory and its modification time: what a command wrote there."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights, optimizer state, scheduler, monitor and counts, bit for bit."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][i][name])), (i, name)
    for key in ("lr_scheduler", "monitor", "monitor_best", "global_step", "epoch", "batch_in_epoch"):
        assert a.get(key) == b.get(key), key


def assert_same_run(save_dir: Path, run_id: str, straight: str = "straight", epochs: int = 2) -> None:
    (straight_dir, straight_log), (ckpt_dir, log_dir) = run_dir(save_dir, straight), run_dir(save_dir, run_id)
    assert read_metrics(log_dir, timing=False) == read_metrics(straight_log, timing=False)
    name = f"checkpoint-epoch{epochs}.pth"
    assert_same_state(*(torch.load(d / name, weights_only=True) for d in (ckpt_dir, straight_dir)))


def until_finished(command: list[str], capsys, most: int = 12) -> int:
    """Run command in this process until it says the run has finished; the number of starts that trained."""
    for starts in range(most):
        assert run_cli(train.main, command) == 0
        if "has finished its" in capsys.readouterr().out:
            return starts
    raise AssertionError(f"not finished after {most} starts")


def test_the_same_command_starts_resumes_and_ends_as_a_straight_run(tmp_path, capsys):
    """trainer.max_time stops each start after one step (in the middle of an epoch, at its end, between epochs):
    the first start has no run directory, each later one resumes, the last says the run has finished, writes
    nothing and exits 0."""
    config = config_file(tmp_path, limit_train_batches=2)
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight"]) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "auto")
    command = auto(config, "auto", "trainer.max_time=1e-9")
    assert run_cli(train.main, command) == 0  # the first start: from scratch
    assert (ckpt_dir / "latest").read_text().strip() == "checkpoint-step1.pth"
    assert until_finished(command, capsys) >= 3
    assert_same_run(tmp_path / "saved", "auto")
    written = files(tmp_path / "saved")
    assert run_cli(train.main, command) == 0  # a requeued job once more: nothing to do, nothing written
    assert f"Run {ckpt_dir} has finished its 2 epochs" in capsys.readouterr().out
    assert files(tmp_path / "saved") == written


def test_a_run_directory_without_a_checkpoint_starts_again_there(tmp_path):
    """A run killed before its first checkpoint left its directories (config.json, a row of metrics.jsonl): the
    same command starts it from scratch there, its rows each once."""
    config = config_file(tmp_path, limit_train_batches=2)
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight"]) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "auto")
    ckpt_dir.mkdir(parents=True)
    log_dir.mkdir(parents=True)
    (ckpt_dir / "config.json").write_text(config.read_text())
    (log_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 9.0}) + "\n")
    (log_dir / "info.log").write_text("the first start's log\n")
    assert run_cli(train.main, auto(config, "auto")) == 0
    assert_same_run(tmp_path / "saved", "auto")
    assert (log_dir / "info.log").read_text().startswith("the first start's log\n")  # kept, appended to


@pytest.mark.parametrize("argv, missing", [(["--resume", "auto"], "-c CONFIG and --run-id NAME"),
                                           (["-r", "auto", "-c", "c.json"], "--run-id NAME"),
                                           (["--resume", "auto", "--run-id", "a"], "-c CONFIG")])
def test_auto_without_a_config_or_run_id_names_the_fix(argv, missing, capsys):
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"error: --resume auto needs {missing}" in err
    assert "python train.py -c config.json --run-id NAME --resume auto" in err


def test_a_config_that_differs_from_the_runs_is_reported_as_r_reports_it(tmp_path):
    config = config_file(tmp_path, epochs=1, limit_train_batches=2, verbosity=1)
    assert run_cli(train.main, auto(config, "a")) == 0
    changed = json.loads(config.read_text())
    changed["trainer"]["epochs"] = 2
    changed["data_loader"]["args"]["validation_split"] = 0.2
    config.write_text(json.dumps(changed))
    assert run_cli(train.main, auto(config, "a")) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "a")
    log = (log_dir / "info.log").read_text()
    assert "settings that differ from the checkpoint's: data_loader.args.validation_split" in log
    assert f"Resumed from {ckpt_dir / 'checkpoint-epoch1.pth'}" in log
    assert torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)["config"]["trainer"]["epochs"] == 2


@pytest.mark.slow
def test_a_process_killed_at_a_random_moment_resumes_with_the_same_command(tmp_path, capsys):
    """kill -9 at a random moment of a real process (before its first checkpoint, or after any), then the same
    command until the run has finished: the run ends bit for bit as a straight run."""
    config = config_file(tmp_path, epochs=2, save_every_steps=5)
    conf = json.loads(config.read_text())
    conf["data_loader"]["args"]["batch_size"] = 16  # 77 steps an epoch: the kill lands mid-epoch
    config.write_text(json.dumps(conf))
    started = time.monotonic()
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight"]) == 0
    span = time.monotonic() - started
    command = auto(config, "auto")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *command], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2 + random.Random().uniform(0, span))  # about the start-up, then a moment of the training
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    until_finished(command, capsys)
    assert_same_run(tmp_path / "saved", "auto")


def test_checkpoint_every_minutes_writes_step_checkpoints_under_the_default_retention(tmp_path):
    """A tiny interval: a checkpoint after each optimizer step (when is not the point); the default retention keeps
    the newest state and model_best.pth."""
    config = config_file(tmp_path, limit_train_batches=3, save_period=None)
    assert run_cli(train.main, [*auto(config, "timed"), "trainer.checkpoint_every.minutes=1e-9"]) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "timed")
    assert "checkpoint-step" in (log_dir / "info.log").read_text()
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["checkpoint-epoch2.pth", "model_best.pth"]


def test_save_every_steps_beside_checkpoint_every_is_one_error(tmp_path, capsys):
    config = config_file(tmp_path)
    argv = ["-c", str(config), "trainer.save_every_steps=5", 'trainer.checkpoint_every={"steps": 5}']
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err == ("error: trainer.save_every_steps and trainer.checkpoint_every both say when to checkpoint; keep one "
                   '(trainer.save_every_steps=null, and checkpoint_every {"steps": N})\n')


@pytest.mark.slow
def test_a_run_with_activation_checkpointing_stopped_mid_epoch_resumes_bit_for_bit(tmp_path, capsys):
    """trainer.activation_checkpointing keeps the promise of an exact resume: a stop in the middle of the first epoch
    and the same command again end as a straight run with the same setting."""
    config = config_file(tmp_path, epochs=2, activation_checkpointing=["features"])
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight"]) == 0
    assert run_cli(train.main, auto(config, "auto", "trainer.max_time=1e-6")) == 0  # stops at its first chance
    ckpt_dir = run_dir(tmp_path / "saved", "auto")[0]
    assert torch.load(ckpt_dir / (ckpt_dir / "latest").read_text().strip(), weights_only=True)["batch_in_epoch"] > 0
    assert run_cli(train.main, auto(config, "auto", "trainer.max_time=null")) == 0
    assert_same_run(tmp_path / "saved", "auto")
