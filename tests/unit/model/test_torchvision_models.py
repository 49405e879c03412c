"""Tests for model/torchvision_models.py: torchvision's classification models by name in arch.type."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

import train
from conftest import read_metrics, run_dir, tiny_config
from model.torchvision_models import BUILDER_DEFAULT, TorchvisionModel, first_conv, provider
from parse_config import validate, with_defaults
from utils.errors import UserError, run_cli
from utils.registry import ARCHS

pytestmark = pytest.mark.usefixtures("restore_logging")


def build(name: str, **args) -> nn.Module:
    torch.manual_seed(0)
    return ARCHS.get(name, "arch.type")(**args)


def train_one_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of a forward in training mode, after which one SGD step changed the weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = model.train()(x)
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return out


MODELS = [
    ("resnet18", {}, 32), ("efficientnet_b0", {}, 32), ("mobilenet_v3_small", {}, 32), ("squeezenet1_0", {}, 32),
    ("regnet_y_400mf", {}, 32), ("densenet121", {}, 32), ("googlenet", {}, 32),
    pytest.param("convnext_tiny", {}, 32, marks=pytest.mark.slow),
    pytest.param("vit_b_16", {"image_size": 32}, 32, marks=pytest.mark.slow),  # patch 16: a 2x2 grid
]


@pytest.mark.parametrize("name, args, size", MODELS)
def test_a_torchvision_model_builds_by_name_and_trains(name, args, size):
    model = build(name, num_classes=10, **args)
    out = train_one_step(model, torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, conv_name", [("resnet18", "conv1"), ("mobilenet_v3_small", "features.0.0")])
@pytest.mark.parametrize("in_channels", [1, 5])
def test_in_channels_replaces_the_first_conv_keeping_its_settings(name, conv_name, in_channels):
    with torch.device("meta"):  # the shapes without the work
        reference = first_conv(build(name, num_classes=10))
    model = build(name, num_classes=10, in_channels=in_channels)
    found, conv = first_conv(model)
    assert found == reference[0] == conv_name and conv.in_channels == in_channels
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(conv, attr) == getattr(reference[1], attr), attr
    assert (conv.bias is None) == (reference[1].bias is None)
    out = train_one_step(model, torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 10)


def test_first_conv_of_a_model_without_one_is_a_user_error():
    assert first_conv(nn.Sequential(nn.Flatten(), nn.Conv2d(2, 3, 1)))[0] == "1"
    with pytest.raises(UserError, match=r"Sequential has no nn\.Conv2d layer.*in_channels"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_the_provider_offers_the_classification_models_only():
    names = provider()
    assert {"resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny", "vit_b_16",
            "swin_t", "squeezenet1_0", "regnet_y_400mf", "densenet121"} <= set(names)
    assert not {"fasterrcnn_resnet50_fpn", "deeplabv3_resnet50", "r3d_18", "raft_small",
                "quantized_resnet18"} & set(names)
    assert all(isinstance(b, TorchvisionModel) and b.__name__ == n for n, b in names.items())


def test_signatures_hold_in_channels_and_the_json_valued_keyword_arguments():
    resnet = inspect.signature(ARCHS.find("resnet18")).parameters
    assert list(resnet)[:4] == ["in_channels", "num_classes", "zero_init_residual", "groups"]
    assert resnet["in_channels"].default == 3 and resnet["num_classes"].default == 1000
    assert not {"block", "layers", "norm_layer"} & set(resnet)  # the builder's, or not JSON
    vit = inspect.signature(ARCHS.find("vit_b_16")).parameters
    assert vit["image_size"].default is BUILDER_DEFAULT and not {"patch_size", "norm_layer"} & set(vit)
    assert "growth_rate" not in inspect.signature(ARCHS.find("densenet121")).parameters  # fixed by the builder


# The tables of arguments the builders set or default themselves: checked against torchvision on the meta device.
@pytest.mark.parametrize("name, arg, value", [("vit_b_16", "image_size", 32), ("efficientnet_b0", "dropout", 0.1),
                                              ("convnext_tiny", "stochastic_depth_prob", 0.3)])
def test_arguments_the_builder_defaults_are_taken(name, arg, value):
    with torch.device("meta"):
        ARCHS.find(name)(**{arg: value})


@pytest.mark.parametrize("name, arg, value", [("densenet121", "growth_rate", 16), ("squeezenet1_1", "version", "1_0"),
                                              ("swin_t", "stochastic_depth_prob", 0.3)])
def test_arguments_the_builder_fixes_are_refused_by_torchvision(name, arg, value):
    import torchvision.models

    with torch.device("meta"), pytest.raises(TypeError, match="multiple values"):
        torchvision.models.get_model(name, weights=None, **{arg: value})


def test_auxiliary_heads_are_off_so_the_output_is_one_tensor():
    with torch.device("meta"):
        model = ARCHS.find("googlenet")(num_classes=10)
    assert model.aux_logits is False


def test_list_arch_puts_torchvision_after_the_users_and_the_zoos_names(capsys):
    train.main(["--list", "arch"])
    listed = capsys.readouterr().out.splitlines()
    ours = list(ARCHS._entries)
    assert listed[:len(ours)] == ours and {"DigitsModel", "CNN", "ResNet"} <= set(ours)
    rest = listed[len(ours):]
    assert rest == sorted(rest) and {"resnet18", "vit_b_16", "mobilenet_v3_small"} <= set(rest)


def test_a_registered_name_wins_over_torchvision():
    assert ARCHS.find("ResNet").__module__ == "model.builders" and ARCHS.find("resnet18").__module__ == \
        "model.torchvision_models"
    assert ARCHS.from_library(ARCHS.find("resnet18")) and not ARCHS.from_library(ARCHS.find("ResNet"))


def resnet_config(tmp_path, **args) -> dict:
    config = tiny_config(tmp_path / "saved", epochs=1, len_epoch=2)  # 2 batches: resnet18 is slow on the CPU
    config["arch"] = {"type": "resnet18", "args": {"num_classes": 10, "in_channels": 1, **args}}
    config["loss"], config["metrics"] = "cross_entropy", ["accuracy"]
    return config


def test_a_misspelled_argument_is_found_before_building(tmp_path):
    problems = validate(with_defaults(resnet_config(tmp_path, num_clases=10, in_channels=0)))
    assert problems == [
        "arch.args.num_clases: resnet18 has no argument 'num_clases'. Did you mean 'num_classes'?",
        "arch.args.in_channels must be at least 1, got 0",
    ]
    assert validate(with_defaults(resnet_config(tmp_path, zero_init_residual="yes"))) == [
        "arch.args.zero_init_residual: resnet18 expects true or false (default False), got 'yes'"]


def test_a_value_torchvision_refuses_is_one_error_line(tmp_path, capsys):
    config = resnet_config(tmp_path)
    config["arch"] = {"type": "vit_b_16", "args": {"image_size": 30, "num_classes": 10}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_cli(train.main, ["-c", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: arch.args: vit_b_16 refused {'image_size': 30, 'num_classes': 10}: "
        "Input shape indivisible by patch size!"]


@pytest.mark.slow  # over 4 s: a subprocess or a real model
def test_train_resnet18_on_the_one_channel_8x8_digits_for_an_epoch(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(resnet_config(tmp_path)))
    train.main(["-c", str(path), "--run-id", "tv"])
    _, log_dir = run_dir(tmp_path / "saved", "tv")
    rows = read_metrics(log_dir)
    assert [r["epoch"] for r in rows] == [1] and 0 <= rows[0]["val_accuracy"] <= 1
