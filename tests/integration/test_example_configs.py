"""The shipped configs: config.json and every file in configs/ validate, and every example in configs/ trains one
epoch in-process and its checkpoint evaluates."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import test as test_script
import train
from conftest import ROOT
from fake_data import write_arrays, write_cifar, write_image_csv, write_image_folder, write_mnist
from parse_config import ConfigParser, read_config, read_json


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json"))
BASES = sorted((ROOT / "configs" / "_base_").glob("*.yaml"))
# What each config in configs/ held before the examples were shrunk onto _base_ files: they must still resolve to it.
BEFORE_BASES = json.loads((ROOT / "tests" / "fixtures" / "shipped_configs_resolved.json").read_text())

# Tiny files in the real formats where a config expects its data (paths relative to the working directory).
DATA = {
    "mnist": lambda: write_mnist(Path("data"), name="MNIST"),
    "fashion_mnist": lambda: write_mnist(Path("data"), name="FashionMNIST"),
    "kmnist": lambda: write_mnist(Path("data"), name="KMNIST"),
    "cifar10": lambda: write_cifar(Path("data"), classes=10),
    "cifar100": lambda: write_cifar(Path("data"), classes=100),
    "image_csv": lambda: (write_image_csv(Path("data/images"), Path("data/images/train.csv"), ["cat", "dog"] * 10),
                          write_image_csv(Path("data/images"), Path("data/images/test.csv"), ["dog", "cat"], first=20)),
    "image_folder": lambda: (write_image_folder(Path("data/image_folder/train"), {"a": 8, "b": 6, "c": 6}),
                             write_image_folder(Path("data/image_folder/test"), {"a": 2, "c": 2})),
    "arrays": lambda: (write_arrays(Path("data/arrays/train.npz"), n=60),
                       write_arrays(Path("data/arrays/test.npz"), n=20, seed=1)),
    "resnet18_cifar10": lambda: (write_cifar(Path("data"), classes=10), write_imagenet_resnet18(Path("torch"))),
}


def write_imagenet_resnet18(torch_home: Path) -> None:
    """torchvision's resnet18 ImageNet weights file where torch's cache keeps it (random values: nothing downloads)."""
    import torchvision

    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")


def test_the_example_configs_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"mlp_digits", "autoencoder_digits", "pytorch_optimizer_warmup", *DATA} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_trains_one_epoch_and_evaluates(path, tmp_path, monkeypatch):
    config = read_config(path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision weights names are read from there
    DATA.get(path.stem, lambda: None)()
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
        assert 0.0 <= results[key] <= 1.0 if key != "confusion_matrix" else sum(map(sum, results[key])) > 0
    assert json.loads(checkpoint.with_name("test_results.json").read_text())["epoch"] == 1


# ---- validation ----

def test_shipped_config_validates():
    config = ConfigParser(read_json(ROOT / "config.json"))
    assert config["arch"]["type"] == "DigitsModel" and config["seed"] == 123
    assert config["trainer"]["len_epoch"] is None and config["lr_scheduler"]["interval"] == "epoch"


CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*") if p.suffix in (".json", ".yaml", ".yml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_validates(path):
    ConfigParser(read_config(path))


def test_the_shipped_configs_resolve_to_what_they_held_before_they_had_bases():
    assert {path.stem for path in CONFIGS} == set(BEFORE_BASES)
    for path in CONFIGS:
        assert read_config(path) == BEFORE_BASES[path.stem], path.name
        assert "_base_" in read_json(path), f"{path.name}: list the _base_ files it shares sections with"


def test_every_base_file_is_listed_by_an_example():
    listed = {(path.parent / base).resolve() for path in CONFIGS for base in read_json(path)["_base_"]}
    assert BASES and set(BASES) <= listed
