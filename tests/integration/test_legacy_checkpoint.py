"""Checkpoints written before named parts (format 1, in tests/fixtures/legacy_checkpoint) still resume and test."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import test as test_script
import train
from conftest import ROOT
from utils.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint
from utils.errors import UserError

FIXTURE = ROOT / "tests" / "fixtures" / "legacy_checkpoint"


@pytest.fixture
def legacy_run(tmp_path):
    """A copy of the fixture: resuming writes into the checkpoint's directory."""
    return shutil.copytree(FIXTURE, tmp_path / "legacy")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint-epoch1.pth", "checkpoint-step15.pth"])
def test_a_format_1_checkpoint_resumes_to_the_weights_its_own_run_reached(legacy_run, name):
    assert FORMAT not in torch.load(legacy_run / name, weights_only=True)
    train.main(["-r", str(legacy_run / name)])
    resumed = load_checkpoint(legacy_run / "checkpoint-epoch2.pth")
    assert resumed[FORMAT] == FORMAT_VERSION and resumed["epoch"] == 2 and resumed["global_step"] == 20
    expected = torch.load(legacy_run / "straight_epoch2_state_dict.pth", weights_only=True)
    assert set(resumed["state_dict"]) == set(expected)
    for key, value in expected.items():  # bit-exact on the torch that wrote it; a tolerance for later versions
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)


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
