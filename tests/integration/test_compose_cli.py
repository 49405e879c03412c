"""Composed configs through train.py and tune.py, in-process: a YAML config trains exactly as its JSON twin, a config
made of two bases, a second -c file, an option and an override trains exactly as the same config written out by hand,
--print-config names every value's source and writes nothing, a YAML mistake names its line, a run keeps its sources
and resumes with a YAML change, and the original template's config.json reads as the json module reads it."""
from __future__ import annotations

import json

import pytest

import train
import tune
from conftest import ROOT, read_metrics, run_dir, tiny_config
from parse_config import read_config
from utils.errors import UserError, run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging

SHORT = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.tensorboard=false"]  # seconds

# tiny_config as a user writes YAML: 2e-3 is a number, 0 an integer, true a boolean, data/ a string
TINY_YAML = """\
name: Digits_CNN
n_gpu: 1
seed: 123
arch:
  type: DigitsModel
  args: {{channels: 4}}
data_loader:
  type: DigitsDataLoader
  args:
    data_dir: data/
    batch_size: 128
    shuffle: true
    validation_split: 0.15
    num_workers: 0
optimizer:
  type: Adam
  args: {{lr: 2e-3, weight_decay: 0, amsgrad: true}}
loss: nll_loss
metrics: [accuracy, {{type: top_k_acc, args: {{k: 3}}}}]
lr_scheduler:
  type: StepLR
  args: {{step_size: 10, gamma: 0.5}}
trainer:
  epochs: 2
  save_dir: {save_dir}
  save_period: 1
  verbosity: 0
  monitor: min val_loss
  early_stop: 0
  tensorboard: true
"""


def test_a_yaml_config_trains_exactly_as_its_json_twin(tmp_path):
    save = tmp_path / "saved"
    yaml_file, json_file = tmp_path / "tiny.yaml", tmp_path / "tiny.json"
    yaml_file.write_text(TINY_YAML.format(save_dir=save))
    json_file.write_text(json.dumps(tiny_config(save), indent=4))
    assert read_config(yaml_file) == json.loads(json_file.read_text())
    for run_id, path in (("yaml", yaml_file), ("json", json_file)):
        train.main(["-c", str(path), "--run-id", run_id, "trainer.epochs=1", *SHORT])
    (yaml_dir, yaml_log), (json_dir, json_log) = run_dir(save, "yaml"), run_dir(save, "json")
    assert read_metrics(yaml_log, timing=False) == read_metrics(json_log, timing=False)
    assert len(read_metrics(yaml_log)) == 1
    assert json.loads((yaml_dir / "config.json").read_text()) == json.loads((json_dir / "config.json").read_text())
    assert json.loads((yaml_dir / "config_sources.json").read_text())["optimizer.args.lr"] == f"{yaml_file} line 17"


@pytest.fixture
def composed(tmp_path):
    """(the -c files and arguments of a composed config, the same config written out by hand): two bases (YAML and
    JSON) under the experiment's folder, a second -c file, --lr and an override."""
    save = tmp_path / "saved"
    by_hand = tiny_config(save)
    by_hand["optimizer"] = {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}}
    by_hand["trainer"]["epochs"], by_hand["data_loader"]["args"]["batch_size"] = 1, 96
    (tmp_path / "base").mkdir()
    (tmp_path / "exp").mkdir()
    (tmp_path / "base" / "trainer.yaml").write_text(
        f"seed: 123\nn_gpu: 1\ntrainer:\n  epochs: 5\n  save_dir: {save}\n  save_period: 1\n  verbosity: 0\n"
        f"  monitor: min val_loss\n  early_stop: 0\n  tensorboard: true\n"
        f"optimizer:\n  type: Adam\n  args: {{lr: 2e-3, weight_decay: 0, amsgrad: true}}\n")
    (tmp_path / "exp" / "data.json").write_text(json.dumps({"data_loader": by_hand["data_loader"]}, indent=4))
    (tmp_path / "exp" / "exp.yaml").write_text(
        "_base_: [../base/trainer.yaml, data.json]\nname: Digits_CNN\narch: {type: DigitsModel, args: {channels: 4}}\n"
        "loss: nll_loss\nmetrics: [accuracy, {type: top_k_acc, args: {k: 3}}]\n"
        "lr_scheduler: {type: StepLR, args: {step_size: 10, gamma: 0.5}}\n"
        "optimizer:\n  _delete_: true\n  type: SGD\n  args: {lr: 0.1, momentum: 0.9}\n")
    (tmp_path / "more.json").write_text('{"data_loader": {"args": {"batch_size": 96}}}')
    (tmp_path / "by_hand.json").write_text(json.dumps(by_hand, indent=4))
    args = ["-c", str(tmp_path / "exp" / "exp.yaml"), "-c", str(tmp_path / "more.json"), "--lr", "0.05",
            "trainer.epochs=1"]
    return args, tmp_path / "by_hand.json"


def test_two_bases_a_second_file_an_option_and_an_override_train_as_the_config_written_by_hand(composed, tmp_path):
    args, by_hand = composed
    train.main([*args, "--run-id", "composed", *SHORT])
    train.main(["-c", str(by_hand), "--run-id", "by_hand", *SHORT])
    save = tmp_path / "saved"
    (composed_dir, composed_log), (hand_dir, hand_log) = run_dir(save, "composed"), run_dir(save, "by_hand")
    assert json.loads((composed_dir / "config.json").read_text()) == json.loads((hand_dir / "config.json").read_text())
    assert read_metrics(composed_log, timing=False) == read_metrics(hand_log, timing=False)
    sources = json.loads((composed_dir / "config_sources.json").read_text())
    assert sources["trainer.epochs"] == "override trainer.epochs=1" and sources["optimizer.args.lr"] == "option --lr"
    assert sources["optimizer.args.momentum"] == f"{tmp_path / 'exp' / 'exp.yaml'} line 10"
    assert sources["trainer.save_dir"] == f"{tmp_path / 'base' / 'trainer.yaml'} line 5"
    assert sources["data_loader.args.batch_size"] == f"{tmp_path / 'more.json'} line 1"
    assert sources["trainer.log_step"] == "default"

    # resumed with a YAML change: trained on from the checkpoint, the change's source kept beside the config
    longer = tmp_path / "longer.yaml"
    longer.write_text("# one more epoch\ntrainer:\n  epochs: 2\n")
    train.main(["-r", str(composed_dir), "-c", str(longer), *SHORT])
    assert [row["epoch"] for row in read_metrics(composed_log)] == [1, 2]
    sources = json.loads((composed_dir / "config_sources.json").read_text())
    assert sources["trainer.epochs"] == f"{longer} line 3" and sources["arch.type"].startswith("checkpoint ")


def test_print_config_names_the_source_of_every_value_and_writes_nothing(composed, tmp_path, capsys):
    args, _ = composed
    train.main([*args, "--print-config"])
    lines = capsys.readouterr().out.splitlines()
    printed = dict(line.split("  # ") for line in lines)
    settings = {setting.rstrip(): source for setting, source in printed.items()}
    exp, base = tmp_path / "exp" / "exp.yaml", tmp_path / "base" / "trainer.yaml"
    assert settings["trainer.epochs=1"] == "override trainer.epochs=1"
    assert settings["optimizer.args.lr=0.05"] == "option --lr"
    assert settings['optimizer.type="SGD"'] == f"{exp} line 9"
    assert settings["trainer.verbosity=0"] == f"{base} line 7"
    assert settings['data_loader.type="DigitsDataLoader"'] == f"{tmp_path / 'exp' / 'data.json'} line 3"
    assert settings["data_loader.args.batch_size=96"] == f"{tmp_path / 'more.json'} line 1"
    assert settings['metrics=["accuracy", {"type": "top_k_acc", "args": {"k": 3}}]'] == f"{exp} line 5"
    assert settings["trainer.log_step=50"] == "default"
    assert "optimizer.args.amsgrad=true" not in settings  # _delete_ replaced the base's optimizer
    assert not (tmp_path / "saved").exists()


def test_mistakes_in_a_yaml_file_are_one_line_each_naming_the_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(TINY_YAML.format(save_dir=tmp_path / "saved").replace("epochs: 2", "epochs: two")
                      .replace("lr: 2e-3", "lr: 2e-3, lrr: 1").replace("  verbosity: 0", "  verbosty: 0"))
    assert run_cli(train.main, ["-c", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == [
        f"error: config key 'trainer.epochs' must be an integer, got 'two' ({config} line 24)",
        f"error: config key 'trainer.verbosty' is not known. Did you mean 'trainer.verbosity'? ({config} line 27)",
        f"error: optimizer.args.lrr: Adam has no argument 'lrr'. Did you mean 'lr'? ({config} line 17)"]
    config.write_text("name: x\narch:\n  type: [DigitsModel\n")
    assert run_cli(train.main, ["-c", str(config)]) == 2
    assert capsys.readouterr().err == (f"error: config file {config} is not valid YAML: expected ',' or ']', but got "
                                       f"'<stream end>' at line 4 column 1\n")
    assert not (tmp_path / "saved").exists()


def test_tune_reads_composed_and_yaml_configs(composed, tmp_path):
    args, _ = composed
    space = tmp_path / "space.json"
    space.write_text('{"optimizer.args.lrr": {"float": [0.01, 0.1]}}')
    with pytest.raises(UserError, match="optimizer.args.lrr"):  # checked against the composed config: SGD's lr
        tune.main([*args[:4], "--space", str(space), "--trials", "1"])
    assert not (tmp_path / "saved").exists()


def test_the_original_templates_config_json_reads_as_the_json_module_reads_it():
    text = (ROOT / "config.json").read_text()
    assert read_config(ROOT / "config.json") == json.loads(text) and "_base_" not in text
