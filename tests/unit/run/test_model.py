"""Tests for run/model.py: the model built from a config, placed on its device, rebuilt from a checkpoint."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from config import TrainerSettings
from conftest import tiny_config
from parse_config import ConfigParser
from run import build_model, place_model, trained_model
from utils.distributed import SINGLE, Dist
from utils.errors import UserError


def test_sync_batchnorm_on_the_cpu_is_a_clear_error():
    settings = TrainerSettings(epochs=1, sync_batchnorm=True)
    with pytest.raises(UserError, match="trainer.sync_batchnorm needs GPUs"):
        place_model(nn.BatchNorm1d(3), torch.device("cpu"), [], settings, Dist(0, 2, 0))


def test_a_checkpoint_alone_gives_its_model_with_the_weights_to_predict_with(tmp_path):
    config = ConfigParser(tiny_config(tmp_path))
    model = place_model(build_model(config), torch.device("cpu"), [], config.settings(), SINGLE)
    average = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint = {"config": config.config, "state_dict": model.state_dict(), "ema": {"state_dict": average}}
    rebuilt_config, rebuilt = trained_model(checkpoint, torch.device("cpu"))
    assert rebuilt_config.config == config.config and not rebuilt.training
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in average.items())  # the EMA average, when kept
    del checkpoint["ema"]
    _, plain = trained_model(checkpoint, torch.device("cpu"))
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in model.state_dict().items())
