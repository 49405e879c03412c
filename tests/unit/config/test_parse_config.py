"""Tests for parse_config.py, the face of the config package (config/files.py, merge.py, overrides.py, parser.py):
reading, merging, overrides, declared options, resume precedence, validation, run dirs."""
from __future__ import annotations

import argparse
import copy
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import parse_config
import train
from parse_config import (ConfigParser, EMASettings, apply_override, coerce, deep_merge, merge_changes,
                          parse_overrides, read_json, with_defaults)
from run import load_config as assembled_load_config
from utils.errors import UserError, run_cli
from utils.registry import ARCHS, LOSSES, LR_SCHEDULERS, OPTIMIZERS, Registry

from conftest import BAD_CONFIG_PROBLEMS, _bad_config, tiny_config, write


# The original victoresque/pytorch-template config.json, verbatim.
ORIGINAL = json.loads("""
{
    "name": "Mnist_LeNet",
    "n_gpu": 1,

    "arch": {
        "type": "MnistModel",
        "args": {}
    },
    "data_loader": {
        "type": "MnistDataLoader",
        "args":{
            "data_dir": "data/",
            "batch_size": 128,
            "shuffle": true,
            "validation_split": 0.1,
            "num_workers": 2
        }
    },
    "optimizer": {
        "type": "Adam",
        "args":{
            "lr": 0.001,
            "weight_decay": 0,
            "amsgrad": true
        }
    },
    "loss": "nll_loss",
    "metrics": [
        "accuracy", "top_k_acc"
    ],
    "lr_scheduler": {
        "type": "StepLR",
        "args": {
            "step_size": 50,
            "gamma": 0.1
        }
    },
    "trainer": {
        "epochs": 100,

        "save_dir": "saved/",
        "save_period": 1,
        "verbosity": 2,

        "monitor": "min val_loss",
        "early_stop": 10,

        "tensorboard": true
    }
}
""")


def load_config(args) -> tuple:
    """run.load_config with train.py's declared options: (config, checkpoint or None, dist)."""
    return assembled_load_config(args, train.OPTIONS)


def from_cli(*argv: str) -> ConfigParser:
    """ConfigParser.from_args on train.py's own command line."""
    return load_config(train.build_parser(train.OPTIONS).parse_intermixed_args(list(argv)))[0]


@pytest.fixture
def cfg_file(tmp_path):
    return write(tmp_path, tiny_config(tmp_path / "saved"))


# ---- the original template's format ----

def test_parse_config_is_the_face_of_the_config_package():
    import config

    assert {"ConfigParser", "SCHEMA", "validate", "read_json", "apply_override", "split_path", "with_defaults",
            "differing_keys", "TrainerSettings"} <= set(parse_config.__all__)
    for name in parse_config.__all__:
        assert getattr(parse_config, name) is getattr(config, name), name
    assert ARCHS.find("DigitsModel") is not None  # importing it registered the project's classes


def test_original_template_config_runs_unchanged():
    config = ConfigParser(copy.deepcopy(ORIGINAL))
    for key, value in ORIGINAL.items():  # nothing the user wrote is changed...
        if isinstance(value, dict):
            assert {k: config[key][k] for k in value} == value
        else:
            assert config[key] == value
    trainer = config["trainer"]  # ...and the new keys get their defaults
    assert (trainer["len_epoch"], trainer["log_step"], trainer["log_images"], trainer["log_histograms"]) == (
        None, 50, False, False)
    assert config["seed"] == 123 and config["extra"] == {} and config["lr_scheduler"]["interval"] == "epoch"
    # it builds the way the original train.py built it, including init_obj on a module
    import model.model as module_arch

    model = config.init_obj("arch", module_arch)
    assert type(model) is ARCHS.find("MnistModel") and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    optimizer = config.init_obj("optimizer", OPTIMIZERS, model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["amsgrad"] is True
    scheduler = config.init_obj("lr_scheduler", LR_SCHEDULERS, optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 50
    assert config.build_loss() is LOSSES.find("nll_loss")
    assert list(config.build_metrics()) == ["accuracy", "top_k_acc"]
    make_scheduler = config.init_ftn("lr_scheduler", LR_SCHEDULERS)
    assert make_scheduler(optimizer).gamma == 0.1


def test_validation_reads_no_disk_and_builds_nothing(tmp_path):
    config = tiny_config(tmp_path / "saved")
    ConfigParser(config)
    assert list(tmp_path.iterdir()) == []


# ---- reading files ----

def test_read_json_errors_name_the_path_and_line(tmp_path):
    with pytest.raises(UserError, match=r"config file .*missing\.json not found; give an existing file with -c"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "name": "x",\n  "n_gpu": 1,,\n}')
    with pytest.raises(UserError, match=r"config file .*bad\.json is not valid JSON: .* at line 3 column"):
        read_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match=r"bad\.json must hold a JSON object \{\.\.\.\}, not list"):
        read_json(bad)


# ---- deep merge ----

def test_deep_merge_keeps_nested_keys_not_named():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2], "s": "k"}
    merged = deep_merge(base, {"a": {"y": {"q": 3}}, "l": [9], "new": {"z": 0}})
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 3}}, "l": [9], "s": "k", "new": {"z": 0}}
    assert base == {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2], "s": "k"}  # inputs untouched


JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
KEYS = st.sampled_from(["a", "b", "c", "args", "type"])
CONFIGS = st.recursive(st.dictionaries(KEYS, JSON_LEAF, max_size=4),
                       lambda inner: st.dictionaries(KEYS, inner | JSON_LEAF, max_size=4), max_leaves=12)


def _leaves(node, prefix=()):
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _leaves(value, prefix + (key,)).items()}


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(CONFIGS, CONFIGS)
def test_deep_merge_properties(base, override):
    before = copy.deepcopy((base, override))
    merged = deep_merge(base, override)
    assert (base, override) == before
    assert deep_merge(base, {}) == base and deep_merge(merged, override) == merged
    for path, value in _leaves(override).items():  # every leaf of the override wins...
        if value != {}:
            node = merged
            for key in path:
                node = node[key]
            assert node == value
    for key in base.keys() - override.keys():  # ...and what it does not name is kept
        assert merged[key] == base[key]


# ---- overrides ----

@pytest.mark.parametrize("item, path, expected", [
    ("trainer.epochs=5", ("trainer", "epochs"), 5),
    ("optimizer.args.lr=1", ("optimizer", "args", "lr"), 1.0),
    ("name=123", ("name",), "123"),
    ("trainer.tensorboard=false", ("trainer", "tensorboard"), False),
    ("trainer.monitor=max val_accuracy", ("trainer", "monitor"), "max val_accuracy"),
    ("optimizer;args;lr=0.01", ("optimizer", "args", "lr"), 0.01),  # the original template's separator
    ("trainer.len_epoch=3", ("trainer", "len_epoch"), 3),
    ("metrics.1.args.k=5", ("metrics", 1, "args", "k"), 5),
    ("metrics.1=top_k_acc", ("metrics", 1), "top_k_acc"),  # a metric object replaced by a name
    ('loss={"type": "CrossEntropyLoss"}', ("loss",), {"type": "CrossEntropyLoss"}),
    ("lr_scheduler=null", ("lr_scheduler",), None),
    ("+extra.foo=1", ("extra", "foo"), 1),
    ("+extra.deep.er=[1, 2]", ("extra", "deep", "er"), [1, 2]),
])
def test_override_values_and_types(cfg_file, item, path, expected):
    node = from_cli("-c", str(cfg_file), item).config
    for key in path:
        node = node[key]
    assert node == expected and type(node) is type(expected)


def test_override_adds_an_optimizer_arg(tmp_path):
    config = with_defaults(tiny_config(tmp_path))
    apply_override(config, "optimizer.args.momentum", "0.9", add=True)
    assert config["optimizer"]["args"]["momentum"] == 0.9
    config = tiny_config(tmp_path / "saved")
    config["optimizer"] = {"type": "Adam", "args": {"lr": 0.01}}
    parser = from_cli("-c", str(write(tmp_path, config)), "optimizer.type=SGD", "+optimizer.args.momentum=0.9")
    assert (parser["optimizer"]["type"], parser["optimizer"]["args"]) == ("SGD", {"lr": 0.01, "momentum": 0.9})


def test_override_list_index(tmp_path):
    config = with_defaults(tiny_config(tmp_path))
    apply_override(config, "metrics.0", "top_k_acc")
    assert config["metrics"][0] == "top_k_acc"
    with pytest.raises(UserError, match=r"override metrics\.5: no key 'metrics\.5' in the config"):
        apply_override(config, "metrics.5", "accuracy")
    with pytest.raises(UserError, match=r"override \+metrics\.5: cannot add 'metrics\.5': metrics is a list, "
                                        r"not an object"):
        apply_override(config, "metrics.5", "accuracy", add=True)


def test_override_to_a_duplicate_metric_is_reported(cfg_file):
    with pytest.raises(UserError, match=r"metrics: 'top_k_acc' appears twice; give each a distinct \"name\""):
        from_cli("-c", str(cfg_file), "metrics.0=top_k_acc")


def test_seed_null_override_draws_a_seed(cfg_file):
    seed = from_cli("-c", str(cfg_file), "seed=null")["seed"]
    assert type(seed) is int and 0 <= seed < 2**31


@pytest.mark.parametrize("item, message", [
    ("trainer.epochs=abc", r"override trainer\.epochs=abc: expected an integer like the current value 2"),
    ("trainer.epochs=2.5", r"override trainer\.epochs=2\.5: expected an integer like the current value 2"),
    ("trainer.tensorboard=1", r"override trainer\.tensorboard=1: expected true or false"),
    ("optimizer.args.lr=fast", r"override optimizer\.args\.lr=fast: expected a number like the current value 0\.002"),
    ("seed=1.5", r"override seed=1\.5: expected an integer or null like the current value 123"),
    ("trainer.epoch=3", r"^override trainer\.epoch: no key 'trainer\.epoch' in the config\. Did you mean "
                        r"'trainer\.epochs'( or [^?]*)?\? Write \+trainer\.epoch=\.\.\. to add a new key$"),
    ("optimiser.args.lr=1", r"no key 'optimiser' in the config\. Did you mean 'optimizer'\? Write"),
    ("optimizer.args.lr.x=1", r"no key 'optimizer\.args\.lr\.x' in the config\. Write"),
    ("foo", r"argument 'foo' is not an override: write key\.path=value \(e\.g\. trainer\.epochs=5\)"),
    ("=3", r"argument '=3' is not an override"),
    ("trainer.epochs=null", r"config key 'trainer\.epochs' must be an integer, got None"),
    ("lr_scheduler.args.step_size=null", r"lr_scheduler\.args\.step_size: StepLR expects an integer, got None"),
])
def test_bad_override_names_key_and_fix(cfg_file, item, message):
    with pytest.raises(UserError, match=message):
        from_cli("-c", str(cfg_file), item)


def test_all_override_mistakes_are_reported_together(cfg_file):
    with pytest.raises(UserError) as info:
        from_cli("-c", str(cfg_file), "trainer.epoch=3", "trainer.epochs=abc", "arch.type=Nope")
    problems = info.value.problems
    assert len(problems) == 3 and "'trainer.epoch'" in problems[0] and "trainer.epochs=abc" in problems[1]
    assert problems[2].startswith("arch.type: unknown arch 'Nope'.")


def test_unknown_name_set_by_override_is_reported(cfg_file):
    with pytest.raises(UserError, match=r"arch\.type: unknown arch 'Nope'\..*python train\.py --list arch"):
        from_cli("-c", str(cfg_file), "arch.type=Nope")


@settings(max_examples=100, deadline=None)
@given(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=8))
def test_coerce_keeps_the_current_type(i, f, text):
    assert type(coerce(str(i), 7, "p")) is int and coerce(str(i), 7, "p") == i
    assert type(coerce(str(i), 0.5, "p")) is float and coerce(str(i), 0.5, "p") == i
    assert coerce(json.dumps(f), 0.5, "p") == f
    if _is_json(text) and json.loads(text) is None:  # null passes through; the schema check judges it
        assert coerce(text, "current", "p") is None
    else:
        assert coerce(text, "current", "p") == (json.loads(text) if _is_json_str(text) else text)
        assert type(coerce(text, "current", "p")) is str
    assert repr(coerce(text, None, "p")) == repr(json.loads(text) if _is_json(text) else text)  # NaN != NaN


def _is_json(text):
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def _is_json_str(text):
    return _is_json(text) and isinstance(json.loads(text), str)


def test_an_override_inside_a_null_ema_section_turns_it_on_with_its_defaults(cfg_file):
    assert from_cli("-c", str(cfg_file))["trainer"]["ema"] is None
    config = from_cli("-c", str(cfg_file), "trainer.ema.decay=0.99")
    assert config["trainer"]["ema"] == {"decay": 0.99, "warmup_steps": 0, "every": 1}
    assert config.settings().ema == EMASettings(decay=0.99)
    config = from_cli("-c", str(cfg_file), "trainer.ema.every=4", "trainer.ema.warmup_steps=10")
    assert config.settings().ema == EMASettings(every=4, warmup_steps=10)
    assert from_cli("-c", str(cfg_file), "trainer.ema={}").settings().ema == EMASettings()
    assert from_cli("-c", str(cfg_file), "trainer.ema={}", "trainer.ema=null").settings().ema is None


@pytest.mark.parametrize("item, message", [
    ("trainer.ema.decy=0.9", r"^override trainer\.ema\.decy: no key 'trainer\.ema\.decy' in the config\. "
                             r"Did you mean 'trainer\.ema\.decay'\? Write \+trainer\.ema\.decy=\.\.\. to add a new key$"),
    ("trainer.ema.decay=fast", r"^override trainer\.ema\.decay=fast: expected a number like the current value "
                               r"0\.999$"),
    ("trainer.ema.decay=1.5", r"^trainer\.ema\.decay must be from 0 to 1, got 1\.5$"),
])
def test_a_bad_ema_override_names_its_key(cfg_file, item, message):
    with pytest.raises(UserError, match=message):
        from_cli("-c", str(cfg_file), item)


def test_an_override_inside_a_null_section_without_defaults_for_all_its_keys_still_names_the_fix(cfg_file):
    with pytest.raises(UserError, match=r"^override lr_scheduler\.interval: no key 'lr_scheduler\.interval' in the "
                                        r"config\. Write \+lr_scheduler\.interval=\.\.\. to add a new key$"):
        from_cli("-c", str(cfg_file), "lr_scheduler=null", "lr_scheduler.interval=step")


def test_parse_overrides_splits_adds_and_keeps_equals_in_values():
    assert parse_overrides(["a.b=1", "+c=x", "name=a=b"]) == [("a.b", "1", False), ("c", "x", True),
                                                               ("name", "a=b", False)]


# ---- declared options and precedence ----

def test_declared_options_lr_and_bs(cfg_file):
    config = from_cli("-c", str(cfg_file), "--lr", "0.05", "--bs", "16")
    assert config["optimizer"]["args"]["lr"] == 0.05 and config["data_loader"]["args"]["batch_size"] == 16
    config = from_cli("--learning_rate", "0.03", "-c", str(cfg_file), "--batch_size", "8", "trainer.epochs=4")
    assert config["optimizer"]["args"]["lr"] == 0.03 and config["data_loader"]["args"]["batch_size"] == 8
    assert config["trainer"]["epochs"] == 4


def test_key_value_overrides_beat_declared_options(cfg_file):
    config = from_cli("-c", str(cfg_file), "optimizer.args.lr=0.07", "--lr", "0.05")
    assert config["optimizer"]["args"]["lr"] == 0.07


def test_declared_option_adds_a_missing_target(tmp_path):
    config = tiny_config(tmp_path / "saved")
    del config["optimizer"]["args"]["lr"]
    assert from_cli("-c", str(write(tmp_path, config)), "--lr", "0.05")["optimizer"]["args"]["lr"] == 0.05


def _namespace(**kwargs) -> argparse.Namespace:
    defaults = dict(config=None, resume=None, run_id=None, overrides=[], lr=None, bs=None)
    return argparse.Namespace(**{**defaults, **kwargs})


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint file whose config has epochs 5, lr 0.5, batch size 32."""
    config = with_defaults(tiny_config(tmp_path / "saved", epochs=5))
    config["optimizer"]["args"]["lr"] = 0.5
    config["data_loader"]["args"]["batch_size"] = 32
    path = tmp_path / "checkpoint-epoch1.pth"
    torch.save({"state_dict": {}, "config": config, "epoch": 1}, path)
    return path


def test_precedence_checkpoint_then_file_then_options_then_overrides(tmp_path, checkpoint):
    changes = write(tmp_path, {"trainer": {"epochs": 7}, "optimizer": {"args": {"lr": 0.3}}}, "changes.json")
    layers = [
        (dict(resume=str(checkpoint)), (5, 0.5, 32)),
        (dict(resume=str(checkpoint), config=str(changes)), (7, 0.3, 32)),
        (dict(resume=str(checkpoint), config=str(changes), lr=0.2, bs=16), (7, 0.2, 16)),
        (dict(resume=str(checkpoint), config=str(changes), lr=0.2, bs=16,
              overrides=["optimizer.args.lr=0.1", "trainer.epochs=9"]), (9, 0.1, 16)),
    ]
    for args, (epochs, lr, batch_size) in layers:
        config, loaded, _ = load_config(_namespace(**args))
        assert (config["trainer"]["epochs"], config["optimizer"]["args"]["lr"],
                config["data_loader"]["args"]["batch_size"]) == (epochs, lr, batch_size), args
        # nested keys the -c file does not name are kept from the checkpoint
        assert config["optimizer"]["args"]["amsgrad"] is True and config["data_loader"]["args"]["shuffle"] is True
        assert config.resume == checkpoint and loaded["epoch"] == 1
    assert list(tmp_path.glob("saved")) == []  # nothing created


def test_resume_through_the_command_line(tmp_path, checkpoint):
    args = train.build_parser(train.OPTIONS).parse_intermixed_args(["-r", str(checkpoint), "--lr", "0.25",
                                                                    "trainer.epochs=6"])
    config, loaded, _ = load_config(args)
    assert config["trainer"]["epochs"] == 6 and config["optimizer"]["args"]["lr"] == 0.25
    assert loaded["config"]["optimizer"]["args"]["lr"] == 0.5


def test_the_config_object_holds_plain_data_only(tmp_path, checkpoint):
    torch.save({**torch.load(checkpoint, weights_only=True), "state_dict": {"w": torch.ones(3)}}, checkpoint)
    config, loaded, _ = load_config(_namespace(resume=str(checkpoint)))
    assert isinstance(loaded["state_dict"]["w"], torch.Tensor)  # the entry point has the tensors ...

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(plain(k) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool, Path))
    assert plain(vars(config)), vars(config)  # ... the config object does not


def test_a_null_seed_in_the_c_file_keeps_the_seed_the_run_chose(tmp_path, checkpoint):
    """--resume auto merges the run's -c file each start: its "seed": null must not draw a new seed."""
    seed = torch.load(checkpoint, weights_only=True)["config"]["seed"]
    assert seed is not None
    changes = write(tmp_path, {"seed": None}, "null_seed.json")
    assert load_config(_namespace(resume=str(checkpoint), config=str(changes)))[0]["seed"] == seed
    assert load_config(_namespace(resume=str(checkpoint), config=str(changes), overrides=["seed=5"]))[0]["seed"] == 5


def test_resume_with_another_section_type_takes_only_its_new_args(tmp_path, checkpoint):
    changes = write(tmp_path, {"optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}},
                               "lr_scheduler": {"args": {"gamma": 0.9}}}, "sgd.json")
    config = load_config(_namespace(resume=str(checkpoint), config=str(changes)))[0]
    assert (config["optimizer"]["type"], config["optimizer"]["args"]) == ("SGD", {"lr": 0.01, "momentum": 0.9})  # no amsgrad
    assert config["lr_scheduler"]["args"] == {"step_size": 10, "gamma": 0.9}  # same type: merged
    assert merge_changes({"loss": {"type": "a", "args": {"x": 1}}}, {"loss": {"type": "b"}}) == {
        "loss": {"type": "b", "args": {}}}


def test_resume_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint .*nope\.pth not found"):
        load_config(_namespace(resume=str(tmp_path / "nope.pth")))
    torch.save({"state_dict": {}}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"partial\.pth is not a checkpoint of this template: it lacks config, epoch"):
        load_config(_namespace(resume=str(tmp_path / "partial.pth")))
    with pytest.raises(UserError, match=r"no config given: add -c config\.json"):
        load_config(_namespace())


# ---- validation: every problem at once (the bad config is in conftest.py) ----

def test_validation_reports_every_problem_at_once_and_builds_nothing(tmp_path):
    path = write(tmp_path, _bad_config(tmp_path))
    with pytest.raises(UserError) as info:
        from_cli("-c", str(path))
    problems = info.value.problems
    for expected in BAD_CONFIG_PROBLEMS:
        assert sum(expected in p for p in problems) == 1, (expected, problems)
    assert len(problems) == len(BAD_CONFIG_PROBLEMS), problems
    assert list(tmp_path.iterdir()) == [path]  # no run directory, no data directory


def test_unknown_optimizer_type_is_reported_with_the_rest(tmp_path):
    config = tiny_config(tmp_path / "saved")
    config["optimizer"]["type"] = "Adamm"
    config["lr_scheduler"]["type"] = "StepLr"  # a unique case-insensitive match is accepted
    config["loss"] = {"type": "cros_entropy", "args": {}}
    config["trainer"].update(epochs=0, verbosity=5, tensorboard="yes")
    with pytest.raises(UserError) as info:
        ConfigParser(config)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert problems[0] == "config key 'trainer.tensorboard' must be true or false, got 'yes'"
    assert re.fullmatch(r"optimizer\.type: unknown optimizer 'Adamm'\. Did you mean 'Adam'( or '\w+')*\? "
                        r"List them all with: python train\.py --list optimizer", problems[1])
    assert re.fullmatch(r"loss\.type: unknown loss 'cros_entropy'\. Did you mean 'cross_entropy'( or '\w+')*\? "
                        r"List them all with: python train\.py --list loss", problems[2])
    assert problems[3:] == ["trainer.epochs must be at least 1, got 0", "trainer.verbosity must be 0, 1 or 2, got 5"]


def test_loss_and_metrics_as_objects(tmp_path):
    config = tiny_config(tmp_path / "saved")
    config["loss"] = {"type": "CrossEntropyLoss", "args": {"label_smoothing": 0.1}}
    config["metrics"] = [{"type": "top_k_acc", "args": {"k": 1}, "name": "top1"}, "accuracy"]
    parser = ConfigParser(config)
    assert isinstance(parser.build_loss(), torch.nn.CrossEntropyLoss) and parser.build_loss().label_smoothing == 0.1
    metrics = parser.build_metrics()
    assert list(metrics) == ["top1", "accuracy"] and metrics["top1"].keywords == {"k": 1}
    config["loss"] = {"type": "cross_entropy", "args": {"label_smoothing": "x"}, "weight": 1}
    config["metrics"] = [{"type": "top_k_acc", "args": {"kk": 1}}]
    with pytest.raises(UserError) as info:
        ConfigParser(config)
    assert info.value.problems == [
        "loss: unknown key(s) ['weight']; allowed: type, args, name",
        "metrics.0.args.kk: top_k_acc has no argument 'kk'. Did you mean 'k'?",
    ]


def test_a_library_refusing_a_value_is_a_user_error(tmp_path):
    config = tiny_config(tmp_path / "saved")
    config["optimizer"]["args"]["betas"] = []  # torch's Adam raises an IndexError
    config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.1}}  # needs total_steps at run time
    parser = ConfigParser(config)
    model = parser.init_obj("arch", ARCHS)
    with pytest.raises(UserError, match=r"^optimizer\.args: Adam refused .*'betas': \[\].*: list index out of range$"):
        parser.init_obj("optimizer", OPTIMIZERS, model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"lr_scheduler\.args: OneCycleLR refused \{'max_lr': 0\.1\}: .*total_steps"):
        parser.init_obj("lr_scheduler", LR_SCHEDULERS, sgd)
    # the user's own class keeps its traceback
    mine = Registry("arch")

    @mine.register
    class Broken(torch.nn.Module):
        def __init__(self, channels=4):
            raise ValueError("a bug in user code")

    parser.config["arch"]["type"] = "Broken"
    with pytest.raises(ValueError, match="a bug in user code"):
        parser.init_obj("arch", mine)


# ---- seed and run directories ----

def test_seed_null_is_drawn_recorded_and_written(tmp_path):
    parser = ConfigParser(tiny_config(tmp_path / "saved") | {"seed": None}, run_id="s")
    seed = parser["seed"]
    assert type(seed) is int and 0 <= seed < 2**31
    dirs = parser.make_run_dirs()
    assert dirs.checkpoint_dir == tmp_path / "saved" / "models" / "Digits_CNN" / "s"
    assert dirs.log_dir == tmp_path / "saved" / "log" / "Digits_CNN" / "s" and dirs.log_dir.is_dir()
    assert json.loads((dirs.checkpoint_dir / "config.json").read_text()) == parser.config
    assert parser.run_dirs == dirs


def test_an_explicit_run_id_must_be_new(tmp_path):
    config = tiny_config(tmp_path / "saved")
    ConfigParser(config, run_id="exp").make_run_dirs()
    with pytest.raises(UserError, match=r"run directory .*exp already exists; resume it with -r .*exp \(or --resume "
                                        r"auto\) or choose another --run-id"):
        ConfigParser(config, run_id="exp").make_run_dirs()


def test_reuse_run_dir_starts_in_a_run_directory_that_exists(tmp_path):
    """--resume auto's fresh start: the directory --run-id names may exist (a start killed before its checkpoint)."""
    config = tiny_config(tmp_path / "saved")
    first = ConfigParser(config, run_id="exp").make_run_dirs()
    (first.checkpoint_dir / "kept.txt").write_text("x")
    again = ConfigParser(config, run_id="exp", reuse_run_dir=True)
    assert again.named_run_dirs() == first
    assert again.make_run_dirs() == first and (first.checkpoint_dir / "kept.txt").read_text() == "x"


def test_timestamp_run_ids_are_unique_within_one_second(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 1, 2, 3, 4, 5)

    monkeypatch.setattr("config.parser.datetime", Frozen)
    config = tiny_config(tmp_path / "saved")
    first, second = (ConfigParser(config).make_run_dirs() for _ in range(2))
    assert first.checkpoint_dir.name == "0102_030405" and second.checkpoint_dir.name == "0102_030405_1"
    assert second.log_dir.name == "0102_030405_1"
    monkeypatch.undo()
    a, b = (ConfigParser(config).make_run_dirs() for _ in range(2))  # real clock, as fast as it goes
    assert a.checkpoint_dir != b.checkpoint_dir and a.checkpoint_dir.is_dir() and b.checkpoint_dir.is_dir()


def test_resumed_run_reuses_its_directories(tmp_path, checkpoint):
    run = tmp_path / "saved" / "models" / "Digits_CNN" / "r1"
    run.mkdir(parents=True)
    moved = run / checkpoint.name
    checkpoint.rename(moved)
    dirs = from_cli("-r", str(run)).make_run_dirs()
    assert dirs.checkpoint_dir == run and dirs.log_dir == tmp_path / "saved" / "log" / "Digits_CNN" / "r1"


# ---- files and values that used to escape as tracebacks: one line each ----

def run_train(capsys, *argv: str) -> tuple[int, list[str]]:
    """train.py's exit status and stderr lines for argv, run in-process as the CLI runs it."""
    status = run_cli(train.main, list(argv))
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", r"is not UTF-8 text \(byte 0xff at offset 0\); save it as UTF-8"),
    (b"", r"is empty; write a JSON object in it"),
    (b"  \n", r"is empty; write a JSON object in it"),
    (b"[" * 100_000 + b"]" * 100_000, r"is nested too deeply for a config .*; flatten it"),
    (b'{"extra": {"x": ' + b"[" * 900 + b"]" * 900 + b"}}", r"is nested too deeply for a config"),
    (b"null", r"must hold a JSON object \{\.\.\.\}, not NoneType"),
])
def test_a_config_file_that_is_not_a_json_object_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    status, lines = run_train(capsys, "-c", str(path))
    assert status == 2 and len(lines) == 1 and re.search(f"^error: config file {re.escape(str(path))} {message}",
                                                         lines[0]), lines


def test_a_directory_given_as_the_config_names_the_fix(tmp_path, capsys):
    status, lines = run_train(capsys, "-c", str(tmp_path))
    assert status == 2 and lines == [f"error: config file {tmp_path} is a directory; give a JSON file with -c, "
                                     f"e.g. {tmp_path / 'config.json'}"]


def test_nan_and_infinity_are_refused_wherever_a_number_is_used_but_extra(tmp_path, capsys):
    config = tiny_config(tmp_path / "saved")
    config["optimizer"]["args"]["lr"] = float("nan")
    config["extra"] = {"anything": float("inf")}  # free-form: never validated
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))  # json writes NaN and Infinity literals
    status, lines = run_train(capsys, "-c", str(path), "trainer.clip_grad_norm=-Infinity")
    assert status == 2 and sorted(lines) == [
        "error: config key 'optimizer.args.lr' is NaN: NaN and Infinity are not numbers a config can use; "
        f"write a finite number ({path} line 1)",
        "error: config key 'trainer.clip_grad_norm' is -Infinity: NaN and Infinity are not numbers a config can "
        "use; write a finite number"]


def test_the_arguments_the_template_knows_are_checked_for_range(tmp_path, capsys):
    path = write(tmp_path, tiny_config(tmp_path / "saved"))
    status, lines = run_train(capsys, "-c", str(path), "--bs", "0", "data_loader.args.num_workers=-1",
                              "optimizer.args.lr=-0.1")
    assert status == 2 and lines == ["error: data_loader.args.batch_size must be at least 1, got 0",
                                     "error: data_loader.args.num_workers must be at least 0, got -1",
                                     "error: optimizer.args.lr must be at least 0, got -0.1"]
    assert not (tmp_path / "saved").exists()


def test_a_model_too_large_to_allocate_is_one_line_naming_the_section(tmp_path, capsys):
    path = write(tmp_path, tiny_config(tmp_path / "saved"))
    # The first layer's weights alone (9e15 floats, 36 PB) are more than any address space holds: the allocation
    # fails at once. (With 1e8 channels the first layer's 3.6 GB were allocated and initialised, seconds, before
    # the second layer failed.)
    status, lines = run_train(capsys, "-c", str(path), "arch.args.channels=1000000000000000", "--dry-run")
    assert status == 2 and len(lines) == 1, lines
    assert re.fullmatch(r"error: arch\.args: building DigitsModel with \{'channels': 1000000000000000\} failed to "
                        r"allocate memory \(.*\); use smaller sizes", lines[0])


def test_an_error_in_the_users_own_class_keeps_its_traceback(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            raise IndexError("a bug in the model's code")

    registry = Registry("arch")
    registry.register(Broken)
    parser = ConfigParser(tiny_config(tmp_path / "saved"))
    parser.config["arch"] = {"type": "Broken", "args": {}}
    with pytest.raises(IndexError, match="a bug in the model's code"):
        parser.init_obj("arch", registry)
