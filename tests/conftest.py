"""Shared fixtures and helpers: a tiny, fast config written into a temporary directory, ways to run the CLI and
read a run's outputs, and a config with one mistake of each kind.

Tests live in unit/<package>/ (one file per source module, the folders mirroring the packages; unit/commands/
for the commands' own helpers) and integration/ (commands run end to end); pyproject.toml puts
this directory on sys.path, so they import from conftest, fake_data and tiny_trainers. Tests marked slow are
left out by python -m pytest -m "not slow".
"""
from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# The same examples on every run: CI must not pass or fail by chance.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")


def pytest_sessionstart(session):
    """TensorBoard names an event file ...<seconds>.<host>.<pid>.<n>, n a counter of the process, and reads a
    folder's files in name order: a run resumed in this process within the second of its start would be read
    first once n passes from 9 to 10 ("10" < "9"). The counter starts at 10**6 here, so that n always has 7 digits."""
    from tensorboard.summary.writer import event_file_writer

    event_file_writer._global_uid = event_file_writer.AtomicCounter(10**6)


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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or a rendezvous a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def events(log_dir: Path) -> "EventAccumulator":
    """The TensorBoard events of a log directory, every one kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def restore_logging():
    """train.main and setup_logging reconfigure the root logger; give the other test modules theirs back.

    A module that changes it asks for this with pytestmark = pytest.mark.usefixtures("restore_logging")."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        if handler not in saved:
            handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def digits_batch():
    from data_loader.data_loaders import DigitsDataLoader

    x, y = next(iter(DigitsDataLoader(batch_size=4, shuffle=False, validation_split=0)))
    return x, y


# ---- a config with one mistake of each kind: unit/test_parse_config.py checks that validation reports them
# all, integration/test_train_cli.py that train.py prints them


def write(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def _bad_config(tmp_path) -> dict:
    config = tiny_config(tmp_path / "saved")
    config["lr_sheduler"] = config.pop("lr_scheduler")                   # misspelled top-level key
    config["trainer"]["epoch"] = 3                                        # misspelled trainer key
    config["arch"]["type"] = "DigitModel"                                 # unknown arch
    config["optimizer"]["args"].update(lrr=0.1, lr="fast")               # unknown arg, wrong type
    config["data_loader"] = {"type": "MnistDataLoader", "args": {"shuffle": True}}  # missing required args
    config["metrics"] = ["accuracy", "accuracy", "acuracy"]               # duplicate, unknown
    config["trainer"]["monitor"] = "minimum val_loss"                     # bad monitor
    return config


BAD_CONFIG_PROBLEMS = [
    "config key 'lr_sheduler' is not known. Did you mean 'lr_scheduler'?",
    "config key 'trainer.epoch' is not known. Did you mean 'trainer.epochs'",
    "arch.type: unknown arch 'DigitModel'. Did you mean 'DigitsModel'",
    "optimizer.args.lrr: Adam has no argument 'lrr'. Did you mean 'lr'?",
    "optimizer.args.lr: Adam expects a number (default 0.001), got 'fast'",
    "data_loader.args: MnistDataLoader needs the argument 'data_dir'; add it to data_loader.args",
    "data_loader.args: MnistDataLoader needs the argument 'batch_size'; add it to data_loader.args",
    "metrics.2: unknown metric 'acuracy'. Did you mean 'accuracy'",  # then torchmetrics' names
    "metrics: 'accuracy' appears twice",
    "trainer.monitor must be 'min <key>', 'max <key>' or 'off', got 'minimum val_loss'",
]
