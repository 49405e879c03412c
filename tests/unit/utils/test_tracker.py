"""Tests for utils/tracker.py: epoch metrics weighted by sample count, metrics that return floats, and the guard
that names the first non-finite loss."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import read_metrics
from tiny_trainers import PoisonedDigits, build, make_trainer, poisoned, resumed
from trainer import evaluate
from utils.checkpoint import find_checkpoint
from utils.errors import UserError
from utils.tracker import MetricTracker


def test_epoch_metrics_are_sample_weighted():
    # 5 samples in batches of 2, 2, 1: the mean of batch means (0.5, 0.5, 1.0) would be 2/3.
    data = TensorDataset(torch.zeros(5, 1), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    loader = DataLoader(data, batch_size=2)
    model = nn.Linear(1, 1)
    mean_target = lambda output, target: target.mean()  # noqa: E731
    step = lambda data, target: (target.mean(), model(data))  # noqa: E731
    result = evaluate(model, loader, step, {"m": mean_target}, torch.device("cpu"))
    assert result["m"] == pytest.approx(3 / 5) and result["loss"] == pytest.approx(3 / 5)


def test_metrics_returning_python_floats_still_work(tmp_path):
    # The original template's metrics call .item() and return floats.
    def old_style(output, target):
        return float((output - target).abs().mean().item())

    make_trainer(tmp_path, epochs=1, metrics={"mae": old_style}).train()
    assert read_metrics(tmp_path)[0]["mae"] > 0 and "val_mae" in read_metrics(tmp_path)[0]


def test_nonfinite_loss_stops_naming_the_step_and_saves_nothing_after_it(tmp_path):
    trainer = poisoned(tmp_path, save_every_steps=100)
    with pytest.raises(UserError, match=r"NaN or infinite at epoch 1, step \d+ .*newest valid checkpoint is none"):
        trainer.train()
    assert not list(tmp_path.glob("*.pth"))


def test_nonfinite_loss_found_at_a_log_step_names_the_first_bad_step(tmp_path):
    trainer = poisoned(tmp_path, log_step=1)
    positions = trainer.data_loader.sampler
    positions.set_epoch(1)
    bad_step = list(positions).index(5) // 16 + 1
    with pytest.raises(UserError, match=rf"epoch 1, step {bad_step} "):
        trainer.train()


def test_nonfinite_loss_after_a_checkpoint_leaves_that_checkpoint_newest(tmp_path):
    build(tmp_path, epochs=1).train()  # epoch 1 is clean and saved
    trainer = resumed(tmp_path, tmp_path / "checkpoint-epoch1.pth", epochs=2)
    trainer.data_loader.dataset.__class__ = PoisonedDigits
    with pytest.raises(UserError, match=r"epoch 2, .*newest valid checkpoint is .*checkpoint-epoch1.pth"):
        trainer.train()
    assert find_checkpoint(tmp_path)[0].name == "checkpoint-epoch1.pth"


def test_a_checkpoint_of_several_ranks_gives_each_rank_its_own_sums_back():
    """A DDP step checkpoint holds each rank's partial sums beside their total (by_rank): a resume with as many ranks
    goes on with its own, so that later sums are added in the same order; otherwise the main rank takes the total."""
    ranks = [MetricTracker(), MetricTracker()]
    for rank, (loss, n) in zip(ranks, ((torch.tensor(0.5), 3), (torch.tensor(0.25), 5))):
        rank.update("loss", loss, n)
    own = [r.state_dict() for r in ranks]
    state = {"sums": {"loss": own[0]["sums"]["loss"] + own[1]["sums"]["loss"]}, "counts": {"loss": 8},
             "by_rank": {"sums": torch.stack([o["sums"]["loss"].reshape(1) for o in own]),
                         "counts": torch.tensor([[3.0], [5.0]], dtype=torch.float64)}}
    assert MetricTracker.holds_each_rank(state, 2) and not MetricTracker.holds_each_rank(state, 1)
    assert not MetricTracker.holds_each_rank({"sums": {}, "counts": {}}, 2)
    again = MetricTracker()
    again.load_state_dict(state, rank=1)
    assert again.running("loss").item() == 0.25 and again.state_dict()["counts"] == {"loss": 5}
    total = MetricTracker()
    total.load_state_dict(state)
    assert total.running("loss").item() == pytest.approx(2.75 / 8)
