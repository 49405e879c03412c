"""Data loaders through train.py and test.py (in-process, their main()s): .npz files, image files with a CSV of labels
(the class names saved with the run), and seeded runs with workers and augmentation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import test as test_script
import train
from conftest import read_metrics, run_dir, tiny_config
from fake_data import write_image_csv, write_mnist
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging


@pytest.mark.slow
def test_train_and_test_cli_on_npz_files(tmp_path, write_config, capsys):
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 5) * 3
    for name, n in (("train", 90), ("test", 30)):
        y = np.arange(n) % 3
        np.savez(tmp_path / f"{name}.npz", x=(centers[y] + rng.randn(n, 5)).astype(np.float32), y=y)
    config = tiny_config(tmp_path / "saved", epochs=1)  # the shipped config.json, shrunk
    config["name"] = "Arrays_MLP"
    config["arch"] = {"type": "MLP", "args": {"input_dim": 5, "output_dim": 3, "cfg": {"hidden_dim": 16}}}
    config["data_loader"] = {"type": "ArrayDataLoader", "args": {
        "data_file": str(tmp_path / "train.npz"), "test_file": str(tmp_path / "test.npz"), "batch_size": 16}}
    config["loss"], config["metrics"] = "cross_entropy", ["accuracy"]
    path = write_config(config)
    assert run_cli(train.main, ["-c", str(path), "--run-id", "a", "-d", "cpu"]) == 0, capsys.readouterr().err[-2000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "a", name="Arrays_MLP")
    rows = read_metrics(log_dir)
    assert [r["epoch"] for r in rows] == [1]
    assert math.isfinite(rows[0]["loss"]) and math.isfinite(rows[0]["val_loss"])

    assert run_cli(test_script.main, ["-r", str(ckpt_dir), "-d", "cpu"]) == 0, capsys.readouterr().err[-2000:]
    results = json.loads((ckpt_dir / "test_results.json").read_text())
    assert results["n_samples"] == 30 and math.isfinite(results["loss"]) and 0 <= results["accuracy"] <= 1


@pytest.mark.slow
def test_train_py_saves_the_class_names_and_test_py_uses_them(tmp_path, write_config):
    from conftest import tiny_config

    img_dir = tmp_path / "images"
    write_image_csv(img_dir, tmp_path / "train.csv", ["dog", "cat"] * 8)
    write_image_csv(img_dir, tmp_path / "test.csv", ["dog", "dog", "dog"], first=100)
    config = tiny_config(tmp_path / "saved", epochs=1)
    config["arch"] = {"type": "CNN", "args": {"input": 3, "blocks": "cnf4 m d", "num_classes": 2}}
    config["loss"] = "cross_entropy"  # the CNN gives logits (config.json's nll_loss takes log-probabilities)
    config["data_loader"] = {"type": "ImageCsvDataLoader", "args": {
        "annotations_file": str(tmp_path / "train.csv"), "img_dir": str(img_dir), "batch_size": 4,
        "validation_split": 4, "test_annotations_file": str(tmp_path / "test.csv")}}
    train.main(["-c", str(write_config(config)), "--run-id", "r"])
    run = tmp_path / "saved" / "models" / config["name"] / "r"
    assert json.loads((run / "config.json").read_text())["data_loader"]["args"]["classes"] == ["cat", "dog"]
    checkpoint = torch.load(run / "checkpoint-epoch1.pth", weights_only=True)
    assert checkpoint["config"]["data_loader"]["args"]["classes"] == ["cat", "dog"]
    results = test_script.main(["-r", str(run)])
    assert results["n_samples"] == 3  # only dogs: label 1 as in training, not 0 as the test CSV alone would give


@pytest.mark.slow
def test_two_seeded_runs_with_workers_and_augmentation_give_identical_weights(tmp_path, write_config):
    from conftest import tiny_config

    write_mnist(tmp_path / "data", n_train=48)
    config = tiny_config(tmp_path / "saved", epochs=2)
    config["arch"] = {"type": "MnistModel", "args": {}}
    config["data_loader"] = {"type": "MnistDataLoader", "args": {
        "data_dir": str(tmp_path / "data"), "batch_size": 8, "download": False, "num_workers": 2,
        "validation_split": 8, "transforms": [{"type": "RandomCrop", "args": {"size": 28, "padding": 3}},
                                              {"type": "RandomRotation", "args": {"degrees": 15}}]}}
    path = write_config(config)

    def weights(run_id: str, *overrides: str) -> dict:
        train.main(["-c", str(path), "--run-id", run_id, *overrides])
        run = tmp_path / "saved" / "models" / config["name"] / run_id
        return torch.load(run / "checkpoint-epoch2.pth", weights_only=True)["state_dict"]

    first, second, other = weights("a"), weights("b"), weights("c", "seed=5")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first)
