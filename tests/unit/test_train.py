"""Tests for train.py's helpers, without training: the --list choices, and placing the model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import run
import train
from config import TrainerSettings
from utils.distributed import Dist
from utils.errors import UserError
from utils.registry import REGISTRIES


def test_every_registry_kind_is_a_list_choice_of_train_py():
    choices = next(a.choices for a in train.build_parser([])._actions if a.dest == "list")
    assert sorted(choices) == sorted(REGISTRIES)


def test_sync_batchnorm_on_the_cpu_is_a_clear_error():
    settings = TrainerSettings(epochs=1, sync_batchnorm=True)
    with pytest.raises(UserError, match="trainer.sync_batchnorm needs GPUs"):
        run.place_model(nn.BatchNorm1d(3), torch.device("cpu"), [], settings, Dist(0, 2, 0))
