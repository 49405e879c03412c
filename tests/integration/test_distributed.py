"""Scale out: DDP through torchrun (gloo on the CPU): one run directory, a single process's numbers, resume, and
early stopping on every rank."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test as test_script
import train
from conftest import ROOT, read_metrics, run_dir, tiny_config

pytestmark = pytest.mark.slow  # each test starts torchrun, or reads the runs of a fixture that did


def deterministic_config(tmp_path: Path, batch_size: int, **trainer) -> Path:
    """Digits with 1,280 training samples (10 batches of 128), no dropout or batch norm: a run whose numbers
    do not depend on how its batches are split between processes."""
    config = tiny_config(tmp_path / "saved", **trainer)
    config["arch"]["args"] = {"channels": 4, "dropout": 0.0, "batchnorm": False}
    config["data_loader"]["args"].update(batch_size=batch_size, validation_split=157, shuffle=True)
    config["metrics"] = ["accuracy"]
    path = tmp_path / f"config_{batch_size}.json"
    path.write_text(json.dumps(config))
    return path


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    # on failure keep what the ranks said, not torchrun's summary
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if line.startswith("[rank")) or result.stderr
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two processes with 64 samples each per step, and one process with 128 per step, on the same data."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    result = torchrun("-c", str(deterministic_config(tmp_path, 64)), "--run-id", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(["-c", str(deterministic_config(tmp_path, 128)), "--run-id", "single"])
    return tmp_path


def test_ddp_writes_one_run_directory_and_one_set_of_files(ddp_run):
    assert sorted(p.name for p in (ddp_run / "saved" / "models" / "Digits_CNN").iterdir()) == ["ddp", "single"]
    ckpt_dir, log_dir = run_dir(ddp_run / "saved", "ddp")
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2]
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth",
                                                             "model_best.pth"]
    state = torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state["state_dict"])


def test_ddp_logs_the_numbers_a_single_process_logs(ddp_run):
    ddp, single = read_metrics(run_dir(ddp_run / "saved", "ddp")[1]), read_metrics(run_dir(ddp_run / "saved", "single")[1])
    for a, b in zip(ddp, single):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a[key], b[key])
    assert ddp[-1]["val_accuracy"] > 0.5


def test_ddp_checkpoint_evaluates_in_one_process(ddp_run):
    ckpt_dir, _ = run_dir(ddp_run / "saved", "ddp")
    results = test_script.main(["-r", str(ckpt_dir)])
    assert results["n_samples"] == 360 and results["accuracy"] > 0.5


def test_resume_under_torchrun_and_a_single_process_checkpoint_under_torchrun(ddp_run):
    ckpt_dir, log_dir = run_dir(ddp_run / "saved", "ddp")
    result = torchrun("-r", str(ckpt_dir), "trainer.epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3]
    single_dir, single_log = run_dir(ddp_run / "saved", "single")
    result = torchrun("-r", str(single_dir), "trainer.epochs=3", "data_loader.args.batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(single_log)] == [1, 2, 3]


def test_early_stop_stops_every_rank(tmp_path):
    # 'max lr' never improves after epoch 1: patience 1 stops after epoch 2 on every rank, or the job would hang
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, epochs=5, monitor="max lr", early_stop=1)),
                      "--run-id", "stop")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run_dir(tmp_path / "saved", "stop")[1])] == [1, 2]
