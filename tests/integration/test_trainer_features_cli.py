"""The trainer's optional parts through train.py and test.py on the built-in digits (issue 15): --fast-dev-run,
trainer.max_time stopping and resuming (its exit status 0 from a process), overfit_batches, EMA weights in test.py,
step-based validation in TensorBoard. In-process through the main()s elsewhere."""
from __future__ import annotations

import json

import pytest
import torch

import test as test_script
import train
from conftest import events, read_metrics, run_cli, run_dir, tiny_config
from utils.checkpoint import find_checkpoint
from utils.errors import run_cli as run_in_process

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging


def test_fast_dev_run_trains_validates_and_tests_one_batch_and_writes_nothing(tmp_path, write_config, capsys):
    assert run_in_process(train.main, ["-c", str(write_config(epochs=30)), "--fast-dev-run"]) == 0
    output = capsys.readouterr()
    out = output.out + output.err
    assert "Fast dev run passed: one batch each of training, validation and the test split ran; nothing was " \
           "written." in out
    assert "val_loss" in out and "Fast dev run, one test batch: loss" in out
    assert not (tmp_path / "saved").exists()


def test_fast_dev_run_stops_at_the_first_error(tmp_path, write_config, capsys):
    config = tiny_config(tmp_path / "saved")
    config["arch"]["args"] = {"channels": 4, "num_classes": 3}  # targets go up to 9: the first batch fails
    code = run_in_process(train.main, ["-c", str(write_config(config)), "--fast-dev-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    code = run_in_process(train.main, ["-r", str(tmp_path), "--fast-dev-run"])
    assert code == 2 and "--fast-dev-run checks a config from scratch; leave out -r" in capsys.readouterr().err


@pytest.mark.slow
def test_max_time_stops_saves_exits_0_and_resume_finishes_like_a_straight_run(tmp_path, write_config):
    config = write_config()
    train.main(["-c", str(config), "--run-id", "straight"])
    result = run_cli("train.py", "-c", str(config), "--run-id", "limited", "trainer.max_time=1e-6")
    assert result.returncode == 0, result.stderr
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "limited")
    path, state = find_checkpoint(ckpt_dir)
    assert state["global_step"] == 1 and path.name == "checkpoint-step1.pth"  # stopped after the first step
    assert f"trainer.max_time (1e-06) reached after global step 1; saved {path}. Resume with:\n    python train.py " \
           f"-r {ckpt_dir}" in result.stdout + result.stderr
    train.main(["-r", str(ckpt_dir), "trainer.max_time=null"])
    straight = read_metrics(run_dir(tmp_path / "saved", "straight")[1], timing=False)
    assert read_metrics(log_dir, timing=False) == straight
    a = torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)["state_dict"]
    b = torch.load(run_dir(tmp_path / "saved", "straight")[0] / "checkpoint-epoch2.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_overfit_batches_drives_the_loss_near_zero_on_the_same_batches(tmp_path, write_config):
    config = tiny_config(tmp_path / "saved", epochs=40, overfit_batches=1)
    config["arch"]["args"] = {}
    train.main(["-c", str(write_config(config)), "--run-id", "o"])
    rows = read_metrics(run_dir(tmp_path / "saved", "o")[1])
    assert rows[-1]["loss"] < 0.05 * rows[0]["loss"] and rows[-1]["val_loss"] < 0.05 * rows[0]["val_loss"]
    assert rows[-1]["val_accuracy"] == 1.0  # validated on the same batch: a model that memorised it


@pytest.mark.slow
def test_ema_weights_are_what_test_py_evaluates_and_step_validation_uses_the_global_step(tmp_path, write_config):
    config = tiny_config(tmp_path / "saved", tensorboard=True, val_every_steps=4, ema={"decay": 0.9})
    train.main(["-c", str(write_config(config)), "--run-id", "e"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "e")
    rows = read_metrics(log_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps[0] == 4 and len(rows) > 2  # 10 steps an epoch: 4, 8, 10, 12, ...
    assert [e.step for e in events(log_dir / "valid").Scalars("loss")] == steps
    assert [e.step for e in events(log_dir / "train").Scalars("loss")] == [r["step"] for r in rows if "loss" in r]

    results = test_script.main(["-r", str(ckpt_dir / "checkpoint-epoch2.pth")])
    state = torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)
    from data_loader.data_loaders import DigitsDataLoader
    from model.model import DigitsModel

    x, y = DigitsDataLoader(training=False).dataset.tensors
    losses = {}
    for name, weights in (("ema", state["ema"]["state_dict"]), ("model", state["state_dict"])):
        model = DigitsModel(**config["arch"]["args"]).eval()
        model.load_state_dict(weights)
        with torch.no_grad():
            losses[name] = torch.nn.functional.nll_loss(model(x), y).item()
    assert results["loss"] == pytest.approx(losses["ema"], rel=1e-5) and losses["ema"] != losses["model"]
    # the run's config.json holds the resolved section: what was written and the defaults of the rest
    assert json.loads((ckpt_dir / "config.json").read_text())["trainer"]["ema"] == {"decay": 0.9, "warmup_steps": 0,
                                                                                 "every": 1}
