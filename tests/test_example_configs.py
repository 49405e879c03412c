"""Every shipped example config in configs/ trains one epoch in-process and its checkpoint evaluates."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import test as test_script
import train

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


def test_the_example_configs_are_there():
    names = {p.name for p in CONFIGS}
    assert {"mlp_digits.json", "autoencoder_digits.json", "pytorch_optimizer_warmup.json"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_trains_one_epoch_and_evaluates(path, tmp_path):
    config = json.loads(path.read_text())
    train.main(["-c", str(path), "trainer.epochs=1", f"trainer.save_dir={tmp_path}", "--run-id", "x",
                "trainer.verbosity=0"])
    checkpoint = tmp_path / "models" / config["name"] / "x" / "checkpoint-epoch1.pth"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert state["arch"] == config["arch"]["type"] and state["epoch"] == 1

    rows = [json.loads(line) for line in (tmp_path / "log" / config["name"] / "x" / "metrics.jsonl").open()]
    assert len(rows) == 1 and math.isfinite(rows[0]["loss"]) and math.isfinite(rows[0]["val_loss"])

    results = test_script.main(["-r", str(checkpoint)])
    assert math.isfinite(results["loss"]) and results["n_samples"] > 0
    for metric in config.get("metrics", []):
        key = metric if isinstance(metric, str) else metric.get("name") or metric["type"]
        assert 0.0 <= results[key] <= 1.0
    assert json.loads(checkpoint.with_name("test_results.json").read_text())["epoch"] == 1
