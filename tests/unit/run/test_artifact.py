"""Tests for run/artifact.py: what an exported file carries, as text values; a loader that does not describe its
inputs, or cannot, leaves the preprocessing out and says why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_config
from data_loader.data_loaders import DigitsDataLoader
from parse_config import ConfigParser
from run import artifact_metadata


def test_every_value_is_text_and_the_structured_ones_json(tmp_path):
    config = ConfigParser(tiny_config(tmp_path))
    metadata, held = artifact_metadata(config, {"epoch": 3, "ema": {"state_dict": {}}}, Path("run/c.pth"),
                                       ("zero", 1), (1, 8, 8))
    assert all(isinstance(v, str) for v in metadata.values())
    arch = json.dumps({"type": config["arch"]["type"], "args": config["arch"]["args"]})
    assert metadata == {"format_version": "1", "preprocessing": json.dumps({"input": "array", "dtype": "float32"}),
                        "classes": '["zero", "1"]', "arch": arch, "input_shape": "[1, 8, 8]", "weights": "ema",
                        "epoch": "3", "source_checkpoint": str(Path("run/c.pth"))}
    assert held == (f"Its metadata: preprocessing (DigitsDataLoader), 2 class names, arch {config['arch']['type']}; "
                    "weights: the EMA average (trainer.ema)")


SECOND = "data_loader.args.eval_transforms: a second Resize"


@pytest.mark.parametrize("answer, says", [(None, "data_loader.type DigitsDataLoader does not describe its inputs"),
                                          (ValueError(SECOND), SECOND)])
def test_without_a_description_the_preprocessing_is_left_out_and_the_report_says_why(tmp_path, monkeypatch, answer,
                                                                                       says):
    def preprocessing(cls, args):
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(DigitsDataLoader, "preprocessing", classmethod(preprocessing))
    metadata, held = artifact_metadata(ConfigParser(tiny_config(tmp_path)), {"epoch": 1}, Path("c.pth"), None, (64,))
    assert "preprocessing" not in metadata and "classes" not in metadata and metadata["weights"] == "model"
    assert f"no preprocessing ({says}" in held and "no class names" in held and "the run kept no EMA" in held
