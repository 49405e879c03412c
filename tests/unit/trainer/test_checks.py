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
                cls: type = Trainer, metrics: dict | None = None, config: dict | None = None) -> Trainer:
    loader = BaseDataLoader(TensorDataset(x, y), 4, False, 0, 0)
    return cls(model, loss, metrics or {}, torch.optim.SGD(model.parameters(), lr=0.1), TrainerSettings(epochs=1),
               data_loader=loader, config=config)


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
                            "(its arch.args)")  # a trainer built without a config: no arch.type to ask


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


# ---- the metrics and the loss against the first batch's output


def test_a_torchmetrics_metric_for_other_classes_is_one_line_naming_it_and_the_fix():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    metrics = {"accuracy": MulticlassAccuracy(num_classes=5), "f1": MulticlassF1Score(num_classes=3)}
    trainer = trainer_for(nn.Linear(5, 5), torch.randn(8, 5), torch.randint(0, 5, (8,)), metrics=metrics)
    with pytest.raises(UserError) as info:
        check_first_batch(trainer)
    assert info.value.problems == ["metrics.1 (f1) counts 3 classes but arch Linear gives 5 class scores; set "
                                   "metrics.1.args.num_classes to 5"]


def test_a_class_metric_on_targets_that_are_not_classes_is_named():
    from torchmetrics.classification import MulticlassAccuracy

    x = torch.randn(8, 5)
    trainer = trainer_for(nn.Linear(5, 5), x, x.clone(), loss=nn.functional.mse_loss,
                          metrics={"acc": MulticlassAccuracy(num_classes=5)})
    with pytest.raises(UserError, match=r"^metrics.0 \(acc\) counts classes \(num_classes 5\), but the targets of the "
                                        r"first batch are 4x5 float32 values, not class indices"):
        check_first_batch(trainer)


def test_a_metric_that_cannot_take_the_output_is_named_with_the_library_message():
    def first_column(output, target):
        return (output[:, 7] > 0).float().mean()  # an index the 3 classes do not have

    trainer = trainer_for(nn.Linear(5, 3), torch.randn(8, 5), torch.randint(0, 3, (8,)),
                          metrics={"accuracy": lambda o, t: (o.argmax(1) == t).float().mean(), "col": first_column})
    with pytest.raises(UserError, match=r"^metrics.1 \(col\) cannot take arch Linear's output \(4x3 float32\) and the "
                                        r"targets \(4 int64\) of the first batch: index 7 is out of bounds"):
        check_first_batch(trainer)


class _Ends(nn.Module):
    """A linear layer ending in softmax, log_softmax or nothing."""

    def __init__(self, end=None):
        super().__init__()
        self.linear, self.end = nn.Linear(5, 4), end

    def forward(self, x):
        x = self.linear(x) + 3  # positive scores
        return x if self.end is None else self.end(x, dim=1)


@pytest.mark.parametrize("loss", [nn.functional.nll_loss, nn.NLLLoss()])
def test_nll_loss_on_logits_or_probabilities_is_an_error_naming_the_fix(loss):
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    with pytest.raises(UserError, match=r"takes log-probabilities, but arch _Ends's outputs on the first batch are "
                                        r"scores with positive values .*use \"loss\": \"cross_entropy\" \(it takes "
                                        r"logits\), or end the model with log_softmax"):
        check_first_batch(trainer_for(_Ends(), x, y, loss=loss))
    with pytest.raises(UserError, match=r"are probabilities \(each row sums to 1\).*end the model with log_softmax "
                                        r"instead of softmax"):
        check_first_batch(trainer_for(_Ends(torch.softmax), x, y, loss=loss))
    check_first_batch(trainer_for(_Ends(torch.log_softmax), x, y, loss=loss))


def test_cross_entropy_on_probabilities_is_a_warning_and_on_log_probabilities_nothing(caplog):
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
    check_first_batch(trainer_for(_Ends(torch.softmax), x, y))
    assert "takes logits and applies log_softmax itself" in caplog.text and "remove the model's final softmax" \
        in caplog.text
    caplog.clear()
    for end in (None, torch.log_softmax):  # log_softmax of log-probabilities changes nothing
        check_first_batch(trainer_for(_Ends(end), x, y))
    assert caplog.text == ""


@pytest.mark.parametrize("values, kind", [
    (torch.log_softmax(torch.randn(4, 3), 1), "log-probabilities"),
    (torch.softmax(torch.randn(4, 3), 1), "probabilities"),
    (-torch.rand(4, 3) - 1, "not normalised"),
    (torch.randn(4, 3) + 5, "scores"),
    (torch.randn(4, 1), "unknown"),
])
def test_output_kind(values, kind):
    from trainer.checks import output_kind

    assert output_kind(values).startswith(kind)


@pytest.mark.parametrize("arch, expected", [
    ("resnet18", "or the model 3 input channels (arch.args.in_channels=3)"),
    ("CNN", "or the model 3 input channels (arch.args.input=3)"),
    ("DigitsModel", "or use a model that takes 3 channels (arch DigitsModel has no argument for its input channels)"),
])
def test_the_channel_hint_names_the_argument_of_the_model_in_use(arch, expected):
    import model  # noqa: F401  (registers the architectures)

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(UserError) as info:
        check_first_batch(trainer_for(net, torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)),
                                      config={"arch": {"type": arch, "args": {}}}))
    assert str(info.value).endswith(expected)
