"""Scale out: DDP through torchrun (gloo on the CPU), mixed precision, accumulation, clipping."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import test as test_script
import train
from base import BaseDataLoader
from conftest import ROOT, read_metrics, run_dir, tiny_config
from trainer import Trainer
from utils.checkpoint import Checkpointer
from utils.distributed import Dist
from utils.errors import UserError
from utils.monitor import Monitor


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


def test_sync_batchnorm_on_the_cpu_is_a_clear_error():
    config = {"channels_last": False, "compile": False, "sync_batchnorm": True}
    with pytest.raises(UserError, match="trainer.sync_batchnorm needs GPUs"):
        train.place_model(nn.BatchNorm1d(3), torch.device("cpu"), [], config, Dist(0, 2, 0))


def test_every_sample_is_seen_once_per_epoch_across_ranks():
    for n, world, batch in ((103, 2, 8), (96, 3, 4), (17, 2, 8)):
        loaders = [BaseDataLoader(TensorDataset(torch.arange(n)), batch, True, 0, 0, seed=1) for _ in range(world)]
        for rank, loader in enumerate(loaders):
            loader.shard(rank, world)
            loader.set_epoch(3)
        parts = [torch.cat([b[0] for b in loader]) for loader in loaders]
        assert len({len(list(loader)) for loader in loaders}) == 1  # the same number of steps on every rank
        seen = torch.cat(parts)
        assert len(seen) == len(set(seen.tolist())) >= n - (world - 1)  # no sample twice; < world dropped


# ---- in one process: mixed precision, accumulation, clipping

def regression_trainer(tmp_path: Path, batch_size: int, **kwargs) -> Trainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1)
    loader = BaseDataLoader(TensorDataset(x, y), batch_size, False, 0, 0, seed=0)
    model = nn.Linear(5, 1)
    return Trainer(model, nn.functional.mse_loss, {}, torch.optim.SGD(model.parameters(), lr=0.05),
                   device=torch.device("cpu"), epochs=kwargs.pop("epochs", 2), data_loader=loader, progress=False,
                   monitor=Monitor("off"), checkpointer=Checkpointer(tmp_path), **kwargs)


def test_accumulating_k_batches_equals_one_batch_k_times_larger(tmp_path):
    big = regression_trainer(tmp_path / "a", 32)
    small = regression_trainer(tmp_path / "b", 8, accumulate_steps=4)
    big.train(), small.train()
    assert torch.allclose(big.model.weight, small.model.weight, atol=1e-6)
    assert small.global_step == 16 and big.global_step == 4


def test_clip_grad_norm_bounds_each_update(tmp_path):
    trainer = regression_trainer(tmp_path, 64, epochs=1, clip_grad_norm=0.01)
    before = trainer.model.weight.detach().clone()
    trainer.train()
    step = torch.cat([trainer.model.weight.detach() - before, trainer.model.bias.detach().view(1, 1)], 1)
    assert step[:, :-1].norm() <= 0.05 * 0.01 + 1e-7  # lr * max_norm


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_trains_to_the_same_accuracy_band(tmp_path, write_config, amp):
    config = write_config(epochs=4)
    train.main(["-c", str(config), "--run-id", "fp32", "optimizer.args.lr=0.01"])
    train.main(["-c", str(config), "--run-id", amp, f"trainer.amp={amp}", "optimizer.args.lr=0.01"])
    full, mixed = (read_metrics(run_dir(tmp_path / "saved", r)[1])[-1]["val_accuracy"] for r in ("fp32", amp))
    assert mixed > 0.8 and abs(mixed - full) < 0.05
    state = torch.load(run_dir(tmp_path / "saved", amp)[0] / "checkpoint-epoch4.pth", weights_only=True)
    assert (state["scaler"] is not None) == (amp == "fp16")  # the GradScaler's state is checkpointed


def test_lbfgs_with_accumulation_is_refused_clearly(tmp_path):
    with pytest.raises(UserError, match="LBFGS re-evaluates the loss through a closure"):
        model = nn.Linear(5, 1)
        loader = BaseDataLoader(TensorDataset(torch.randn(8, 5), torch.randn(8, 1)), 4, False, 0, 0)
        Trainer(model, nn.functional.mse_loss, {}, torch.optim.LBFGS(model.parameters()), device=torch.device("cpu"),
                epochs=1, data_loader=loader, accumulate_steps=2)


def test_early_stop_stops_every_rank(tmp_path):
    # 'max lr' never improves after epoch 1: patience 1 stops after epoch 2 on every rank, or the job would hang
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, epochs=5, monitor="max lr", early_stop=1)),
                      "--run-id", "stop")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run_dir(tmp_path / "saved", "stop")[1])] == [1, 2]


def test_more_gpus_asked_than_exist_warns_and_uses_what_exists(caplog):
    from utils.util import prepare_device

    device, ids = prepare_device(torch.cuda.device_count() + 2)
    assert f"n_gpu is {torch.cuda.device_count() + 2} but only {torch.cuda.device_count()}" in caplog.text
    assert len(ids) == torch.cuda.device_count()
