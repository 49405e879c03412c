"""Tests for run/model.py: the model built from a config, placed on its device, rebuilt from a checkpoint."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from config import TrainerSettings
from conftest import tiny_config
from parse_config import ConfigParser
from run import build_model, place_model, trained_model
from run.model import checkpoint_activations
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


def _cnn(tmp_path, patterns: list[str]) -> nn.Module:
    """The tiny zoo CNN placed on the CPU with trainer.activation_checkpointing = patterns."""
    config = ConfigParser(tiny_config(tmp_path, activation_checkpointing=patterns))
    torch.manual_seed(0)
    return place_model(build_model(config), torch.device("cpu"), [], config.settings(), SINGLE)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model.train()
    model(torch.randn(8, 1, 8, 8)).logsumexp(1).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients_and_names(tmp_path):
    plain, checkpointed = _cnn(tmp_path, []), _cnn(tmp_path, ["features", "head.*"])
    expected, got = _grads(plain), _grads(checkpointed)
    assert list(got) == list(expected)  # trainer.freeze and optimizer.param_groups see the same names
    assert all(torch.allclose(got[name], grad, rtol=1e-6, atol=1e-7) for name, grad in expected.items())


def test_activation_checkpointing_wraps_the_outermost_modules_it_names_and_recomputes_them():
    model = nn.Sequential(OrderedDict(layer1=nn.Sequential(nn.Linear(4, 4), nn.ReLU()), layer2=nn.Linear(4, 4),
                                      head=nn.Linear(4, 2)))
    assert checkpoint_activations(model, ["layer*", "layer1.0"]) == ["layer1", "layer2"]  # not layer1.0 again
    calls = []
    model.layer1[0].register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(3, 4)).sum().backward()
    assert len(calls) == 2  # run again in the backward pass
    with torch.no_grad():
        model(torch.randn(3, 4))
    assert len(calls) == 3  # nothing recorded, nothing to recompute


def test_a_checkpoint_written_with_activation_checkpointing_loads_without_it_and_back(tmp_path):
    checkpointed, plain = _cnn(tmp_path, ["features.*"]), _cnn(tmp_path, [])
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    config = ConfigParser(tiny_config(tmp_path, activation_checkpointing=["features.*"]))
    saved = {k: v + 1 if v.is_floating_point() else v for k, v in checkpointed.state_dict().items()}
    _, rebuilt = trained_model({"config": config.config, "state_dict": saved}, torch.device("cpu"))  # predict.py
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in saved.items())
    checkpointed.load_state_dict(plain.state_dict())  # resume into a model with it
    assert copy.deepcopy(checkpointed).features[0].forward.args[0].__self__ is not checkpointed.features[0]  # EMA


def test_an_activation_checkpointing_pattern_matching_no_module_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"trainer.activation_checkpointing: 'layer\*' matches no module of .*"
                                        r"'features.*--dry-run"):
        _cnn(tmp_path, ["features", "layer*"])


def test_activation_checkpointing_updates_the_norm_layers_statistics_once(tmp_path):
    plain, checkpointed = _cnn(tmp_path, []), _cnn(tmp_path, ["features"])
    _grads(plain), _grads(checkpointed)
    assert all(torch.equal(v, checkpointed.state_dict()[k]) for k, v in plain.state_dict().items())
