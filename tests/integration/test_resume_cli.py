"""Resuming through the command line (train.py -r a checkpoint or a run directory): the same run continues, and
changed settings are applied or reported."""
from __future__ import annotations

import json

import pytest
import torch

import train
from conftest import read_metrics, run_dir
from utils.errors import UserError


@pytest.mark.slow
@pytest.mark.parametrize("resume_from", ["file", "run_dir"])
def test_resume_continues_the_same_run_and_equals_a_straight_run(tmp_path, write_config, resume_from):
    config = write_config()
    train.main(["-c", str(config), "--run-id", "straight", "trainer.epochs=3"])
    train.main(["-c", str(config), "--run-id", "split", "trainer.epochs=2"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "split")
    target = ckpt_dir / "checkpoint-epoch2.pth" if resume_from == "file" else ckpt_dir
    train.main(["-r", str(target), "trainer.epochs=3"])
    assert sorted(p.name for p in (tmp_path / "saved" / "models" / "Digits_CNN").iterdir()) == ["split", "straight"]
    straight = torch.load(run_dir(tmp_path / "saved", "straight")[0] / "checkpoint-epoch3.pth", weights_only=True)
    resumed = torch.load(ckpt_dir / "checkpoint-epoch3.pth", weights_only=True)
    for key in ("state_dict",):
        assert all(torch.equal(straight[key][k], resumed[key][k]) for k in straight[key])
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    assert all(torch.equal(straight["optimizer"]["state"][i]["exp_avg"], resumed["optimizer"]["state"][i]["exp_avg"])
               for i in straight["optimizer"]["state"])
    assert straight["lr_scheduler"] == resumed["lr_scheduler"] and straight["monitor"] == resumed["monitor"]
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3]
    assert read_metrics(log_dir, timing=False) == read_metrics(run_dir(tmp_path / "saved", "straight")[1], timing=False)


@pytest.mark.slow
def test_resume_restores_best_value_and_early_stop_counter(tmp_path, write_config):
    # 'max lr' never strictly improves after epoch 1 (StepLR keeps it for 10 epochs): a pure patience count.
    config = write_config(monitor="max lr", early_stop=3)
    train.main(["-c", str(config), "--run-id", "p", "trainer.epochs=2"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "p")
    train.main(["-r", str(ckpt_dir), "trainer.epochs=10"])
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3, 4]  # stopped after 3 epochs without improvement
    assert (ckpt_dir / "checkpoint-epoch4.pth").is_file()


def test_resume_with_a_new_learning_rate_applies_it_and_says_so(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "lr", "trainer.epochs=1"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "lr")
    train.main(["-r", str(ckpt_dir), "--lr", "0.0005", "trainer.epochs=2", "trainer.verbosity=1"])
    assert [r["lr"] for r in read_metrics(log_dir)] == [0.002, 0.0005]
    assert "Learning rate changed from 0.002 to 0.0005" in (log_dir / "info.log").read_text()


@pytest.mark.slow
def test_resume_with_another_optimizer_warns_and_starts_its_state_fresh(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "o", "trainer.epochs=1"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "o")
    override = tmp_path / "sgd.json"
    override.write_text(json.dumps({"optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}}}))
    train.main(["-r", str(ckpt_dir), "-c", str(override), "trainer.epochs=2", "trainer.verbosity=1"])
    assert "optimizer.type differs from the checkpoint's (Adam)" in (log_dir / "info.log").read_text()
    ckpt = torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)
    assert ckpt["config"]["optimizer"]["type"] == "SGD"
    assert ckpt["config"]["optimizer"]["args"] == {"lr": 0.01, "momentum": 0.9}  # a new type: args replaced
    assert all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())  # SGD state, not Adam's


@pytest.mark.slow
def test_resume_with_a_changed_architecture_warns(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "a", "trainer.epochs=1"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "a")
    with pytest.raises(UserError, match="weights do not fit arch DigitsModel"):
        train.main(["-r", str(ckpt_dir), "arch.args.channels=8", "trainer.epochs=2"])
    assert "arch.args.channels" in (log_dir / "info.log").read_text()
    assert (ckpt_dir / "checkpoint-epoch1.pth").is_file() and not (ckpt_dir / "checkpoint-epoch2.pth").exists()


@pytest.mark.slow
def test_resume_with_a_changed_dataset_or_seed_warns_with_the_differing_keys(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "w", "trainer.epochs=1"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "w")
    train.main(["-r", str(ckpt_dir), "seed=5", "data_loader.args.validation_split=0.2", "trainer.epochs=2"])
    log = (log_dir / "info.log").read_text()
    assert "settings that differ from the checkpoint's: data_loader.args.validation_split, seed" in log
