"""trainer.freeze/unfreeze_at_epoch and optimizer.param_groups through train.py: exact resume across the unfreeze
epoch, each group's learning rate in the optimizer, metrics.jsonl and TensorBoard, and the mistakes' messages."""
from __future__ import annotations

import json

import pytest
import torch

import train
from conftest import events, read_metrics, run_dir, tiny_config
from utils.errors import run_cli

GROUPS = [{"params": "head.*", "lr": 0.01, "name": "head"}, {"params": ["features.3.*", "features.4.*"], "lr": 0.001}]


def config_file(tmp_path, param_groups=(), optimizer_args=None, **trainer):
    config = tiny_config(tmp_path / "saved", **trainer)
    config["optimizer"]["args"].update(optimizer_args or {})
    config["optimizer"]["param_groups"] = list(param_groups)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def checkpoint(tmp_path, run_id, epoch):
    return torch.load(run_dir(tmp_path / "saved", run_id)[0] / f"checkpoint-epoch{epoch}.pth", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["monitor"] == b["monitor"]
    assert a["global_step"] == b["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [1, 2])
def test_frozen_until_epoch_2_then_resumed_across_it_equals_a_straight_run(tmp_path, stop_after):
    config = config_file(tmp_path, epochs=3, freeze=["features.*"], unfreeze_at_epoch=2,
                         optimizer_args={"weight_decay": 0.01})
    train.main(["-c", str(config), "--run-id", "straight"])
    train.main(["-c", str(config), "--run-id", "split", f"trainer.epochs={stop_after}"])
    train.main(["-r", str(run_dir(tmp_path / "saved", "split")[0]), "trainer.epochs=3"])
    assert_identical(checkpoint(tmp_path, "straight", 3), checkpoint(tmp_path, "split", 3))
    assert read_metrics(run_dir(tmp_path / "saved", "split")[1], timing=False) == \
        read_metrics(run_dir(tmp_path / "saved", "straight")[1], timing=False)
    epoch1, epoch2 = (checkpoint(tmp_path, "straight", e)["state_dict"] for e in (1, 2))
    fresh = torch.nn.BatchNorm2d(4).state_dict()  # frozen in epoch 1: the batch norm statistics as initialized
    assert all(torch.equal(epoch1[f"features.1.{k}"], v) for k, v in fresh.items())
    assert not torch.equal(epoch1["features.0.weight"], epoch2["features.0.weight"])  # trained from epoch 2
    assert epoch2["features.1.num_batches_tracked"] > 0


def test_each_group_has_its_rate_in_the_optimizer_metrics_and_tensorboard_each_scaled_by_the_scheduler(tmp_path):
    config = config_file(tmp_path, GROUPS, optimizer_args={"weight_decay": 0.1}, monitor="max lr/head")
    train.main(["-c", str(config), "--run-id", "g", "+optimizer.no_decay_bias_norm=true",
                'lr_scheduler.args={"step_size": 1, "gamma": 0.5}'])
    groups = checkpoint(tmp_path, "g", 2)["optimizer"]["param_groups"]
    assert [(g["name"], g["weight_decay"], g["initial_lr"], g["lr"]) for g in groups] == [
        ("default", 0.1, 0.002, 0.0005), ("default", 0.0, 0.002, 0.0005), ("head", 0.1, 0.01, 0.0025),
        ("head", 0.0, 0.01, 0.0025), ("group1", 0.1, 0.001, 0.00025), ("group1", 0.0, 0.001, 0.00025)]
    rows = read_metrics(run_dir(tmp_path / "saved", "g")[1])
    assert [(r["lr"], r["lr/head"], r["lr/group1"]) for r in rows] == [(0.002, 0.01, 0.001), (0.001, 0.005, 0.0005)]
    scalars = events(run_dir(tmp_path / "saved", "g")[1] / "train")
    assert {"lr", "lr/head", "lr/group1"} <= set(scalars.Tags()["scalars"])
    assert [e.value for e in scalars.Scalars("lr/head")] == pytest.approx([0.01, 0.005])


def test_resume_with_a_new_learning_rate_keeps_each_groups_ratio_to_the_default(tmp_path):
    train.main(["-c", str(config_file(tmp_path, GROUPS, epochs=1)), "--run-id", "lr"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "lr")
    train.main(["-r", str(ckpt_dir), "--lr", "0.001", "trainer.epochs=2"])
    rows = read_metrics(log_dir)
    assert [r["lr"] for r in rows] == [0.002, 0.001]
    assert [r["lr/head"] for r in rows] == pytest.approx([0.01, 0.005])


def test_resume_with_other_param_groups_warns_and_starts_the_optimizer_afresh(tmp_path):
    train.main(["-c", str(config_file(tmp_path, GROUPS, epochs=1)), "--run-id", "r"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "r")
    train.main(["-r", str(ckpt_dir), 'optimizer.param_groups=[{"params": "head.*", "lr": 0.02}]', "trainer.epochs=2",
                "trainer.verbosity=1"])
    assert ("optimizer.param_groups differs from the checkpoint's; its optimizer state is not loaded"
            in (log_dir / "info.log").read_text())
    assert [(r["lr"], r["lr/group0"]) for r in read_metrics(log_dir)[1:]] == [(0.002, 0.02)]


@pytest.mark.parametrize("overrides, error", [
    (["trainer.freeze=[\"conv1.*\"]"],
     "error: trainer.freeze: 'conv1.*' matches no parameter of DigitsModel. Its parameters are under 'features.*', "
     "'head.*'"),
    (['optimizer.param_groups=[{"params": "head.*"}, {"params": "*.bias", "lr": 0.1}]'],
     "error: optimizer.param_groups.1.params: 2 parameter(s) already in optimizer.param_groups.0, e.g. "
     "'head.2.bias'; a parameter may be in one group only: narrow the patterns"),
    (['optimizer.param_groups=[{"params": "head.3.*"}]'],
     "error: optimizer.param_groups.0.params: 'head.3.*' matches no parameter of DigitsModel. Did you mean"),
])
def test_patterns_that_do_not_fit_the_model_exit_2_with_one_error_line(tmp_path, capsys, overrides, error):
    status = run_cli(train.main, ["-c", str(config_file(tmp_path)), "--dry-run", *overrides])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and lines[0].startswith(error), lines
