"""utils/weights.py: initial weights from files in the formats users have (torch.save, torchvision's cache,
safetensors, our checkpoints, Lightning-style), fitted to the model and reported."""
from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from model.model import DigitsModel
from utils.errors import UserError
from utils.weights import adapt_input_conv, load_weights, read_weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache (TORCH_HOME): torchvision's weights files go to <it>/hub/checkpoints/."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def imagenet_squeezenet(cache) -> dict:
    """squeezenet1_1's ImageNet weights file as torchvision names and stores it (made here: nothing downloads)."""
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(num_classes=1000).state_dict()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache / "squeezenet1_1-b8a52dc0.pth")
    return state


def test_a_torchvision_weights_name_is_read_from_the_cache_and_a_new_head_is_skipped(torch_home):
    saved = imagenet_squeezenet(torch_home)
    for name in ("DEFAULT", "IMAGENET1K_V1"):
        state, source = read_weights(name, "squeezenet1_1")
        assert "SqueezeNet1_1_Weights.IMAGENET1K_V1" in source
        model = torchvision.models.squeezenet1_1(num_classes=10)
        report = load_weights(model, state, source)
        assert report.mismatched == ["classifier.1.weight [1000, 512, 1, 1] in the file, [10, 512, 1, 1] in the model",
                                     "classifier.1.bias [1000] in the file, [10] in the model"]
        assert report.missing == ["classifier.1.weight", "classifier.1.bias"] and not report.unexpected
        assert len(report.loaded) == len(saved) - 2
        assert torch.equal(model.features[0].weight, saved["features.0.weight"])
        assert "2 (shape differs; left as initialised): classifier.1.weight" in report.block()


def test_a_missing_torchvision_file_names_the_file_and_where_to_put_it(torch_home):
    with pytest.raises(UserError) as e:
        read_weights("DEFAULT", "squeezenet1_1")
    message = str(e.value)
    assert f"{torch_home / 'squeezenet1_1-b8a52dc0.pth'} is missing (nothing is downloaded)" in message
    assert "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth" in message


def test_an_unknown_weights_name_lists_the_known_ones(torch_home):
    with pytest.raises(UserError, match="squeezenet1_1 has no such weights; known: DEFAULT, IMAGENET1K_V1"):
        read_weights("IMAGENET1K_V9", "squeezenet1_1")
    with pytest.raises(UserError, match="arch.type 'DigitsModel' is not one; give a weights file"):
        read_weights("DEFAULT", "DigitsModel")
    with pytest.raises(UserError, match="arch.weights: nope/w.pth is not a file or a directory"):
        read_weights("nope/w.pth", "DigitsModel")


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_rgb_kernels_of_the_first_convolution_are_fitted_to_the_input_channels(torch_home, channels):
    saved = imagenet_squeezenet(torch_home)
    model = torchvision.models.squeezenet1_1(num_classes=1000)
    old = model.features[0]
    model.features[0] = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride)
    report = load_weights(model, *read_weights("DEFAULT", "squeezenet1_1"))
    assert report.adapted == [f"features.0.weight (3 -> {channels} input channels)"] and report.fits
    assert torch.equal(model.features[0].weight, adapt_input_conv(saved["features.0.weight"], channels))
    rgb = saved["features.0.weight"]
    if channels == 1:  # a gray image gives the response its RGB copy gave
        gray = torch.rand(1, 1, 9, 9)
        assert torch.allclose(nn.functional.conv2d(gray, model.features[0].weight),
                              nn.functional.conv2d(gray.expand(1, 3, 9, 9), rgb), atol=1e-5)
    if channels == 5:  # R, G, B, R, G scaled by 3/5
        assert torch.allclose(model.features[0].weight, torch.cat([rgb, rgb[:, :2]], 1) * 0.6)


def test_safetensors_our_checkpoints_run_directories_and_wrapped_names(tmp_path):
    torch.manual_seed(1)
    source = DigitsModel().state_dict()
    save_file(source, tmp_path / "w.safetensors")
    torch.save({f"module._orig_mod.{k}": v for k, v in source.items()}, tmp_path / "ddp_compiled.pth")
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state_dict": source, "config": {}, "epoch": 3}, run / "model_best.pth")
    torch.save({"state_dict": {k: v + 1 for k, v in source.items()}, "config": {}, "epoch": 4},
               run / "checkpoint-epoch4.pth")
    for where, expected_source in (("w.safetensors", "w.safetensors"), ("ddp_compiled.pth", "ddp_compiled.pth"),
                                   ("run", "run/model_best.pth")):  # a run's best weights, not its newest
        model = DigitsModel()
        state, described = read_weights(tmp_path / where)
        assert described == str(tmp_path / expected_source)
        assert load_weights(model, state, described).fits
        assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


def test_a_checkpoint_with_an_average_gives_its_averaged_weights_as_test_py_evaluates(tmp_path):
    torch.manual_seed(1)
    model_weights = DigitsModel().state_dict()
    averaged = {k: v + 0.5 for k, v in model_weights.items()}
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state_dict": model_weights, "ema": {"state_dict": averaged, "updates": 7}, "config": {}, "epoch": 2},
               run / "model_best.pth")
    torch.save({"state_dict": model_weights, "config": {}, "epoch": 1}, tmp_path / "no_average.pth")
    for where, expected in (("run", averaged), ("run/model_best.pth", averaged), ("no_average.pth", model_weights)):
        state, _ = read_weights(tmp_path / where)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items()), where


def test_a_key_map_renames_prefixes_and_strict_refuses_what_does_not_fit(tmp_path):
    source = DigitsModel().state_dict()
    torch.save({"state_dict": {f"net.backbone.{k}": v for k, v in source.items()}, "epoch": 1},  # Lightning-style
               tmp_path / "lightning.ckpt")
    state, described = read_weights(tmp_path / "lightning.ckpt")
    assert load_weights(DigitsModel(), state, described, key_map={"net.backbone.": ""}).fits
    with pytest.raises(UserError) as e:
        load_weights(DigitsModel(num_classes=5), state, described, strict=True, key_map={"net.backbone.": ""})
    assert e.value.problems == [
        f"arch.weights_strict: {described}: shape differs for head.5.weight [10, 128] in the file, [5, 128] in "
        f"the model, head.5.bias [10] in the file, [5] in the model",
        f"arch.weights_strict: {described}: missing from the file: head.5.weight, head.5.bias",
        "arch.weights_strict: set it to false to load what fits (the others are reported)"]
    report = load_weights(DigitsModel(), state, described)  # no key map: nothing fits, all reported
    assert not report.loaded and len(report.unexpected) == len(source) == len(report.missing)


def test_files_without_a_state_dict_are_clear_errors(tmp_path):
    torch.save([1, 2], tmp_path / "list.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="list.pth holds no state dict"):
        read_weights(tmp_path / "list.pth")
    with pytest.raises(UserError, match="broken.safetensors is not a readable .safetensors file"):
        read_weights(tmp_path / "broken.safetensors")
    with pytest.raises(UserError, match="broken.pth is not a file torch.save wrote, or it is corrupt; give an intact file"):
        read_weights(tmp_path / "broken.pth")
