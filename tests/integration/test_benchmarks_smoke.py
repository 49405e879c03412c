"""benchmarks/memory.py and benchmarks/time_to_accuracy.py run end to end on tiny settings, and their hand-written
baselines train what the project trains: the same models, settings and data split."""
from __future__ import annotations

import importlib
import json
import re
import sys

import pytest
import torch

from conftest import ROOT

RATIO = re.compile(r"ratio ours/baseline: \d+\.\d\d")


def run_benchmark(name: str, *args: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The benchmark's output lines. Its parent runs in this process (a process start fewer: the sides it measures
    are each a process of their own, as they are from the command line); a failed side stops it with SystemExit."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name.removesuffix(".py"))
    capsys.readouterr()
    module.main(list(args))
    return capsys.readouterr().out.strip().splitlines()


@pytest.fixture
def benchmarks(monkeypatch):
    """(memory, time_to_accuracy), imported as modules."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("memory"), importlib.import_module("time_to_accuracy")


@pytest.mark.slow
def test_memory_benchmark_prints_each_sides_peak_and_the_ratios(tmp_path, capsys, monkeypatch):
    """Ours, the hand-written loop and the original template's side, run from a stand-in for a checkout of it: its
    layout (train.py, config.json, a BaseTrainer in base/) and a train.py that reads its config as the original's
    does and trains in this process."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "__init__.py").write_text(
        "class BaseTrainer:\n    def train(self):\n        print('trained', self.config['trainer']['epochs'])\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"data_loader": {"args": {"data_dir": "data/", "num_workers": 2}}, "trainer": {"epochs": 100}}))
    (tmp_path / "train.py").write_text(
        "import json, sys\nfrom pathlib import Path\nfrom base import BaseTrainer\n"
        "config = json.loads(Path(sys.argv[2]).read_text())\n"
        "assert config['data_loader']['args']['num_workers'] == 0 and config['trainer']['epochs'] == 1\n"
        "assert Path('base').is_dir()  # run from the checkout: the original reads logger/ relative to it\n"
        "assert (Path(config['data_loader']['args']['data_dir']) / 'MNIST' / 'raw').is_dir()\n"
        "trainer = BaseTrainer(); trainer.config = config; trainer.train()\n")
    lines = run_benchmark("memory.py", "--samples", "600", "--epochs", "1", "--sides", "ours,baseline,original",
                          "--original", str(tmp_path), capsys=capsys, monkeypatch=monkeypatch)
    assert RATIO.fullmatch(lines[-1])
    assert re.fullmatch(r"ratio ours/original: \d+\.\d\d", lines[-2])
    summaries = lines[-5:-2]
    assert [line.split(":")[0].split()[0] for line in summaries] == ["ours", "baseline", "original"]
    assert all("MiB" in line and "start-up" in line for line in summaries)
    assert "not run: lightning" in "\n".join(lines)


@pytest.mark.slow
def test_memory_benchmark_runs_lightning_where_installed(capsys, monkeypatch):
    pytest.importorskip("lightning")
    lines = run_benchmark("memory.py", "--samples", "600", "--epochs", "1", "--sides", "ours,baseline,lightning",
                          capsys=capsys, monkeypatch=monkeypatch)
    assert re.fullmatch(r"ratio ours/lightning: \d+\.\d\d", lines[-2])
    assert any(line.startswith("Lightning") and "MiB" in line and "start-up" in line for line in lines)


@pytest.mark.slow
def test_time_to_accuracy_benchmark_prints_each_sides_time_and_the_ratio(capsys, monkeypatch):
    lines = run_benchmark("time_to_accuracy.py", "--target", "0.5", "--epochs", "1", capsys=capsys,
                          monkeypatch=monkeypatch)
    assert RATIO.fullmatch(lines[-1])
    assert all(">= 0.5 at epoch 1" in line and "test accuracy" in line for line in lines[-3:-1])


def test_checkpointing_benchmark_times_the_three_ways_and_prints_the_ratio(capsys, monkeypatch):
    lines = run_benchmark("checkpointing.py", "--width", "64", "--samples", "256", "--epochs", "2", "--rounds", "1",
                          capsys=capsys, monkeypatch=monkeypatch)
    assert re.fullmatch(r"ratio background/none: \d+\.\d\d \(on the training path/none: \d+\.\d\d\)", lines[-1])
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 1 and all(re.search(r"none [\d.]+ s, path [\d.]+ s, background [\d.]+ s", r) for r in rounds)
    assert re.match(r"checkpoint file: \d+ MB", lines[1])


def test_the_baselines_models_are_the_projects(benchmarks):
    from model.model import DigitsModel, MnistModel

    memory, time_to_accuracy = benchmarks
    for ours, copy, shape in ((MnistModel, memory.lenet, (4, 1, 28, 28)),
                              (DigitsModel, time_to_accuracy.digits_cnn, (4, 1, 8, 8))):
        torch.manual_seed(0)
        a = ours().eval()
        torch.manual_seed(0)
        b = copy().eval()  # the same layers created in the same order: the same initial weights
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        x = torch.randn(shape)
        assert torch.equal(a(x), b(x))


def test_the_digits_baselines_settings_are_config_jsons(benchmarks):
    _, t = benchmarks
    config = json.loads((ROOT / "config.json").read_text())
    loader, optimizer, scheduler = (config[k]["args"] for k in ("data_loader", "optimizer", "lr_scheduler"))
    assert (config["seed"], loader["batch_size"], loader["validation_split"]) == (t.SEED, t.BATCH_SIZE,
                                                                                   t.VALIDATION_SPLIT)
    assert (optimizer["lr"], optimizer["amsgrad"], optimizer["weight_decay"]) == (t.LR, t.AMSGRAD, 0)
    assert (scheduler["step_size"], scheduler["gamma"], config["trainer"]["early_stop"]) == (t.STEP_SIZE, t.GAMMA,
                                                                                              t.EARLY_STOP)
    assert (config["trainer"]["monitor"], config["lr_scheduler"]["type"], config["loss"]) == (
        "max val_accuracy", "StepLR", "nll_loss")


@pytest.mark.slow
def test_the_digits_baseline_splits_the_data_as_digits_data_loader(benchmarks):
    from data_loader.data_loaders import DigitsDataLoader

    _, t = benchmarks
    (x, y), (x_test, y_test), (train_idx, valid_idx) = t.digits_splits()
    ours = DigitsDataLoader(batch_size=t.BATCH_SIZE, validation_split=t.VALIDATION_SPLIT)
    test = DigitsDataLoader(batch_size=t.BATCH_SIZE, training=False, validation_split=0.0)
    assert torch.equal(ours.dataset.tensors[0], x) and torch.equal(ours.dataset.tensors[1], y)
    assert torch.equal(test.dataset.tensors[0], x_test) and torch.equal(test.dataset.tensors[1], y_test)
    assert torch.equal(ours.sampler.indices, train_idx) and torch.equal(ours.valid_sampler.indices, valid_idx)


@pytest.mark.slow
def test_the_memory_baseline_writes_the_tensorboard_scalars_ours_writes(benchmarks, tmp_path, monkeypatch):
    import train
    from conftest import events, run_dir

    memory, _ = benchmarks
    memory.write_mnist(tmp_path / "data", 7200, 600)  # 6,480 training images: 51 steps, a loss every 50
    train.main(["-c", str(ROOT / "configs" / "mnist.json"), "--run-id", "m",
                f"data_loader.args.data_dir={tmp_path}/data",
                "+data_loader.args.download=false", "data_loader.args.num_workers=0", "trainer.epochs=1",
                f"trainer.save_dir={tmp_path}/saved"])
    log_dir = run_dir(tmp_path / "saved", "m", "Mnist_LeNet")[1]
    assert memory.baseline(str(tmp_path / "data"), str(tmp_path / "loop"), 1) == 0
    for part, only_ours in (("train", {"samples_per_sec"}), ("valid", set())):
        ours, loop = (set(events(d / part).Tags()["scalars"]) for d in (log_dir, tmp_path / "loop" / "log"))
        assert loop == ours - only_ours and ("loss_step" in loop) == (part == "train")
    monkeypatch.setattr(memory, "TENSORBOARD", False)  # --no-tensorboard: the loop writes no events
    memory.write_mnist(tmp_path / "small", 600, 100)  # any number of steps: no scalar is to be written at all
    (tmp_path / "plain").mkdir()  # as the benchmark's save directory: made by the parent
    assert memory.baseline(str(tmp_path / "small"), str(tmp_path / "plain"), 1) == 0
    assert not (tmp_path / "plain" / "log").exists() and (tmp_path / "plain" / "checkpoint-epoch1.pth").is_file()


def test_sharding_benchmark_measures_ddp_fsdp2_and_activation_checkpointing(capsys, monkeypatch):
    """benchmarks/sharding.py in this process on a 1-rank group (its 2-rank run spawns processes): each strategy's
    state in bytes, the activations kept with and without checkpointing, the ratio last."""
    lines = run_benchmark("sharding.py", "--ranks", "1", "--width", "64", "--layers", "2", "--steps", "2",
                          capsys=capsys, monkeypatch=monkeypatch)
    assert re.fullmatch(r"ratio fsdp2/ddp per-rank parameters, gradients and optimizer state: 1\.00", lines[-1])
    kept = re.search(r"keeps ([\d.]+) MiB for the backward pass against ([\d.]+) MiB without \(ratio (0\.\d\d)\)",
                     lines[-2])
    assert kept and float(kept[3]) < 1  # checkpointing keeps less
    assert [line.split()[0] for line in lines[-4:-2]] == ["ddp", "fsdp2"]
    assert "peak device memory not measured" in lines[-3] or not torch.cuda.is_available()
