"""Tests for config/validation.py and config/arguments.py: arguments checked against the libraries' signatures, and
the checks of a whole config."""
from __future__ import annotations

import inspect
import re

import pytest
import torch

from config.arguments import check_args
from conftest import tiny_config
from parse_config import validate, with_defaults
from utils.registry import REGISTRIES


# ---- argument checks against the libraries' signatures ----

def test_every_plain_default_passes_its_own_type_check():
    """check_args must not reject the value an argument has by default (e.g. SGD's momentum=0 takes 0.9)."""
    checked = 0
    for registry in REGISTRIES.values():
        for name in registry.names():
            obj = registry.find(name)
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            args = {p.name: p.default for p in params if type(p.default) in (int, float, bool, str, type(None))}
            assert [p for p in check_args(obj, args, "x") if "expects" in p] == [], name
            checked += len(args)
    assert checked > 500


@pytest.mark.parametrize("cls, args, problem", [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}, None),
    (torch.optim.SGD, {"lr": "fast"}, r"lr: SGD expects a number \(default 0.001\), got 'fast'"),
    (torch.optim.SGD, {"momentum": True}, "momentum: SGD expects a number"),
    (torch.optim.SGD, {"nesterov": 1}, "nesterov: SGD expects true or false"),
    (torch.optim.Adam, {"lr": None}, "lr: Adam expects a number"),
    (torch.optim.lr_scheduler.ReduceLROnPlateau, {"min_lr": 1e-6, "mode": "max"}, None),
    (torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 0.1, "total_steps": None}, None),
    (torch.optim.lr_scheduler.StepLR, {"step_size": 2.5}, "step_size: StepLR expects an integer, got 2.5"),
])
def test_arg_types_follow_annotations(cls, args, problem):
    problems = check_args(cls, args, "section.args", 1)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and re.search(problem, problems[0]), problems


# ---- a whole config ----

def test_malformed_sections_are_reported_once_without_crashing(tmp_path):
    config = tiny_config(tmp_path / "saved")
    config.update(trainer=[1], metrics="accuracy", lr_scheduler="StepLR", loss=5, arch={"type": 3}, seed="x")
    del config["optimizer"]
    problems = validate(with_defaults(config))
    assert problems == [
        "config key 'seed' must be an integer or null, got 'x'",
        "config key 'arch.type' must be a string, got 3",
        "config key 'optimizer.type' is missing: any torch.optim optimizer, else any pytorch_optimizer "
        "optimizer, by class name",
        "config key 'loss' must be a string or an object, got 5",
        "config key 'metrics' must be a list, got 'accuracy'",
        "config key 'lr_scheduler' must be an object {...}",
        "config key 'trainer' must be an object {...}",
    ]


def test_param_groups_entries_are_checked_against_the_optimizer_all_at_once(tmp_path):
    config = with_defaults(tiny_config(tmp_path))
    config["optimizer"]["param_groups"] = [
        {"params": "head.*", "lr": 0.01, "name": "head"}, {"lr": 0.1}, "head.*", {"params": ["x", 1], "lrr": 0.1},
        {"params": "x", "name": "head", "lr": -1}, {"params": "y", "name": "default"}, {"params": "z", "betas": "no"},
    ]
    assert validate(config) == [
        'optimizer.param_groups.1.params must be a glob pattern of parameter names or a list of them (e.g. '
        '"features.*"), got nothing',
        'optimizer.param_groups.2 must be an object {"params": "<glob pattern>", "lr": ..., ...}, got \'head.*\'',
        "optimizer.param_groups.3.params must be a glob pattern of parameter names or a list of them (e.g. "
        "\"features.*\"), got ['x', 1]",
        "optimizer.param_groups.3.lrr: Adam has no argument 'lrr'. Did you mean 'lr'?",
        "optimizer.param_groups.4: its name 'head' is also optimizer.param_groups.0's; give each group a distinct "
        "\"name\"",
        "optimizer.param_groups.4.lr must be at least 0, got -1",
        "optimizer.param_groups.5.name must be a string other than 'default' (the group of the other parameters), "
        "got 'default'",
        "optimizer.param_groups.6.betas: Adam expects a list or a number (default (0.9, 0.999)), got 'no'",
    ]


def test_unfreezing_without_anything_frozen_is_a_mistake(tmp_path):
    from conftest import tiny_config
    from parse_config import validate, with_defaults

    config = tiny_config(tmp_path, unfreeze_at_epoch=3)
    assert validate(with_defaults(config)) == [
        "trainer.unfreeze_at_epoch is set but trainer.freeze names nothing to freeze; add patterns to trainer.freeze "
        "or set trainer.unfreeze_at_epoch to null"]
    config["trainer"]["freeze"] = ["features.*"]
    assert validate(with_defaults(config)) == []


def test_save_top_k_without_a_monitor_is_reported_with_the_other_problems(tmp_path):
    config = tiny_config(tmp_path, save_top_k=2, monitor="off", early_stop=-1)
    assert validate(with_defaults(config)) == [
        "trainer.save_top_k is set but trainer.monitor is 'off': there is no value to rank checkpoints by; set "
        "trainer.monitor (e.g. 'min val_loss') or set trainer.save_top_k to null",
        "trainer.early_stop must be 0 (off) or a positive patience, got -1"]
    config["trainer"]["monitor"] = "max val_accuracy"
    del config["trainer"]["early_stop"]
    assert validate(with_defaults(config)) == []


def test_the_rules_across_keys_are_reported_with_every_other_problem(tmp_path):
    """Each section's rules (config/schema.py, TrainerSettings.rules) run with the other checks: one list, in the
    order of the sections, the trainer's ranges after its rules."""
    config = tiny_config(tmp_path, unfreeze_at_epoch=2, save_top_k=1, monitor="off", epochs=0, tensorbord=True)
    config["lr_scheduler"]["interval"] = "batch"
    config["arch"]["weights_key_map"] = {"backbone.": 7}
    config["optimizer"]["args"]["lr"] = -1
    assert validate(with_defaults(config)) == [
        "config key 'trainer.tensorbord' is not known. Did you mean 'trainer.tensorboard'?",
        "optimizer.args.lr must be at least 0, got -1",
        "arch.weights_key_map: 'backbone.' maps to 7; both must be strings (name prefixes)",
        "lr_scheduler.interval must be 'epoch' or 'step', got 'batch'",
        "trainer.unfreeze_at_epoch is set but trainer.freeze names nothing to freeze; add patterns to trainer.freeze "
        "or set trainer.unfreeze_at_epoch to null",
        "trainer.save_top_k is set but trainer.monitor is 'off': there is no value to rank checkpoints by; set "
        "trainer.monitor (e.g. 'min val_loss') or set trainer.save_top_k to null",
        "trainer.epochs must be at least 1, got 0",
    ]
