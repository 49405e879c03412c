"""run/manifest.py (a name apart from tests/unit/utils/test_manifest.py: test modules share one namespace): what
a training start records in run.json: its command, the checkout's git state (the root is a parameter, so a
test points it at a repository of its own), the devices and the data the config names."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from run.manifest import data_fingerprint, open_manifest
from utils.distributed import SINGLE
from utils.manifest import read_manifest


class Config(dict):
    """What open_manifest reads of a ConfigParser: its items and resume."""
    resume = None


def loader_of(*tensors):
    return SimpleNamespace(dataset=TensorDataset(*tensors))


def test_the_data_is_the_loaders_tensors_and_the_paths_the_args_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train").mkdir()
    Path("train/0.png").write_bytes(b"png")
    Path("labels.csv").write_text("file,label\n")
    args = {"data_dir": "train", "annotations_file": "labels.csv", "test_dir": "missing", "target": "labels.csv",
            "batch_size": 4}
    found = data_fingerprint(args, loader_of(torch.zeros(3, 2), torch.arange(3)))
    assert set(found) == {"dataset", "data_loader.args.data_dir", "data_loader.args.annotations_file"}
    assert found["data_loader.args.data_dir"]["files"] == 1 and found["dataset"]["tensors"][1]["shape"] == [3]
    assert data_fingerprint({}, SimpleNamespace(dataset=[(1, 2)])) == {}  # samples not held as tensors


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_start_records_its_command_checkout_devices_and_data(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "--allow-empty",
                                  "-m", "empty"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "model.py").write_text("import torch\n")  # untracked: dirty
    config = Config(data_loader={"args": {}})
    config.resume = tmp_path / "checkpoint-epoch1.pth"
    trainer = SimpleNamespace(device=torch.device("cpu"), dist=SINGLE, data_loader=loader_of(torch.ones(2, 1)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    manifest = open_manifest(run_dir, config, trainer, ["train.py", "-r", "run dir"], root=repo)
    manifest.start(1, 10)
    start = read_manifest(run_dir)["starts"][0]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert start["command"].endswith("train.py -r 'run dir'") and start["resumed_from"] == str(config.resume)
    assert start["git"]["commit"] == head.strip() and start["git"]["patch"] == "run.patch"
    assert "+import torch" in (run_dir / "run.patch").read_text()
    assert (start["device"], start["world_size"], start["from_epoch"], start["from_step"]) == ("cpu", 1, 1, 10)
    assert set(start["data"]) == {"dataset"} and start["packages"]["torch"]
