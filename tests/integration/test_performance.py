"""Fast by default: in-memory batching, no heavy imports for --help or config errors, GPU options, benchmark."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import train
from base import BaseDataLoader
from conftest import ROOT, run_dir


class PerSample(Dataset):
    """The same tensors behind per-sample __getitem__ (the standard DataLoader path), counting calls."""

    def __init__(self, *tensors):
        self.tensors, self.calls = tensors, 0

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        self.calls += 1
        return tuple(t[i] for t in self.tensors)


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [[t.clone() for t in batch] for batch in loader]


@pytest.mark.parametrize("shuffle", [True, False])
def test_in_memory_slicing_gives_exactly_the_standard_loaders_batches(shuffle):
    x, y = torch.randn(103, 3, 4, 4), torch.randint(0, 5, (103,))
    fast = BaseDataLoader(TensorDataset(x, y), 16, shuffle, 0.2, 0, seed=3)
    per_sample = PerSample(x, y)
    slow = BaseDataLoader(per_sample, 16, shuffle, 0.2, 0, seed=3)
    assert fast.in_memory and not slow.in_memory
    for epoch in (1, 2):
        a, b = batches(fast, epoch), batches(slow, epoch)
        assert len(a) == len(b) == len(fast) == 6
        assert all(torch.equal(p, q) for pa, pb in zip(a, b) for p, q in zip(pa, pb))
    fast.sampler.set_epoch(2), slow.sampler.set_epoch(2)
    fast.sampler.skip(32), slow.sampler.skip(32)
    assert all(torch.equal(p, q) for pa, pb in zip(fast, slow) for p, q in zip(pa, pb))
    va, vb = fast.split_validation(), slow.split_validation()
    assert all(torch.equal(p, q) for pa, pb in zip(va, vb) for p, q in zip(pa, pb))


def test_in_memory_batches_never_call_getitem():
    x, y = torch.randn(50, 2), torch.zeros(50)
    dataset = TensorDataset(x, y)
    dataset.__class__ = type("Counting", (TensorDataset,), {"__getitem__": lambda self, i: 1 / 0})
    loader = BaseDataLoader(dataset, 8, True, 0.1, 0)
    assert sum(len(b[0]) for b in loader) == loader.n_samples


def imported_modules(*args: str) -> set[str]:
    """Top-level modules a train.py invocation imports (python -X importtime)."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    return {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}


def test_help_imports_no_heavy_library():
    modules = imported_modules("--help")
    assert not modules & {"torch", "tensorboard", "torchvision", "sklearn", "pytorch_optimizer"}


def test_a_config_error_is_reported_without_importing_tensorboard_torchvision_or_sklearn(tmp_path):
    config = json.loads((ROOT / "config.json").read_text())
    config["trainer"]["epoch"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    modules = imported_modules("-c", str(bad))
    assert "torch" in modules  # it did get as far as validating against the registries
    assert not modules & {"tensorboard", "torchvision", "sklearn", "pytorch_optimizer"}


@pytest.mark.parametrize("setting", ['trainer.compile={"backend": "eager"}', "trainer.channels_last=true"])
def test_compile_and_channels_last_train_and_save_a_plain_model(tmp_path, write_config, setting):
    train.main(["-c", str(write_config()), "--run-id", "g", "trainer.epochs=1", setting])
    state = torch.load(run_dir(tmp_path / "saved", "g")[0] / "checkpoint-epoch1.pth", weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["state_dict"])


def test_benchmark_prints_the_ratio_on_its_last_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--samples", "1500",
                             "--epochs", "1", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio trainer/raw: ") and float(last.split(": ")[1]) > 0


def test_data_loading_benchmark_prints_both_ratios():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_loading.py"), "--samples", "600",
                             "--rounds", "1", "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = [line for line in result.stdout.splitlines() if "ratio ours/baseline: " in line]
    assert [r.split()[0] for r in ratios] == ["plain", "augment"]
    assert all(float(r.split(": ")[1]) > 0 for r in ratios)
