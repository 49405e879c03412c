"""The shipped configs that use model/cnn.py train through train.main."""
from __future__ import annotations

import json

import pytest
import torch

import train
from conftest import ROOT


CONFIGS = ["configs/cnn_blocks.json", "configs/resnet_digits.json"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS)
def test_config_trains_one_epoch(path, tmp_path):
    # len_epoch=4: four batches are enough to prove the config builds and trains, and keep this test fast.
    train.main(["-c", str(ROOT / path), "trainer.epochs=1", f"trainer.save_dir={tmp_path}", "--run-id", "x",
                "trainer.verbosity=0", "trainer.len_epoch=4"])
    name = json.loads((ROOT / path).read_text())["name"]
    checkpoint = tmp_path / "models" / name / "x" / "checkpoint-epoch1.pth"
    assert torch.load(checkpoint, weights_only=True, map_location="cpu")["arch"] == "CNN"
