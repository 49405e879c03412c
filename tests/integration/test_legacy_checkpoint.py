"""Checkpoints written before named parts (format 1, in tests/fixtures/legacy_checkpoint), and before trainer.ema was a
settings object (its section a plain dict in the saved config), still resume and test."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import test as test_script
import train
from conftest import ROOT
from data_loader.data_loaders import DigitsDataLoader
from parse_config import ConfigParser, EMASettings
from run import build_model, build_trainer
from utils.checkpoint import EMA, FORMAT, FORMAT_VERSION, MODEL, load_checkpoint
from utils.errors import UserError

FIXTURE = ROOT / "tests" / "fixtures" / "legacy_checkpoint"


@pytest.fixture
def legacy_run(tmp_path):
    """A copy of the fixture: resuming writes into the checkpoint's directory."""
    return shutil.copytree(FIXTURE, tmp_path / "legacy")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint-epoch1.pth", "checkpoint-step15.pth"])
def test_a_format_1_checkpoint_resumes_to_the_weights_its_own_run_reached(legacy_run, tmp_path, name):
    assert FORMAT not in torch.load(legacy_run / name, weights_only=True)
    train.main(["-r", str(legacy_run / name)])
    resumed = load_checkpoint(legacy_run / "checkpoint-epoch2.pth")
    assert resumed[FORMAT] == FORMAT_VERSION and resumed["epoch"] == 2 and resumed["global_step"] == 20
    # Exact on any machine: the format-1 file resumes to what the same state saved in today's format resumes to.
    today = shutil.copytree(FIXTURE, tmp_path / "today")
    trainer = build_trainer(ConfigParser(resumed["config"]), torch.device("cpu"))
    trainer.load_state_dict(load_checkpoint(today / name))
    torch.save(trainer.state_dict(), today / name)
    train.main(["-r", str(today / name)])
    again = load_checkpoint(today / "checkpoint-epoch2.pth")
    assert all(torch.equal(again["state_dict"][k], v) for k, v in resumed["state_dict"].items())
    assert all(torch.equal(a, b) for a, b in zip(optimizer_tensors(again), optimizer_tensors(resumed), strict=True))
    # And the weights the old run reached (on the machine and torch that wrote the fixture). Elsewhere the sums
    # round otherwise, and the biases that a BatchNorm normalises away (and its running mean, which follows them)
    # take no gradient worth the name, so Adam turns rounding into drift there: those are compared through what
    # the model computes with batch statistics, which does not depend on them.
    expected = torch.load(legacy_run / "straight_epoch2_state_dict.pth", weights_only=True)
    assert set(resumed["state_dict"]) == set(expected)
    normalised_away = {"features.0.bias", "features.1.running_mean", "features.3.bias", "features.4.running_mean"}
    for key, value in expected.items():
        if key not in normalised_away:
            torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.testing.assert_close(*(batch_statistics_output(resumed["config"], weights)
                                 for weights in (resumed["state_dict"], expected)), rtol=1e-4, atol=1e-5)


def optimizer_tensors(checkpoint: dict) -> list[torch.Tensor]:
    return [t for state in checkpoint["optimizer"]["state"].values() for t in state.values()
            if isinstance(t, torch.Tensor)]


def batch_statistics_output(config: dict, weights: dict) -> torch.Tensor:
    """The model's output for the digits test split with BatchNorm on the batch's statistics and no dropout."""
    model = build_model(ConfigParser(config))
    model.load_state_dict(weights)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    x, _ = next(iter(DigitsDataLoader(batch_size=400, shuffle=False, validation_split=0, training=False)))
    with torch.no_grad():
        return model(x)


def test_test_py_on_a_format_1_checkpoint_prints_what_it_printed_before(legacy_run, tmp_path):
    results = test_script.main(["-r", str(legacy_run / "checkpoint-epoch1.pth"), "--out", str(tmp_path / "r.json")])
    before = json.loads((FIXTURE / "test_results_epoch1.json").read_text())
    assert results["n_samples"] == before["n_samples"] == 360 and results["epoch"] == 1
    for key in ("loss", "accuracy", "top_k_acc"):
        assert results[key] == pytest.approx(before[key], rel=1e-5), key


def test_a_checkpoint_from_a_newer_format_is_refused_with_the_fix(legacy_run):
    state = torch.load(legacy_run / "checkpoint-epoch1.pth", weights_only=True)
    torch.save({**state, FORMAT: FORMAT_VERSION + 1}, legacy_run / "future.pth")
    with pytest.raises(UserError, match=rf"has format {FORMAT_VERSION + 1}, newer than this template reads "
                                        rf"\({FORMAT_VERSION}\); update"):
        load_checkpoint(legacy_run / "future.pth")


def with_an_ema_dict(run, ema: dict):
    """The fixture's epoch-1 checkpoint as a run with trainer.ema wrote it before trainer.ema was a settings object:
    the section as the user wrote it (the defaults not filled in) and the average as a part (here: the weights)."""
    state = torch.load(run / "checkpoint-epoch1.pth", weights_only=True)
    state["config"]["trainer"]["ema"] = ema
    state.update({FORMAT: FORMAT_VERSION, EMA: {MODEL: dict(state[MODEL]), "updates": 7}})
    torch.save(state, run / "ema-epoch1.pth")
    return run / "ema-epoch1.pth"


def test_a_checkpoint_whose_config_holds_ema_as_a_plain_dict_still_loads_and_tests(legacy_run, tmp_path):
    path = with_an_ema_dict(legacy_run, {"decay": 0.9})
    config = ConfigParser(load_checkpoint(path)["config"])
    assert config["trainer"]["ema"] == {"decay": 0.9, "warmup_steps": 0, "every": 1}
    assert config.settings().ema == EMASettings(decay=0.9)
    results = test_script.main(["-r", str(path), "--out", str(tmp_path / "r.json")])  # the average's weights
    before = json.loads((FIXTURE / "test_results_epoch1.json").read_text())
    for key in ("loss", "accuracy", "top_k_acc"):
        assert results[key] == pytest.approx(before[key], rel=1e-5), key


@pytest.mark.slow
def test_a_checkpoint_whose_config_holds_ema_as_a_plain_dict_resumes_its_average(legacy_run):
    train.main(["-r", str(with_an_ema_dict(legacy_run, {"every": 2}))])
    resumed = load_checkpoint(legacy_run / "checkpoint-epoch2.pth")
    assert resumed[EMA]["updates"] == 7 + 5  # the saved count, then every 2nd of epoch 2's 10 steps
    assert resumed["config"]["trainer"]["ema"] == {"decay": 0.999, "warmup_steps": 0, "every": 2}
    assert json.loads((legacy_run / "config.json").read_text())["trainer"]["ema"]["every"] == 2
