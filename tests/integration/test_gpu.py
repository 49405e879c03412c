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


@needs_gpu
def test_a_background_checkpoint_of_a_gpu_run_is_the_synchronous_one_staged_in_pinned_memory(tmp_path):
    from utils.background import BackgroundWriter
    from utils.checkpoint import Checkpointer

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32).cuda()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    optimizer.step()
    state = {"epoch": 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
    staged = BackgroundWriter()._stage(state)
    assert staged["state_dict"]["weight"].device.type == "cpu" and staged["state_dict"]["weight"].is_pinned()
    for mode, background in (("sync", False), ("async", True)):
        checkpointer = Checkpointer(tmp_path / mode, background=background)
        (tmp_path / mode).mkdir()
        checkpointer.save(state, 1, is_best=False, is_last=True)
        with torch.no_grad():
            model.weight.add_(1)  # the next step, on the GPU, while the background write runs
        checkpointer.close()
        with torch.no_grad():
            model.weight.sub_(1)
    sync, background = (torch.load(tmp_path / m / "checkpoint-epoch1.pth", weights_only=True, map_location="cpu")
                        for m in ("sync", "async"))
    assert all(torch.equal(sync["state_dict"][k], background["state_dict"][k]) for k in sync["state_dict"])
    assert all(torch.equal(v, background["optimizer"]["state"][i][n])
               for i, s in sync["optimizer"]["state"].items() for n, v in s.items())
