"""Fast by default: no heavy imports for --help or config errors, GPU options, the benchmarks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, run_dir


def imported_modules(*args: str) -> set[str]:
    """Top-level modules a train.py invocation imports (python -X importtime)."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    return {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}


def test_help_imports_no_heavy_library():
    modules = imported_modules("--help")
    assert not modules & {"torch", "tensorboard", "torchvision", "sklearn", "pytorch_optimizer"}


@pytest.mark.slow
def test_a_config_error_is_reported_without_importing_tensorboard_torchvision_or_sklearn(tmp_path):
    config = json.loads((ROOT / "config.json").read_text())
    config["trainer"]["epoch"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    modules = imported_modules("-c", str(bad))
    assert "torch" in modules  # it did get as far as validating against the registries
    assert not modules & {"tensorboard", "torchvision", "sklearn", "pytorch_optimizer"}


ZOO = {"model.cnn", "model.builders", "model.zoo_losses", "model.torchvision_models"}


def zoo_modules_after(*runs: list[str]) -> list[set[str]]:
    """The zoo's modules in sys.modules after each train.main(ARGS) of runs, called one after the other in one fresh
    interpreter (modules stay imported: each set holds the earlier ones')."""
    code = ("import json, sys, train\nfor argv in json.loads(sys.argv[1]):\n    train.main(argv)\n"
            f"    print('zoo:', json.dumps(sorted(m for m in {sorted(ZOO)!r} if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(runs)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return [set(json.loads(line[len("zoo:"):])) for line in result.stdout.splitlines() if line.startswith("zoo:")]


@pytest.mark.slow
def test_a_run_of_the_users_own_model_does_not_import_the_zoo(tmp_path):
    run = ["-c", str(ROOT / "config.json"), "--dry-run", f"trainer.save_dir={tmp_path}"]
    # one interpreter: the user's run first, so that what the second adds is what a zoo arch imports
    plain, with_zoo = zoo_modules_after(run, [*run, 'arch={"type": "CNN", "args": {"input": 1, "num_classes": 10}}',
                                              "loss=cross_entropy"])  # the CNN gives logits
    assert plain == set()  # DigitsModel, nll_loss: the user's names
    assert with_zoo == {"model.cnn", "model.builders"}  # a zoo arch imports the zoo's arch modules, not its losses


@pytest.mark.slow
@pytest.mark.parametrize("setting", ['trainer.compile={"backend": "eager"}', "trainer.channels_last=true"])
def test_compile_and_channels_last_train_and_save_a_plain_model(tmp_path, write_config, setting):
    train.main(["-c", str(write_config()), "--run-id", "g", "trainer.epochs=1", setting])
    state = torch.load(run_dir(tmp_path / "saved", "g")[0] / "checkpoint-epoch1.pth", weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["state_dict"])


@pytest.mark.slow
def test_benchmark_prints_the_ratio_on_its_last_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--samples", "1500",
                             "--epochs", "1", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio trainer/raw: ") and float(last.split(": ")[1]) > 0


@pytest.mark.slow
def test_data_loading_benchmark_prints_both_ratios():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_loading.py"), "--samples", "600",
                             "--rounds", "1", "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = [line for line in result.stdout.splitlines() if "ratio ours/baseline: " in line]
    assert [r.split()[0] for r in ratios] == ["plain", "augment"]
    assert all(float(r.split(": ")[1]) > 0 for r in ratios)
