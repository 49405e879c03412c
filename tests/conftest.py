"""Shared fixtures: a tiny, fast config written into a temporary directory, and ways to run the CLI."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# The same examples on every run: CI must not pass or fail by chance.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")


def tiny_config(save_dir: Path, **trainer) -> dict:
    """The shipped config.json shrunk to seconds: a narrow model, 2 epochs, saving under save_dir."""
    config = copy.deepcopy(json.loads((ROOT / "config.json").read_text()))
    config["arch"]["args"] = {"channels": 4}
    config["data_loader"]["args"]["batch_size"] = 128
    config["trainer"].update({"epochs": 2, "save_dir": str(save_dir), "save_period": 1, "verbosity": 0,
                              "monitor": "min val_loss", "early_stop": 0, **trainer})
    return config


@pytest.fixture
def write_config(tmp_path):
    """write_config(config_dict=None, **trainer) -> path of a config file in tmp_path."""
    def write(config: dict | None = None, name: str = "config.json", **trainer) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(config if config is not None else tiny_config(tmp_path / "saved", **trainer)))
        return path
    return write


def run_dir(save_dir: Path, run_id: str, name: str = "Digits_CNN") -> tuple[Path, Path]:
    """(checkpoint dir, log dir) of a run."""
    return save_dir / "models" / name / run_id, save_dir / "log" / name / run_id


TIMING = ("epoch_time", "samples_per_sec")  # differ between otherwise identical runs


def read_metrics(log_dir: Path, timing: bool = True) -> list[dict]:
    """The records of a run's metrics.jsonl; without the timing keys when timing is False."""
    rows = [json.loads(line) for line in (Path(log_dir) / "metrics.jsonl").read_text().splitlines()]
    return rows if timing else [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run_cli(script: str, *args: str, cwd: Path = ROOT, timeout: int = 300,
            project: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a project's train.py/test.py/new_project.py as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(project / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


