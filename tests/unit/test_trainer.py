"""The epoch loop's semantics, on tiny synthetic data with the Trainer built directly."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from base import BaseDataLoader, BaseTrainer
from conftest import read_metrics
from logger import MetricsFile
from trainer import Trainer, evaluate, loss_step
from utils.checkpoint import Checkpointer, load_checkpoint
from utils.errors import UserError
from utils.monitor import Monitor

N, BATCH = 40, 8  # 5 batches per epoch


def mse(output, target):
    return nn.functional.mse_loss(output, target)


def make_trainer(tmp_path: Path, *, lr: float = 0.1, epochs: int = 3, monitor: str = "min val_loss",
                 patience: int = 0, save_period: int = 1, cls: type = Trainer, scheduler=None,
                 optimizer: type = torch.optim.SGD, **kwargs) -> Trainer:
    torch.manual_seed(0)
    x = torch.randn(N, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    loader = BaseDataLoader(TensorDataset(x, y), BATCH, True, 0.2, 0, seed=0)
    model = nn.Linear(3, 1)
    optimizer = optimizer(model.parameters(), lr=lr)
    lr_scheduler = scheduler(optimizer) if scheduler else None
    return cls(model, mse, {}, optimizer, device=torch.device("cpu"), epochs=epochs,
               data_loader=loader, valid_data_loader=loader.split_validation(), progress=False,
               monitor=Monitor(monitor, patience), checkpointer=Checkpointer(tmp_path, save_period),
               metrics_file=MetricsFile(tmp_path / "metrics.jsonl"), lr_scheduler=lr_scheduler, **kwargs)




def test_len_epoch_runs_exactly_that_many_batches(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, len_epoch=7)  # 4 training batches per pass: cycles
    seen = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (seen.append(1), original(*a, **k))
    trainer.train()
    assert len(seen) == 21 and trainer.global_step == 21


def test_epoch_without_len_epoch_is_one_pass(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.train()
    assert trainer.global_step == 2 * 4  # 32 training samples in batches of 8


def test_model_best_written_on_every_improvement_and_last_epoch_always_saved(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, save_period=10)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch3.pth", "model_best.pth"]
    best = load_checkpoint(tmp_path / "model_best.pth")
    assert best["epoch"] == 3  # training the linear model improves val_loss every epoch here
    assert best["monitor_best"] == pytest.approx(read_metrics(tmp_path)[-1]["val_loss"])


def test_early_stop_after_exactly_patience_epochs_without_strict_improvement(tmp_path):
    trainer = make_trainer(tmp_path, lr=0.0, epochs=20, patience=3, save_period=100)  # lr 0: val_loss constant
    trainer.train()
    assert [e["epoch"] for e in read_metrics(tmp_path)] == [1, 2, 3, 4]  # best at 1, then 3 equal epochs
    assert trainer.monitor.wait == 3
    # the early-stopped last epoch is checkpointed; model_best.pth holds epoch 1 (ties do not improve)
    assert (tmp_path / "checkpoint-epoch4.pth").is_file()
    assert load_checkpoint(tmp_path / "model_best.pth")["epoch"] == 1


def test_early_stop_zero_never_stops(tmp_path):
    trainer = make_trainer(tmp_path, lr=0.0, epochs=6, patience=0)
    trainer.train()
    assert len(read_metrics(tmp_path)) == 6


def test_monitor_max_and_off(tmp_path):
    monitor = Monitor("max val_accuracy", 2)
    assert [monitor.update({"val_accuracy": v}) for v in (0.5, 0.7, 0.7, 0.6)] == [True, True, False, False]
    assert monitor.best == 0.7 and monitor.should_stop
    off = Monitor("off", 1)
    assert not off.update({"loss": 0.1}) and not off.should_stop


def test_monitor_on_a_key_the_run_never_logs_fails_before_training(tmp_path):
    with pytest.raises(UserError, match=r"trainer.monitor: 'val_acc' is not logged.*val_loss"):
        make_trainer(tmp_path, monitor="max val_acc")


@pytest.mark.parametrize("interval, expected", [("epoch", 0.1 * 0.5**2), ("step", 0.1 * 0.5**8)])
def test_scheduler_steps_per_epoch_or_per_step(tmp_path, interval, expected):
    trainer = make_trainer(tmp_path, epochs=2, scheduler_interval=interval,
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer.train()
    assert trainer.current_lr() == pytest.approx(expected)
    assert read_metrics(tmp_path)[0]["lr"] == pytest.approx(0.1 if interval == "epoch" else 0.1 * 0.5**4)


def test_reduce_on_plateau_receives_the_monitored_value(tmp_path):
    received = []

    class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            received.append(metrics)
            super().step(metrics, *args, **kwargs)

    trainer = make_trainer(tmp_path, lr=0.0, epochs=3, monitor="min val_loss",
                           scheduler=lambda opt: Recording(opt, patience=0))
    trainer.train()
    assert received == [e["val_loss"] for e in read_metrics(tmp_path)]


def test_epoch_metrics_are_sample_weighted():
    # 5 samples in batches of 2, 2, 1: the mean of batch means (0.5, 0.5, 1.0) would be 2/3.
    data = TensorDataset(torch.zeros(5, 1), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    loader = DataLoader(data, batch_size=2)
    model = nn.Linear(1, 1)
    mean_target = lambda output, target: target.mean()  # noqa: E731
    result = evaluate(model, loader, loss_step(model, lambda o, t: t.mean()), {"m": mean_target}, torch.device("cpu"))
    assert result["m"] == pytest.approx(3 / 5) and result["loss"] == pytest.approx(3 / 5)


def test_metrics_returning_python_floats_still_work(tmp_path):
    # The original template's metrics call .item() and return floats.
    def old_style(output, target):
        return float((output - target).abs().mean().item())

    trainer = make_trainer(tmp_path, epochs=1)
    trainer.metric_ftns = {"mae": old_style}
    trainer.train()
    assert read_metrics(tmp_path)[0]["mae"] > 0 and "val_mae" in read_metrics(tmp_path)[0]


def test_no_host_sync_per_step_in_the_training_loop(tmp_path, monkeypatch):
    """Our code reads device values once per log_step and once per epoch, never per batch."""
    root = str(Path(__file__).resolve().parents[2])
    calls = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(root) and "/tests/" not in caller:
                calls.append((name, caller))
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    trainer = make_trainer(tmp_path, epochs=2, len_epoch=12, log_step=5)
    trainer.train()
    # per epoch: 1 read of the training sums, 1 of the validation sums; plus one per log_step (24 // 5 = 4)
    assert len([c for c in calls if "sampler" not in c[1] and "data_loader" not in c[1]]) == 2 * 2 + 4, calls


def test_custom_train_step_is_used_for_the_loss(tmp_path):
    class Penalised(Trainer):
        def train_step(self, data, target):
            loss, output = super().train_step(data, target)
            return loss + 100.0, output  # a constant: same gradients, logged loss shifted

    plain, custom = make_trainer(tmp_path / "a", epochs=1), make_trainer(tmp_path / "b", epochs=1, cls=Penalised)
    for t, d in ((plain, "a"), (custom, "b")):
        (tmp_path / d).mkdir()
        t.train()
    a, b = read_metrics(tmp_path / "a")[0], read_metrics(tmp_path / "b")[0]
    assert b["loss"] == pytest.approx(a["loss"] + 100.0)
    assert b["val_loss"] == pytest.approx(a["val_loss"] + 100.0)  # eval_step defaults to train_step
    assert torch.equal(plain.model.weight, custom.model.weight)


def test_subclassing_base_trainer_with_only_train_epoch(tmp_path):
    class Fixed(BaseTrainer):
        def _train_epoch(self, epoch):
            return {"loss": 1.0 / epoch}

    model = nn.Linear(1, 1)
    trainer = Fixed(model, mse, {}, torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"),
                    epochs=3, monitor=Monitor("min loss"), checkpointer=Checkpointer(tmp_path, 2),
                    metrics_file=MetricsFile(tmp_path / "metrics.jsonl"))
    trainer.train()
    assert [e["loss"] for e in read_metrics(tmp_path)] == [1.0, 0.5, 1.0 / 3]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint-epoch2.pth", "checkpoint-epoch3.pth",
                                                               "model_best.pth"]


def test_checkpoint_holds_plain_data_and_the_unwrapped_model(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.model = nn.DataParallel(trainer.model)  # on the CPU it simply calls the module
    trainer.train()
    ckpt = torch.load(tmp_path / "checkpoint-epoch1.pth", weights_only=True, map_location="cpu")
    assert set(ckpt["state_dict"]) == {"weight", "bias"}
    assert ckpt["arch"] == "Linear" and ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert {"optimizer", "lr_scheduler", "monitor_best", "monitor", "config", "rng"} <= set(ckpt)
    compiled = torch.compile(nn.Linear(3, 1))
    trainer.model = compiled
    assert set(trainer.state_dict()["state_dict"]) == {"weight", "bias"}


def test_load_state_dict_restores_everything_state_dict_saves(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, patience=5,
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint-epoch2.pth")
    fresh = make_trainer(tmp_path / "x", epochs=4, patience=5,
                         scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    fresh.load_state_dict(state)
    assert fresh.start_epoch == 3 and fresh.global_step == trainer.global_step
    assert torch.equal(fresh.model.weight, trainer.model.weight)
    assert fresh.lr_scheduler.state_dict() == trainer.lr_scheduler.state_dict()
    assert fresh.monitor.state_dict() == trainer.monitor.state_dict()
    assert fresh.current_lr() == trainer.current_lr()


@pytest.mark.parametrize("name", ["LBFGS", "SGD", "Adam"])
def test_optimizers_that_reevaluate_the_loss_train_too(tmp_path, name):
    trainer = make_trainer(tmp_path, epochs=2, optimizer=getattr(torch.optim, name))
    calls = []
    step = trainer.train_step
    trainer.train_step = lambda data, target: (calls.append(trainer.model.training), step(data, target))[1]
    trainer.train()
    losses = [e["val_loss"] for e in read_metrics(tmp_path)]
    assert losses[1] < losses[0]
    training_calls = calls.count(True)
    assert training_calls > 8 if name == "LBFGS" else training_calls == 8  # LBFGS re-evaluates; others once
