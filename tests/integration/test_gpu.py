"""GPU paths: skipped cleanly on machines without CUDA (CI has none)."""
import pytest
import torch

import train
from conftest import run_dir

pytestmark = pytest.mark.slow  # each test trains through train.main

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@needs_gpu
def test_trains_on_one_gpu_and_the_checkpoint_loads_on_the_cpu(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "gpu", "n_gpu=1"])
    ckpt = torch.load(run_dir(tmp_path / "saved", "gpu")[0] / "checkpoint-epoch2.pth", weights_only=True,
                      map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())


@needs_two_gpus
def test_data_parallel_checkpoint_is_saved_unwrapped(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "dp", "n_gpu=2"])
    ckpt = torch.load(run_dir(tmp_path / "saved", "dp")[0] / "checkpoint-epoch2.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
