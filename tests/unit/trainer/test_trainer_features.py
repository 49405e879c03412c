"""The trainer's optional parts (issue 15): EMA weights, validation every N steps or epochs, batch limits, a time
limit and SIGUSR1, each exercised through a real Trainer on tiny data (tests/tiny_trainers.py: 5 training batches
and 2 validation batches per epoch), resumed bit for bit."""
from __future__ import annotations

import copy
import signal

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from config import EMASettings
from conftest import read_metrics
from tiny_trainers import assert_same_state, build, resumed, sigterm_at
from trainer.ema import EMA, WeightAverage
from trainer.trainer import evaluate
from utils.checkpoint import BEST, find_checkpoint, inference_weights, load_checkpoint
from utils.interrupt import StopTraining
from utils.part import Part

EMA_ON = EMASettings(decay=0.9, warmup_steps=2, every=1)


# ---- EMA ----

def test_the_average_is_torchs_averaged_model_arithmetic():
    """Our update (host-side count, no sync) gives what AveragedModel.update_parameters gives, buffers included."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    ours = WeightAverage(model, decay=0.9, warmup_steps=0, every=1)
    reference = AveragedModel(copy.deepcopy(model), multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 6):
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ours.update(model, step)
        reference.update_parameters(model)
    for (name, a), b in zip(ours.averaged.module.state_dict().items(), reference.module.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b), name
        else:  # a counter (num_batches_tracked) is the model's, not torch's average of integers
            assert torch.equal(a, model.state_dict()[name]), name
    assert int(ours.averaged.n_averaged) == int(reference.n_averaged) == ours.updates == 5


def test_warmup_copies_the_weights_and_every_skips_steps():
    model = nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.5, warmup_steps=2, every=2)
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update(model, step)
        if step == 2:  # the first update, inside the warm-up: a copy
            assert torch.equal(average.averaged.module.weight, model.weight)
    assert average.updates == 2  # steps 2 and 4
    assert not torch.equal(average.averaged.module.weight, model.weight)  # step 4 averaged


def test_the_average_takes_its_numbers_from_the_settings_object():
    model = nn.Linear(2, 1)
    assert type(WeightAverage.from_setting(model, None)) is Part  # off: a part that does nothing
    average = WeightAverage.from_setting(model, EMASettings(decay=0.5, warmup_steps=3, every=2))
    assert (average.warmup_steps, average.every) == (3, 2)
    with torch.no_grad():
        average.averaged.module.weight.zero_()
        model.weight.fill_(1.0)
    average.updates = 1  # past its first update and its warm-up: step 4 averages with decay 0.5
    average.update(model, 4)
    assert torch.allclose(average.averaged.module.weight, torch.full((1, 2), 0.5))


def test_validation_and_model_best_use_the_average_and_resume_is_bit_exact(tmp_path):
    straight = build(tmp_path / "straight", ema=EMA_ON)
    straight.train()
    state = load_checkpoint(tmp_path / "straight" / "checkpoint-epoch3.pth")
    assert set(state[EMA]) == {"state_dict", "updates"} and state[EMA]["updates"] == 15
    assert not torch.equal(state[EMA]["state_dict"]["0.weight"], state["state_dict"]["0.weight"])  # both are kept
    # Validation is the average's: a fresh model holding the averaged weights gives the same numbers (the data's
    # noise drawn alike), the training weights do not; and the trainer's own weights are back in place after it.
    def validation_loss(weights):
        model = copy.deepcopy(straight.model)
        model.load_state_dict(weights)
        step = lambda data, target: (nn.functional.cross_entropy(model(data), target), model(data))  # noqa: E731
        torch.manual_seed(1)
        return evaluate(model, straight.valid_data_loader, step, {}, torch.device("cpu"))["loss"]

    torch.manual_seed(1)
    assert straight._validate(3)["val_loss"] == pytest.approx(validation_loss(inference_weights(state)), abs=1e-6)
    assert validation_loss(state["state_dict"]) != pytest.approx(validation_loss(inference_weights(state)), abs=1e-4)
    assert torch.equal(straight.model[0].weight, state["state_dict"]["0.weight"])
    assert inference_weights(load_checkpoint(tmp_path / "straight" / BEST)).keys() == state["state_dict"].keys()

    interrupted = build(tmp_path / "split", ema=EMA_ON)
    sigterm_at(interrupted, 8)
    with pytest.raises(StopTraining):
        interrupted.train()
    path, _ = find_checkpoint(tmp_path / "split")
    second = resumed(tmp_path / "split", path, ema=EMA_ON)
    second.train()
    assert_same_state(straight, second)
    for key, value in straight.checkpoint_parts()[EMA].state_dict()["state_dict"].items():
        assert torch.equal(value, second.checkpoint_parts()[EMA].state_dict()["state_dict"][key]), key
    assert read_metrics(tmp_path / "straight", timing=False) == read_metrics(tmp_path / "split", timing=False)


def test_the_average_adds_no_host_read_per_step(tmp_path, monkeypatch):
    import test_trainer

    built = []

    def reads(ema):
        original = test_trainer.TrainerSettings

        def settings(**kw):
            built.append(ema)
            return original(**kw, ema=ema)
        monkeypatch.setattr(test_trainer, "TrainerSettings", settings)
        try:
            return len(test_trainer.host_reads(tmp_path / str(ema is None), monkeypatch, epochs=2, steps=10,
                                               log_step=4, in_memory=True))
        finally:
            monkeypatch.setattr(test_trainer, "TrainerSettings", original)
    assert reads(EMASettings(decay=0.9)) == reads(None) and built == [EMASettings(decay=0.9), None]


# ---- validation every N steps, every N epochs; batch limits ----

def test_validation_every_n_steps_writes_a_row_each_and_resumes_bit_exact(tmp_path):
    settings = {"val_every_steps": 2, "monitor": "min val_loss", "early_stop": 0}
    straight = build(tmp_path / "straight", **settings)
    straight.train()
    rows = read_metrics(tmp_path / "straight", timing=False)
    assert [(r["epoch"], r["step"]) for r in rows] == [
        (1, 2), (1, 4), (1, 5), (2, 6), (2, 8), (2, 10), (3, 12), (3, 14), (3, 15)]
    assert all("loss" in r for r in rows if r["step"] % 5 == 0) and "loss" not in rows[0]  # epoch rows: training too
    best = min(rows, key=lambda r: r["val_loss"])
    assert straight.monitor.best == best["val_loss"]
    assert load_checkpoint(tmp_path / "straight" / BEST)["global_step"] == best["step"]

    for stop_step in (3, 4):  # a step after a validation, a step with one
        split = tmp_path / f"split{stop_step}"
        interrupted = build(split, **settings)
        sigterm_at(interrupted, stop_step)
        with pytest.raises(StopTraining):
            interrupted.train()
        resumed(split, find_checkpoint(split)[0], **settings).train()
        assert read_metrics(split, timing=False) == rows
        final = build(tmp_path / "check", **settings)
        final.load_state_dict(load_checkpoint(split / "checkpoint-epoch3.pth"))
        assert_same_state(straight, final)


def test_early_stop_counts_validations(tmp_path):
    trainer = build(tmp_path, epochs=20, val_every_steps=1, monitor="max val_accuracy", early_stop=2,
                    lr_scheduler=None)
    trainer.train()
    rows = read_metrics(tmp_path)
    assert 3 <= len(rows) < 20 * 5  # stopped by the validations, not the epochs
    values = [r["val_accuracy"] for r in rows]
    best_at = max(range(len(values)), key=lambda i: (values[i], -i))
    assert len(values) - 1 - best_at == 2  # two validations without improvement, then the stop
    assert find_checkpoint(tmp_path)[1]["global_step"] == rows[-1]["step"]  # the state at the stop is saved


def test_validation_every_n_epochs_and_after_the_last(tmp_path):
    build(tmp_path, epochs=5, val_every_epochs=2).train()
    assert [("val_loss" in r) for r in read_metrics(tmp_path)] == [False, True, False, True, True]


@pytest.mark.parametrize("limit, steps, val_samples", [(1, 1, 16), (0.5, 2, 16), (1.0, 5, 24), (None, 5, 24)])
def test_batch_limits_cut_each_epoch(tmp_path, limit, steps, val_samples, monkeypatch):
    trainer = build(tmp_path, epochs=2, limit_train_batches=limit, limit_val_batches=limit)
    seen = []
    original = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda loader, desc: seen.append(sum(len(t) for _, t in loader))
                        or original(trainer.valid_data_loader, desc))
    trainer.train()
    assert trainer.global_step == 2 * steps
    assert seen == [val_samples, val_samples]


def test_a_limited_epoch_resumes_bit_exact(tmp_path):
    straight = build(tmp_path / "straight", limit_train_batches=3)
    straight.train()
    interrupted = build(tmp_path / "split", limit_train_batches=3)
    sigterm_at(interrupted, 5)
    with pytest.raises(StopTraining):
        interrupted.train()
    second = resumed(tmp_path / "split", find_checkpoint(tmp_path / "split")[0], limit_train_batches=3)
    second.train()
    assert_same_state(straight, second) and straight.global_step == 9


# ---- the time limit, SIGUSR1 ----

def test_the_time_limit_stops_at_a_step_saves_and_resume_finishes_bit_exact(tmp_path, monkeypatch):
    straight = build(tmp_path / "straight")
    straight.train()
    limited = build(tmp_path / "split", max_time=1000)
    clock = iter(range(10**6))
    monkeypatch.setattr(limited.stops, "at", 7.5)  # passed after the 7th step's check
    monkeypatch.setattr("trainer.parts.time.monotonic", lambda: next(clock))
    with pytest.raises(StopTraining) as stop:
        limited.train()
    monkeypatch.undo()
    assert stop.value.reason == StopTraining.TIME_LIMIT and stop.value.exit_code == 0
    assert limited.global_step < 15 and stop.value.checkpoint == find_checkpoint(tmp_path / "split")[0]
    resumed(tmp_path / "split", stop.value.checkpoint).train()
    final = build(tmp_path / "check")
    final.load_state_dict(load_checkpoint(tmp_path / "split" / "checkpoint-epoch3.pth"))
    assert_same_state(straight, final)


def test_sigusr1_stops_like_sigterm(tmp_path):
    trainer = build(tmp_path)
    sigterm_at(trainer, 4, signal.SIGUSR1)
    with pytest.raises(StopTraining) as stop:
        trainer.train()
    assert stop.value.signum == signal.SIGUSR1 and stop.value.exit_code == 128 + signal.SIGUSR1
    assert find_checkpoint(tmp_path)[1]["global_step"] == 4
