"""trainer.save_top_k through train.py: the k best epoch files by the monitored value and the newest stay, across a
resume with -r."""
from __future__ import annotations

import pytest
import torch

import train
from conftest import read_metrics, run_dir, tiny_config

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main reconfigures the root logger


@pytest.mark.slow
def test_save_top_k_keeps_the_k_best_epochs_and_the_newest_across_a_resume(tmp_path, write_config):
    config = tiny_config(tmp_path / "saved", monitor="max val_accuracy", save_top_k=2, epochs=4)
    # A learning rate this high keeps the accuracy low, going up and down and tying (on this CPU: 0.107 three times,
    # then lower): a model that learns improves every epoch, and the best would simply be the newest.
    config["optimizer"]["args"]["lr"] = 0.5
    train.main(["-c", str(write_config(config)), "--run-id", "top"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "top")
    assert epoch_files(ckpt_dir) == expected(read_metrics(log_dir), k=2)
    train.main(["-r", str(ckpt_dir), "trainer.epochs=6"])
    rows = read_metrics(log_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert epoch_files(ckpt_dir) == expected(rows, k=2)
    best = max(rows, key=lambda r: r["val_accuracy"])  # the first of equals: improvement is strict
    stored = torch.load(ckpt_dir / "model_best.pth", weights_only=True)
    assert stored["epoch"] == best["epoch"] and stored["monitor_best"] == best["val_accuracy"]


def epoch_files(directory) -> list[int]:
    return sorted(int(p.name[len("checkpoint-epoch"):-len(".pth")]) for p in directory.glob("checkpoint-epoch*.pth"))


def expected(rows: list[dict], k: int) -> list[int]:
    """The epochs of the k best val_accuracy (ties: the older) and the newest."""
    ranked = sorted(rows, key=lambda r: (-r["val_accuracy"], r["epoch"]))
    return sorted({r["epoch"] for r in ranked[:k]} | {rows[-1]["epoch"]})
