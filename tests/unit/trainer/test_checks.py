"""Tests for trainer/checks.py: the first batch runs through the model and the loss before training, and a
mismatch is one error naming the shapes, the failing layer and the fix."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from base import BaseDataLoader
from config import TrainerSettings
from trainer import Trainer
from trainer.checks import check_first_batch
from utils.errors import UserError


def trainer_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=nn.functional.cross_entropy,
                cls: type = Trainer) -> Trainer:
    loader = BaseDataLoader(TensorDataset(x, y), 4, False, 0, 0)
    return cls(model, loss, {}, torch.optim.SGD(model.parameters(), lr=0.1), TrainerSettings(epochs=1),
               data_loader=loader)


def test_a_batch_that_fits_passes_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    trainer = trainer_for(model, torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    check_first_batch(trainer)
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_images_with_other_channels_name_the_layer_and_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(UserError) as info:
        check_first_batch(trainer_for(model, torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))))
    message = str(info.value)
    assert message.startswith("arch Sequential cannot take the data loader's first batch (inputs 4x1x8x8 float32, "
                              "targets 4 int64): layer 0 Conv2d says: ")
    assert message.endswith("It takes 3 channels but the images have 1: give the data 3 channels "
                            "(data_loader.args.mode=\"RGB\" for image files) or the model 1 input channels "
                            "(e.g. arch.args.input)")


def test_images_of_another_size_name_the_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UserError, match=r"layer 1 Linear says: .* It takes 64 features but gets 144: the data's size "
                                        r"does not fit the model"):
        check_first_batch(trainer_for(model, torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))))


@pytest.mark.parametrize("targets, expected", [
    (torch.tensor([0, 1, 5, 2]), "a target is 5 but the model gives 3 class scores (targets must be 0 to 2); set the "
                                 "model's number of classes (e.g. arch.args.num_classes) to at least 6"),
    (torch.tensor([0, -3, 1, 2]), "a target is -3: class targets must be 0 to 2"),
])
def test_targets_outside_the_classes_are_caught_before_the_loss_runs(targets, expected):
    calls = []
    loss = lambda output, target: calls.append(1) or nn.functional.cross_entropy(output, target)  # noqa: E731
    with pytest.raises(UserError, match=r"do not fit: " + expected.replace("(", r"\(").replace(")", r"\)")):
        check_first_batch(trainer_for(nn.Linear(5, 3), torch.randn(4, 5), targets, loss=loss))
    assert calls == []  # on a GPU the loss would have hit a device-side assert


def test_ignored_targets_pass():
    check_first_batch(trainer_for(nn.Linear(5, 3), torch.randn(4, 5), torch.tensor([0, -100, 2, 1])))


def test_a_loss_that_cannot_take_the_output_is_named():
    with pytest.raises(UserError, match=r"^the data loader's first batch \(inputs 4x5 float32, targets 4x2 float32\) "
                                        r"failed outside arch Linear's layers, in the loss or the trainer's step: "
                                        r".*Check that the loss fits"):
        check_first_batch(trainer_for(nn.Linear(5, 3), torch.randn(4, 5), torch.randn(4, 2),
                                      loss=nn.functional.mse_loss))


def test_a_custom_eval_step_is_what_runs_and_its_targets_are_its_own_business():
    class Reconstruct(Trainer):
        def eval_step(self, data, target):
            output = self.model(data)
            return nn.functional.mse_loss(output, data), output  # the labels are not class targets here

    x, labels = torch.randn(4, 5), torch.tensor([0, 9, 9, 9])
    check_first_batch(trainer_for(nn.Linear(5, 5), x, labels, cls=Reconstruct))
    with pytest.raises(UserError, match="a target is 9 but the model gives 5 class scores"):
        check_first_batch(trainer_for(nn.Linear(5, 5), x, labels))  # the default step: cross_entropy would fail

    class Reshaping(Trainer):
        def eval_step(self, data, target):
            return self.model(data.view(-1, 7)), None  # sized for other data than this: 4x5 cannot be viewed so

    with pytest.raises(UserError, match=r"^the data loader's first batch .* failed outside .*: shape '\[-1, 7\]' is invalid for input of size "
                                        r"20 \(at tests/unit/trainer/test_checks.py:\d+\)"):
        check_first_batch(trainer_for(nn.Linear(5, 5), x, labels, cls=Reshaping))

    class Buggy(Trainer):
        def eval_step(self, data, target):
            return self.model(data) + None, None  # a TypeError in the trainer's own code: a bug

    with pytest.raises(TypeError):  # keeps its traceback
        check_first_batch(trainer_for(nn.Linear(5, 5), x, labels, cls=Buggy))


def test_dry_run_reports_a_mismatch_before_anything_is_written(tmp_path, capsys):
    import json

    import train
    from conftest import tiny_config
    from utils.errors import run_cli

    config = tiny_config(tmp_path / "saved")
    config["arch"]["args"]["num_classes"] = 4
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    for extra in (["--dry-run"], []):
        assert run_cli(train.main, ["-c", str(path), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: arch DigitsModel and the data loader's first batch (inputs 128x1x8x8 "
                                  "float32, targets 128 int64) do not fit: a target is 9 but the model gives 4")
    assert not (tmp_path / "saved").exists()
