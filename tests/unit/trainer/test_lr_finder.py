"""trainer/lr_finder.py without training: the learning rates swept, the suggestion, the options, the command it
prints, the CSV round trip and the plot."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from PIL import Image

from trainer.lr_finder import (DEFAULT_RANGE, DEFAULT_STEPS, FinderOptions, Sweep, finder_options, geometric, plot,
                               read_csv, report, suggest, training_command, write_csv)
from utils.distributed import SINGLE, Dist
from utils.errors import UserError


def curve(lrs: np.ndarray, middle: float = 1e-3) -> np.ndarray:
    """A loss that falls from 2 to 0.5 around middle (steepest there, in log lr) and then rises."""
    x = np.log10(lrs / middle)
    return 0.5 + 1.5 / (1 + np.exp(3 * x)) + np.where(x > 1.5, (x - 1.5) * 4, 0)


def test_geometric_goes_from_min_to_max_by_one_factor():
    lrs = np.array(geometric(1e-7, 10.0, 200))
    assert lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10.0) and len(lrs) == 200
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (8 / 199))


def test_suggest_finds_the_steepest_descent_in_log_lr():
    lrs = np.array(geometric(1e-6, 1.0, 100))
    best = suggest(lrs, curve(lrs))
    assert best is not None and lrs[best] == pytest.approx(1e-3, rel=0.15)


def test_suggest_leaves_out_the_first_points_and_those_after_the_lowest_loss():
    lrs = np.array(geometric(1e-6, 1.0, 100))
    loss = curve(lrs)
    loss[2] = loss[1] - 5  # a plunge among the first 10%: not judged
    loss[90] += 3  # a steep drop from 90 to 91, after the lowest point: not judged either
    loss[99] = np.nan  # a non-finite last point (the sweep's end) is never the lowest
    best = suggest(lrs, loss)
    assert best is not None and 10 <= best and lrs[best] == pytest.approx(1e-3, rel=0.15)


def test_suggest_declines_too_few_points_or_no_descent():
    lrs = geometric(1e-4, 1.0, 9)
    assert suggest(lrs, curve(np.array(lrs))) is None  # fewer than 10 points
    lrs = geometric(1e-4, 1.0, 50)
    assert suggest(lrs, np.linspace(1, 3, 50)) is None  # the loss only rises: lowest at the first point
    assert suggest(lrs, [math.nan] * 50) is None


def args(**given) -> argparse.Namespace:
    values = {"find_lr": True, "lr_range": None, "lr_steps": None, "resume": None, "dry_run": False, "run_id": None}
    return argparse.Namespace(**{**values, **given})


def test_finder_options_default_and_given():
    assert finder_options(args(find_lr=False), [], SINGLE) is None
    expected = FinderOptions(*DEFAULT_RANGE, DEFAULT_STEPS, None, ["-c", "x"])
    assert finder_options(args(), ["-c", "x"], SINGLE) == expected
    assert finder_options(args(lr_range=[1e-5, 1.0], lr_steps=10, run_id="a"), [], SINGLE) == FinderOptions(
        1e-5, 1.0, 10, "a", [])


@pytest.mark.parametrize("given, dist, message", [
    ({"lr_range": [1.0, 1.0]}, SINGLE, "--lr-range MIN MAX: MIN must be below MAX, got 1 1"),
    ({"lr_range": [-1.0, 1.0]}, SINGLE, "--lr-range MIN MAX takes two positive learning rates, got -1 1"),
    ({"lr_range": [1e-3, math.nan]}, SINGLE, "--lr-range MIN MAX takes two positive"),
    ({"lr_steps": 9}, SINGLE, "--lr-steps must be at least 10, got 9"),
    ({"resume": "saved/models/x"}, SINGLE, "--find-lr sweeps a model built from the config, and -r continues"),
    ({"dry_run": True}, SINGLE, "--find-lr and --dry-run: give one of them"),
    ({"fast_dev_run": True}, SINGLE, "--find-lr and --fast-dev-run: give one of them"),
    ({}, Dist(rank=0, world_size=2), "--find-lr runs in one process, not under torchrun (2 processes)"),
    ({"find_lr": False, "lr_steps": 50}, SINGLE, "--lr-steps goes with --find-lr"),
    ({"find_lr": False, "lr_range": [1, 2], "lr_steps": 50}, SINGLE, "--lr-range and --lr-steps go with --find-lr"),
])
def test_finder_options_errors_name_the_flag(given, dist, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        finder_options(args(**given), [], dist)
    assert len(error.value.problems) == 1 and "\n" not in str(error.value)


@pytest.mark.parametrize("argv, expected", [
    (["-c", "config.json", "--find-lr"], "python train.py -c config.json --lr 3.2e-03"),
    (["-c", "my config.json", "--find-lr", "--lr-range", "1e-6", "1", "--lr-steps", "50", "--run-id", "x",
      "--bs", "32", "trainer.save_dir=/tmp/s"],
     "python train.py -c 'my config.json' --bs 32 trainer.save_dir=/tmp/s --lr 3.2e-03"),
    (["--lr", "0.1", "-c", "c.json", "--find-lr", "optimizer.args.lr=0.5", "--lr-steps=40", "-d", "cpu"],
     "python train.py -c c.json -d cpu --lr 3.2e-03"),
])
def test_the_command_to_train_with_the_suggestion(argv, expected):
    assert training_command(argv, "3.2e-03") == expected


def test_report_says_why_there_is_no_suggestion():
    short = Sweep([1.0, 2.0, 4.0], [1.0, 2.0, 9.0], [1.0, 1.5, 5.0], "the smoothed loss exceeded 4x its best")
    text = report(short, None, FinderOptions(1.0, 100.0, 50))
    assert text.splitlines()[0] == ("The sweep stopped at step 3 of 50 (lr 4.0e+00): the smoothed loss exceeded 4x "
                                    "its best.")
    assert "No suggestion: 3 steps are too few to judge" in text and "--lr-range" in text


def test_csv_round_trip_is_exact_and_the_plot_opens(tmp_path):
    lrs = geometric(1e-6, 1.0, 30)
    loss = curve(np.array(lrs))
    sweep = Sweep(lrs, [float(v) + 0.01 for v in loss], [float(v) for v in loss])
    write_csv(sweep, tmp_path / "v.csv")
    assert read_csv(tmp_path / "v.csv") == sweep
    plot(sweep, suggest(sweep.lrs, sweep.smoothed), tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        image.verify()
