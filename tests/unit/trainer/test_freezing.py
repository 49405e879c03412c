"""trainer.freeze and trainer.unfreeze_at_epoch (trainer/parts.py Freezing) in the Trainer, and the learning rates of
named parameter groups (utils/schedule.py's LRSchedule.learning_rates, set_lr, as the trainer holds it)."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from base import BaseTrainer
from base.base_trainer import TrainState
from config import TrainerSettings
from tiny_trainers import assert_same_state, build, make_trainer, resumed, sigterm_at
from trainer.parts import Freezing, Loop
from utils.checkpoint import load_checkpoint
from utils.distributed import rewrap
from utils.errors import UserError
from utils.interrupt import StopTraining
from utils.schedule import LRSchedule

FROZEN = ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")


def with_norm() -> nn.Module:
    """0: Linear, 1: BatchNorm (its running statistics move in training mode), 3: the head."""
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def frozen_trainer(tmp_path, **settings):
    adam = functools.partial(torch.optim.Adam, weight_decay=0.1)
    return make_trainer(tmp_path, model=with_norm, optimizer=adam, lr=0.05, freeze=["0.*", "1.*"], **settings)


def weights(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_frozen_parameters_and_their_norm_statistics_stay_bit_identical_with_adam_and_weight_decay(tmp_path):
    trainer = frozen_trainer(tmp_path, epochs=2)
    before = weights(trainer)
    trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in FROZEN)
    assert not torch.equal(before["3.weight"], after["3.weight"])
    assert len(trainer.optimizer.param_groups[0]["params"]) == 6  # the optimizer holds every parameter
    assert len(trainer.optimizer.state) == 2  # and took steps for the head's only
    assert [p.requires_grad for p in trainer.model.parameters()] == [False] * 4 + [True] * 2


def test_frozen_norm_layers_train_in_eval_mode_and_unfreeze_at_the_given_epoch(tmp_path):
    trainer = frozen_trainer(tmp_path, epochs=3, unfreeze_at_epoch=3)
    seen = {}
    original = trainer.train_step

    def train_step(data, target):
        if trainer.model.training:  # not validation
            seen[trainer.state.epoch + 1] = (trainer.model[1].training, trainer.model[0].weight.requires_grad)
        return original(data, target)
    trainer.train_step = train_step
    before = weights(trainer)
    trainer.train()
    assert seen == {1: (False, False), 2: (False, False), 3: (True, True)}
    epoch2 = load_checkpoint(tmp_path / "checkpoint-epoch2.pth")["state_dict"]
    epoch3 = load_checkpoint(tmp_path / "checkpoint-epoch3.pth")["state_dict"]
    assert all(torch.equal(before[k], epoch2[k]) for k in FROZEN)
    assert not any(torch.equal(epoch2[k], epoch3[k]) for k in FROZEN if k != "1.num_batches_tracked")
    assert epoch3["1.num_batches_tracked"] == 4  # the statistics moved in epoch 3 only (4 batches)


def test_freezing_logs_one_line_when_freezing_and_one_when_unfreezing(tmp_path, caplog):
    caplog.set_level("INFO", logger="trainer")
    frozen_trainer(tmp_path, epochs=2, unfreeze_at_epoch=2).train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch")]
    assert lines == ["Epoch 1: freezing 48 parameters in 4 tensors (trainer.freeze) and 1 norm layers' statistics "
                     "until epoch 2.", "Epoch 2: unfreezing 48 parameters in 4 tensors (trainer.unfreeze_at_epoch)."]


@pytest.mark.parametrize("stop", ["in epoch 1", "after epoch 1", "in epoch 2", "after epoch 2"])
def test_resume_across_the_unfreeze_epoch_is_bit_identical(tmp_path, stop):
    settings = {"freeze": ["0.*"], "unfreeze_at_epoch": 2}
    straight = build(tmp_path / "straight", **settings)
    straight.train()
    moment, epoch = stop.split(" epoch ")
    if moment == "in":
        split = build(tmp_path / "split", **settings)
        sigterm_at(split, 6 * int(epoch) - 4)  # 6 steps per epoch: the epoch's second step
        with pytest.raises(StopTraining):
            split.train()
    else:
        split = build(tmp_path / "split", epochs=int(epoch), **settings)
        split.train()
    checkpoint = split.outputs.checkpointer.latest
    again = resumed(tmp_path / "split", checkpoint, **settings)
    again.train()
    assert_same_state(straight, again)


def test_a_freeze_pattern_that_matches_nothing_names_the_nearest_parameters(tmp_path):
    with pytest.raises(UserError, match=r"^trainer.freeze: '0\.weigth' matches no parameter of Sequential\. "
                                        r"Did you mean '0\.weight' or"):
        make_trainer(tmp_path, model=with_norm, freeze=["0.weigth"])


def test_freezing_every_parameter_is_an_error(tmp_path):
    with pytest.raises(UserError, match=r"freezes every trainable parameter of Linear, so nothing would train"):
        make_trainer(tmp_path, freeze=["*"])


def test_parameters_the_model_froze_itself_stay_frozen_after_unfreezing():
    model = with_norm()
    model[0].bias.requires_grad_(False)
    freezing = Freezing(model, ["0.*"], unfreeze_at=2)
    freezing.on_epoch_start(Loop(TrainState(), model, epoch=1))
    assert not model[0].weight.requires_grad
    freezing.on_epoch_start(Loop(TrainState(), model, epoch=2))
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_a_norm_layer_without_parameters_is_frozen_by_its_buffers_names():
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 1))
    model.train()
    Freezing(model, ["0.*", "1.*"], unfreeze_at=None).on_epoch_start(Loop(TrainState(), model, epoch=1))
    assert not model[1].training and model[2].training


def test_rewrap_leaves_a_model_that_is_not_ddp_as_it_is():
    model = nn.Linear(2, 2)
    assert rewrap(model) is model


def test_rewrap_builds_a_new_ddp_around_the_same_module_that_syncs_the_parameters_that_train_now(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        old = nn.parallel.DistributedDataParallel(module)
        module[0].requires_grad_(False)
        new = rewrap(old)
        assert new is not old and new.module is module
        new(torch.randn(4, 2)).sum().backward()  # the old wrapper would wait for the frozen layer's gradients
        assert module[0].weight.grad is None and module[1].weight.grad is not None
    finally:
        dist.destroy_process_group()


# -- learning rates of named groups

def grouped_trainer(scheduler=None) -> BaseTrainer:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "name": "default"},
                                 {"params": model[1].weight, "name": "head", "lr": 0.01},
                                 {"params": model[1].bias, "name": "head", "lr": 0.01, "weight_decay": 0.0}], lr=0.1)
    return BaseTrainer(model, None, {}, optimizer, TrainerSettings(epochs=1, monitor="max lr/head"),
                       lr_scheduler=LRSchedule(scheduler(optimizer) if scheduler else None))


def test_learning_rates_are_the_default_groups_and_one_per_other_named_group():
    assert grouped_trainer().schedule.learning_rates() == {"lr": 0.1, "lr/head": 0.01}
    assert make_trainer_rates() == {"lr": 0.1}  # no names: what the log always held


def make_trainer_rates() -> dict:
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.ones(2))]}, {"params": [nn.Parameter(torch.ones(1))]}],
                                lr=0.1)
    return BaseTrainer(nn.Linear(1, 1), None, {}, optimizer, TrainerSettings(epochs=1)).schedule.learning_rates()


def test_set_lr_gives_the_default_group_the_new_rate_and_keeps_the_other_groups_ratio_to_it():
    trainer = grouped_trainer(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer.schedule.set_lr(0.05)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.05, 0.005, 0.005])
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05
    assert trainer.schedule.scheduler.base_lrs == pytest.approx([0.05, 0.005, 0.005])
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.05, 0.005, 0.005])
