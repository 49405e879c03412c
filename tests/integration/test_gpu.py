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


@needs_two_gpus
@pytest.mark.parametrize("args", [{"shard": ["features", "head"], "param_dtype": "bf16", "reduce_dtype": "fp32"},
                                  {"shard": ["features"], "cpu_offload": True}])
def test_fsdp2_on_two_gpus_trains_stops_and_resumes_bit_for_bit(tmp_path, write_config, args):
    """nccl, FSDP2's mixed precision (a model without batch norm) or CPU offload: 2 epochs straight, and the same run
    killed after step 7 and restarted by torchrun, end with the same records (within 1e-5: cuDNN is not made
    deterministic here; the CPU tests compare bit for bit)."""
    import json

    from conftest import read_metrics
    from test_distributed import torchrun

    config = json.loads(write_config(epochs=2, strategy={"type": "fsdp2", "args": args},
                                     checkpoint_every={"steps": 5}).read_text())
    config["arch"]["args"] = {"channels": 8, "batchnorm": False}
    config["n_gpu"] = 1
    path = tmp_path / "fsdp2.json"
    path.write_text(json.dumps(config))
    assert torchrun("-c", str(path), "--run-id", "straight").returncode == 0
    restarted = torchrun("-c", str(path), "--run-id", "restarted", "--resume", "auto", launcher=("--max-restarts=1",),
                         env={"TRAIN_FAULT": "rank=1,step=7"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    straight, again = (read_metrics(run_dir(tmp_path / "saved", r)[1], timing=False) for r in ("straight", "restarted"))
    assert len(straight) == len(again) == 2
    for a, b in zip(straight, again):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
