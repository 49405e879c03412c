"""train.py --find-lr end to end on the tiny digits config: the plot, the CSV, the suggestion printed, nothing else
written, the trainer's state untouched, the flags' errors and the early stop on divergence."""
from __future__ import annotations

import copy
import csv
import json
import math
import random
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run
import train
from conftest import tiny_config
from parse_config import ConfigParser
from trainer import lr_finder
from trainer.lr_finder import FILES, lr_sweep, read_csv, suggest
from utils.errors import run_cli as run_main
from utils.util import seed_everything

pytestmark = pytest.mark.usefixtures("restore_logging")
SUGGESTED = re.compile(r"Suggested learning rate: (\S+) \(steepest descent of the smoothed loss; "
                       r"the loss was lowest at (\S+)\)")


def small(tmp_path, **trainer) -> dict:
    """The tiny config with batches of 32: the finder's steps cost a quarter."""
    config = tiny_config(tmp_path / "saved", **trainer)
    config["data_loader"]["args"]["batch_size"] = 32
    return config


def find(tmp_path, capsys, *flags: str, run_id: str = "f") -> tuple[str, Path]:
    """Run train.py --find-lr in-process on tmp_path/config.json; (what it printed, its results directory)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(small(tmp_path)))
    train.main(["-c", str(path), "--find-lr", "--run-id", run_id, *flags])
    out = capsys.readouterr().out
    return out, tmp_path / "saved" / "lr_find" / "Digits_CNN" / run_id


def test_find_lr_writes_the_plot_and_the_csv_and_prints_the_suggestion_they_give(tmp_path, capsys):
    out, results = find(tmp_path, capsys, "--lr-steps", "40", "--lr-range", "1e-5", "3")
    assert sorted(p.name for p in results.iterdir()) == sorted(FILES)
    png, csv_path = (results / f for f in FILES)
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "lr", "loss", "smoothed_loss"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
    sweep = read_csv(csv_path)
    lrs = np.array(sweep.lrs)
    assert 10 <= len(lrs) <= 40 and lrs[0] == pytest.approx(1e-5) and lrs[-1] <= 3 * (1 + 1e-12)
    ratios = lrs[1:] / lrs[:-1]
    assert np.all(ratios > 1) and np.allclose(ratios, (3 / 1e-5) ** (1 / 39))  # geometric, up to MAX in 40 steps
    if len(lrs) == 40:
        assert lrs[-1] == pytest.approx(3)

    match = SUGGESTED.search(out)
    assert match, out
    best = suggest(sweep.lrs, sweep.smoothed)
    assert best is not None and match.group(1) == f"{sweep.lrs[best]:.1e}"
    assert 1e-5 <= float(match.group(1)) <= 3
    lowest = int(np.argmin([v if math.isfinite(v) else np.inf for v in sweep.smoothed]))
    assert match.group(2) == f"{sweep.lrs[lowest]:.1e}"
    assert f"python train.py -c {tmp_path / 'config.json'} --lr {match.group(1)}" in out
    assert f"Plot: {png}" in out and f"Values: {csv_path}" in out


def test_nothing_of_a_run_is_written(tmp_path, capsys):
    find(tmp_path, capsys, "--lr-steps", "10", run_id="only")
    saved = tmp_path / "saved"
    assert sorted(p.name for p in saved.iterdir()) == ["lr_find"]  # no models/ or log/ (no TensorBoard, no checkpoint)
    assert sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*")) == [
        "lr_find", "lr_find/Digits_CNN", "lr_find/Digits_CNN/only",
        *sorted(f"lr_find/Digits_CNN/only/{f}" for f in FILES)]


class SameSecond(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 11, 22, 5, 40, 40)


def test_a_timestamp_names_the_results_without_run_id_and_an_explicit_one_must_be_new(tmp_path, write_config,
                                                                                       capsys, monkeypatch):
    monkeypatch.setattr(lr_finder, "datetime", SameSecond)
    path = write_config(small(tmp_path))
    for _ in range(2):
        train.main(["-c", str(path), "--find-lr", "--lr-steps", "10"])
    names = sorted(p.name for p in (tmp_path / "saved" / "lr_find" / "Digits_CNN").iterdir())
    assert names == ["1122_054040", "1122_054040_1"]  # as the run directories: a suffix when the second is taken
    assert run_main(train.main, ["-c", str(path), "--find-lr", "--lr-steps", "10", "--run-id", names[0]]) == 2
    assert "already exists; choose another --run-id" in capsys.readouterr().err


def test_a_diverging_sweep_stops_early(tmp_path, capsys):
    out, results = find(tmp_path, capsys, "--lr-range", "1", "1e6", "--lr-steps", "60")
    sweep = read_csv(results / FILES[1])
    assert len(sweep.lrs) < 60
    assert re.search(r"The sweep stopped at step \d+ of 60 \(lr \S+\): the (smoothed loss exceeded 4x its best|"
                     r"loss became NaN or infinite)\.", out), out
    last, best = sweep.smoothed[-1], min(v for v in sweep.smoothed if math.isfinite(v))
    assert not math.isfinite(last) or last > 4 * best


def trainer_of(tmp_path, **trainer):
    """A trainer built as train.py builds it, from the tiny config (Adam, StepLR)."""
    config = small(tmp_path, **trainer)
    config["optimizer"]["param_groups"] = [{"params": "head.*", "lr": 2e-4, "name": "head"}]  # a tenth of 2e-3
    seed_everything(config["seed"])
    return run.build_trainer(ConfigParser(config), torch.device("cpu"))


def snapshot(trainer) -> dict:
    return copy.deepcopy({"params": {k: v for k, v in trainer.model.state_dict().items()},
                          "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.schedule.state_dict(),
                          "torch": torch.get_rng_state(), "python": random.getstate(),
                          "numpy": np.random.get_state(legacy=False)})


def equal(a, b) -> bool:
    """Bit for bit: tensors by torch.equal (NaN-free here), the rest by ==, through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def test_the_model_optimizer_scheduler_and_random_states_are_untouched(tmp_path):
    trainer = trainer_of(tmp_path)
    data, target = next(iter(trainer.data_loader))  # one real step first: the optimizer has state to keep
    trainer.stepper.step(lambda: trainer.train_step(data, target), 0, 1)
    before = snapshot(trainer)
    assert before["optimizer"]["state"]  # Adam's moments exist
    seen = []
    step = trainer.stepper.step
    trainer.stepper.step = lambda *a: (seen.append([g["lr"] for g in trainer.optimizer.param_groups]), step(*a))[1]
    sweep = lr_sweep(trainer, 1e-4, 1.0, 20)
    assert len(sweep.lrs) >= 10
    assert sweep.losses[-1] != sweep.losses[0]  # the sweep trained
    after = snapshot(trainer)
    for key in before:
        assert equal(before[key], after[key]), key
    # each step set the first group's lr and kept the head group at a tenth of it
    assert [lrs[0] for lrs in seen] == pytest.approx(sweep.lrs, rel=1e-12)
    assert all(lrs[1] == pytest.approx(lrs[0] / 10, rel=1e-9) for lrs in seen)


def test_the_sweep_takes_its_steps_through_the_trainers_stepper_with_accumulation(tmp_path):
    trainer = trainer_of(tmp_path, accumulate_steps=2, clip_grad_norm=1.0, amp="bf16")
    calls = []
    step = trainer.stepper.step
    trainer.stepper.step = lambda forward, micro, group: (calls.append((micro, group)), step(forward, micro, group))[1]
    sweep = lr_sweep(trainer, 1e-4, 1e-2, 12)
    assert len(sweep.lrs) == 12 and calls == [(0, 2), (1, 2)] * 12  # one optimizer step per lr: a whole group
    assert all(math.isfinite(v) for v in sweep.losses)


@pytest.mark.parametrize("flags, named", [
    (["--find-lr", "--lr-range", "1", "0.1"], "--lr-range"),
    (["--find-lr", "--lr-range", "0", "1"], "--lr-range"),
    (["--find-lr", "--lr-range", "1e-3", "inf"], "--lr-range"),
    (["--find-lr", "--lr-steps", "5"], "--lr-steps"),
    (["--lr-steps", "50"], "--find-lr"),
    (["--find-lr", "-r", "saved/models/Digits_CNN/x"], "-r"),
    (["--find-lr", "--dry-run"], "--dry-run"),
])
def test_bad_finder_flags_are_one_error_line_naming_the_flag(tmp_path, write_config, capsys, flags, named):
    assert run_main(train.main, ["-c", str(write_config()), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "saved").exists()
