"""config/sources.py and the sources ConfigParser keeps: every value's source (a file and line, the checkpoint, an
option, an override, a default) through the precedence files < options < overrides, problems that name the file and
line of their key, and the --print-config text."""
from __future__ import annotations

import json

import pytest

import train
from config.sources import DEFAULT, leaves, located, paths_of, render, replaced, settle
from conftest import tiny_config
from parse_config import ConfigParser
from run import load_config
from utils.errors import UserError

CONFIG = {"name": "x", "trainer": {"epochs": 2, "ema": None}, "metrics": ["a", {"type": "b"}], "extra": {}}


def test_paths_and_leaves():
    assert paths_of(CONFIG) == ["name", "trainer", "trainer.epochs", "trainer.ema", "metrics", "metrics.0",
                                "metrics.1", "metrics.1.type", "extra"]
    assert leaves(CONFIG) == {"name": "x", "trainer.epochs": 2, "trainer.ema": None, "metrics": ["a", {"type": "b"}],
                              "extra": {}}


def test_a_value_set_whole_takes_what_was_under_it_and_settle_drops_what_is_gone():
    sources = {"trainer": "f line 1", "trainer.epochs": "f line 2", "trainer.old": "f line 3"}
    config = {"trainer": {"epochs": 2, "new": {"a": 1}}}
    sources = replaced(sources, "trainer.new", "override +trainer.new={...}", config)
    assert settle(sources, config) == {"trainer": "f line 1", "trainer.epochs": "f line 2",
                                       "trainer.new": "override +trainer.new={...}",
                                       "trainer.new.a": "override +trainer.new={...}"}
    assert settle({}, {"seed": 1}) == {"seed": DEFAULT}


def test_a_problem_names_the_file_and_line_of_its_key_or_its_nearest_section():
    sources = {"trainer": "c.yaml line 3", "trainer.epochs": "c.yaml line 4", "metrics.1": "c.yaml line 9",
               "seed": "override seed=x", "loss": DEFAULT}
    assert located(["config key 'trainer.epochs' must be an integer, got 'x'",
                    "config key 'trainer.monitr' is not known. Did you mean 'trainer.monitor'?",
                    "metrics.1.args.k: top_k_acc has no argument 'k'",
                    "data_loader.args.transforms[0].type: no transform 'X'",
                    "config key 'seed' must be an integer, got 'x'",
                    "loss: unknown loss 'y'"], sources) == [
        "config key 'trainer.epochs' must be an integer, got 'x' (c.yaml line 4)",
        "config key 'trainer.monitr' is not known. Did you mean 'trainer.monitor'? (c.yaml line 3)",
        "metrics.1.args.k: top_k_acc has no argument 'k' (c.yaml line 9)",
        "data_loader.args.transforms[0].type: no transform 'X'",  # no source known: left alone
        "config key 'seed' must be an integer, got 'x'",  # typed on the command line: the message names it
        "loss: unknown loss 'y'"]


def test_render_is_one_override_line_per_value_with_its_source():
    lines = render(CONFIG, {"name": "c.yaml line 1", "trainer.epochs": "override trainer.epochs=2"}).splitlines()
    assert [line.split("  # ") for line in lines] == [
        ['name="x"' + " " * 20, "c.yaml line 1"], ["trainer.epochs=2" + " " * 12, "override trainer.epochs=2"],
        ["trainer.ema=null" + " " * 12, "default"], ['metrics=["a", {"type": "b"}]', "default"],
        ["extra={}" + " " * 20, "default"]]


# ---- ConfigParser: the sources of a config read from files, options and overrides

@pytest.fixture
def files(tmp_path):
    """A YAML base with the trainer and optimizer, the tiny config's other sections in JSON, listing it."""
    config = tiny_config(tmp_path / "saved")
    trainer, optimizer = config.pop("trainer"), config.pop("optimizer")
    (tmp_path / "base.yaml").write_text(
        f"trainer:\n  epochs: {trainer['epochs']}\n  save_dir: {trainer['save_dir']}\n  verbosity: 0\n"
        f"  monitor: min val_loss\noptimizer:\n  type: Adam\n  args:\n    lr: 2e-3\n    amsgrad: true\n")
    (tmp_path / "exp.json").write_text(json.dumps({"_base_": "base.yaml", **config}, indent=4))
    return tmp_path / "base.yaml", tmp_path / "exp.json"


def parse(*argv: str) -> ConfigParser:
    return load_config(train.build_parser(train.OPTIONS).parse_intermixed_args(list(argv)), train.OPTIONS)[0]


def test_every_value_has_its_source_through_files_options_and_overrides(files, tmp_path):
    base, exp = files
    late = tmp_path / "late.yaml"
    late.write_text("trainer:\n  epochs: 4\n")
    config = parse("-c", str(exp), "-c", str(late), "--lr", "0.1", "trainer.epochs=3", "+extra.note={\"a\": 1}",
                   "lr_scheduler={\"type\": \"StepLR\", \"args\": {\"step_size\": 1}}")
    assert config["optimizer"]["args"] == {"lr": 0.1, "amsgrad": True} and config["trainer"]["epochs"] == 3
    sources = config.sources
    assert sources["optimizer.args.amsgrad"] == f"{base} line 10"
    assert sources["optimizer.args.lr"] == "option --lr"
    assert sources["trainer.epochs"] == "override trainer.epochs=3"
    assert sources["trainer.verbosity"] == f"{base} line 4"
    assert sources["arch.type"] == f"{exp} line 7"
    assert sources["extra.note.a"] == "override +extra.note={\"a\": 1}"
    assert sources["lr_scheduler.args.step_size"].startswith("override lr_scheduler=")
    assert sources["lr_scheduler.interval"] == sources["trainer.log_step"] == DEFAULT  # filled in, not set
    assert set(sources) == set(paths_of(config.config))


def test_a_problem_in_a_yaml_file_names_its_line(files):
    base, exp = files
    base.write_text(base.read_text().replace("epochs: 2", "epochs: two").replace("verbosity: 0", "verbosty: 0"))
    with pytest.raises(UserError) as raised:
        parse("-c", str(exp))
    assert sorted(raised.value.problems) == [
        f"config key 'trainer.epochs' must be an integer, got 'two' ({base} line 2)",
        f"config key 'trainer.verbosty' is not known. Did you mean 'trainer.verbosity'? ({base} line 4)"]


def test_resumed_values_come_from_the_checkpoint_unless_a_file_changes_them(files, tmp_path):
    base, exp = files
    saved = ConfigParser.from_args(parse_args("-c", str(exp))).config
    changes = tmp_path / "more.yaml"
    changes.write_text("trainer:\n  epochs: 5\n")
    args = parse_args("-c", str(changes), "-r", "x.pth")
    config = ConfigParser.from_args(args, train.OPTIONS, resume="x.pth", checkpoint_config=saved)
    assert config["trainer"]["epochs"] == 5 and config.sources["trainer.epochs"] == f"{changes} line 2"
    assert config.sources["arch.type"] == "checkpoint x.pth"


def test_a_null_seed_is_drawn_and_says_so(files):
    _, exp = files
    config = parse("-c", str(exp), "seed=null")
    assert isinstance(config["seed"], int) and config.sources["seed"] == "drawn at random (seed was null)"


def test_a_config_given_as_a_dict_has_no_sources(tmp_path):
    assert ConfigParser(tiny_config(tmp_path)).sources is None


def parse_args(*argv: str):
    return train.build_parser(train.OPTIONS).parse_intermixed_args(list(argv))
