"""Scale out: DDP through torchrun (gloo on the CPU): one run directory, a single process's numbers, resume, and
early stopping on every rank."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test as test_script
import train
from conftest import ROOT, read_metrics, run_cli, run_dir, tiny_config
from utils.checkpoint import find_checkpoint

pytestmark = pytest.mark.slow  # each test starts torchrun, or reads the runs of a fixture that did


def deterministic_config(tmp_path: Path, batch_size: int, **trainer) -> Path:
    """Digits with 1,280 training samples (10 batches of 128), no dropout or batch norm: a run whose numbers
    do not depend on how its batches are split between processes."""
    config = tiny_config(tmp_path / "saved", **trainer)
    config["arch"]["args"] = {"channels": 4, "dropout": 0.0, "batchnorm": False}
    config["data_loader"]["args"].update(batch_size=batch_size, validation_split=157, shuffle=True)
    config["metrics"] = ["accuracy", {"type": "MulticlassF1Score", "args": {"num_classes": 10, "average": "macro"},
                                      "name": "f1"}]  # torchmetrics: exact over the epoch, states synced in compute()
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
        for key in ("loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a[key], b[key])
    assert ddp[-1]["val_accuracy"] > 0.5 and ddp[-1]["val_f1"] > 0.3


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


def test_a_mid_epoch_checkpoint_under_torchrun_resumes_to_the_numbers_of_a_straight_run(tmp_path):
    # 10 steps per epoch: step 15 is in the middle of epoch 2; the loss sums and the F1 states of both ranks are in it
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, save_every_steps=15)), "--run-id", "mid")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "mid")
    straight = read_metrics(log_dir, timing=False)
    result = torchrun("-r", str(ckpt_dir / "checkpoint-step15.pth"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = read_metrics(log_dir, timing=False)
    assert [r["epoch"] for r in again] == [1, 2]
    for key in ("loss", "accuracy", "f1", "val_loss", "val_f1"):
        assert again[-1][key] == pytest.approx(straight[-1][key], rel=1e-5, abs=1e-7), key


def test_freeze_and_unfreeze_under_ddp_give_a_single_processs_numbers(tmp_path):
    # DDP syncs the parameters that trained when it was wrapped: the model is wrapped anew at each change
    settings = {"epochs": 3, "freeze": ["features.*"], "unfreeze_at_epoch": 2}
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, **settings)), "--run-id", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(["-c", str(deterministic_config(tmp_path, 128, **settings)), "--run-id", "single"])
    ddp, single = (read_metrics(run_dir(tmp_path / "saved", run)[1]) for run in ("ddp", "single"))
    for a, b in zip(ddp, single, strict=True):
        for key in ("loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    ddp, single = (torch.load(run_dir(tmp_path / "saved", run)[0] / "checkpoint-epoch3.pth", weights_only=True)
                   for run in ("ddp", "single"))
    for key, value in single["state_dict"].items():
        assert torch.allclose(ddp["state_dict"][key], value, rtol=1e-4, atol=1e-6), key


# -- two machines without a shared disk: two torchrun "nodes" on 127.0.0.1, each in its own copy of the project

def project_copy(where: Path) -> Path:
    """A machine's copy of the project: the code, no saved/ directory."""
    shutil.copytree(ROOT, where, ignore=shutil.ignore_patterns(".git", "saved", "__pycache__", ".pytest_cache",
                                                                ".hypothesis", "tests", "benchmarks"))
    return where


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(copies: list[Path], *args: str) -> list[subprocess.CompletedProcess]:
    """torchrun --nnodes=2 (one process each, c10d rendezvous on 127.0.0.1), one node in each copy, started
    together with the same arguments, as on two machines. The first copy's node is rank 0: the rendezvous
    orders nodes by address, and each node gives its own (--local-addr; all of 127.0.0.0/8 is this machine)."""
    port = free_port()
    results, nodes = [], []
    for address, copy in zip(("127.0.0.1", "127.0.0.2"), copies):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
                   f"--local-addr={address}", "train.py", *args]
        nodes.append(subprocess.Popen(command, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for node in nodes:
        out, err = node.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return results


def test_two_machines_without_a_shared_disk_resume_from_the_one_that_holds_the_run(tmp_path):
    a, b = project_copy(tmp_path / "machine-a"), project_copy(tmp_path / "machine-b")
    config = json.loads(deterministic_config(tmp_path, 64).read_text())
    # relative: each machine's own disk; a timeout that is not the default restarts the process group once
    config["trainer"].update(save_dir="saved/", dist_timeout=600, verbosity=1)
    for copy in (a, b):
        (copy / "tiny.json").write_text(json.dumps(config))
    ckpt_dir, log_dir = run_dir(Path("saved"), "shared-nothing")

    def succeeded(results):
        return all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]

    ok, errors = succeeded(two_nodes([a, b], "-c", "tiny.json", "--run-id", "shared-nothing"))
    assert ok, errors
    assert (a / ckpt_dir).is_dir() and not (b / "saved").exists()  # rank 0 (machine a) alone wrote the run
    # stopped and resumed on both machines with the same command: only machine a has the run directory,
    # first as rank 0, then as rank 1 (its copy of the run is the one that goes on)
    ok, errors = succeeded(two_nodes([a, b], "-r", str(ckpt_dir), "trainer.epochs=3"))
    assert ok, errors
    swapped = two_nodes([b, a], "-r", str(ckpt_dir), "trainer.epochs=4")
    ok, errors = succeeded(swapped)
    assert ok, errors
    assert "(read by rank 1, sent to the others)" in swapped[1].stdout + swapped[1].stderr
    assert not (b / "saved").exists()
    rows = read_metrics(a / log_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]

    # the same numbers as one process trained straight for 4 epochs with the whole batch
    config["trainer"].update(save_dir=str(tmp_path / "single"), epochs=4)
    config["data_loader"]["args"]["batch_size"] = 128
    (tmp_path / "single.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "single.json"), "--run-id", "straight"])
    straight = read_metrics(run_dir(tmp_path / "single", "straight")[1])
    for resumed, single in zip(rows, straight, strict=True):
        for key in ("loss", "val_loss", "val_accuracy"):
            assert resumed[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), (resumed["epoch"], key)

    # test.py on the other machine needs only the checkpoint file
    shutil.copy(a / ckpt_dir / "checkpoint-epoch4.pth", b / "model.pth")
    result = run_cli("test.py", "-r", "model.pth", cwd=b, project=b)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((b / "test_results.json").read_text())
    assert results["n_samples"] == 360 and results["accuracy"] > 0.5
    assert not (b / "saved").exists()


def test_a_resume_path_that_no_machine_holds_is_a_clear_error(tmp_path):
    result = torchrun("-r", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # each rank says it, unless torchrun stopped it first because the other one had failed
    assert errors and all(line.startswith(f"error: {tmp_path / 'nowhere'}: no such file or directory on any "
                                          "machine of this torchrun job") for line in errors), lines
    assert result.stderr.count("Traceback") == 1 and "ChildFailedError" in result.stderr  # torchrun's summary only


def test_ema_step_validation_best_k_and_a_time_limit_under_ddp_give_a_single_processs_numbers(tmp_path):
    """Issue 15's parts under torchrun: the average, validation every 4 steps (10 steps an epoch) with the monitor,
    save_top_k, then trainer.max_time stopping every rank at one sync point and a resume finishing the run."""
    options = {"epochs": 3, "ema": {"decay": 0.9}, "val_every_steps": 4, "save_top_k": 1, "log_step": 2}
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, **options)), "--run-id", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(["-c", str(deterministic_config(tmp_path, 128, **options)), "--run-id", "single"])
    (ddp_dir, ddp_log), (single_dir, single_log) = (run_dir(tmp_path / "saved", r) for r in ("ddp", "single"))
    ddp, single = read_metrics(ddp_log), read_metrics(single_log)
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [4, 8, 10, 12, 16, 20, 24, 28, 30]
    for a, b in zip(ddp, single):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4), (a, b)
    assert sorted(p.name for p in ddp_dir.glob("*.pth")) == sorted(p.name for p in single_dir.glob("*.pth"))
    a, b = (torch.load(d / "checkpoint-epoch3.pth", weights_only=True)["ema"]["state_dict"] for d in (ddp_dir,
                                                                                                      single_dir))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)

    limited = torchrun("-c", str(deterministic_config(tmp_path, 64, **options)), "--run-id", "limited",
                       "trainer.max_time=1e-6")
    assert limited.returncode == 0, limited.stderr[-3000:]
    limited_dir, limited_log = run_dir(tmp_path / "saved", "limited")
    assert find_checkpoint(limited_dir)[1]["global_step"] == 2  # the first sync point (log_step 2), every rank
    result = torchrun("-r", str(limited_dir), "trainer.max_time=null")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_metrics(limited_log)] == [r["step"] for r in ddp]
    for a, b in zip(read_metrics(limited_log), ddp):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5), (a, b)
