"""Scale out: DDP through torchrun (gloo on the CPU): one run directory, a single process's numbers, resume, and
early stopping on every rank.

A torchrun launch costs seconds before it trains a step, so one shared launch (the `shared` fixture) runs a config
that holds what several tests need, beside its single-process twin; the tests of one run directory, the numbers,
EMA, step validation, the best-k checkpoints, freezing and test.py read it, and the resume tests resume copies of
it. Separate launches are kept where the scenario differs: early stop, the time limit, a rank killed and the job
restarted by torchrun, a path no machine holds, two machines without a shared disk."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_script
import train
from conftest import ROOT, TIMING, free_port, read_metrics, run_dir, tiny_config
from utils.checkpoint import find_checkpoint

# each test starts torchrun, or reads the runs of a fixture that did; train.main and test.main set up logging
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_logging")]


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> Path:
    """The digits as 8x8 grey PNG files in the ImageFolder layout: train/<digit>/ (DigitsDataLoader's 1,437 training
    samples) and test/<digit>/ (its 360 test samples)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    splits = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)  # DigitsDataLoader's split
    for split, images, labels in (("train", splits[0], splits[2]), ("test", splits[1], splits[3])):
        for i, (image, label) in enumerate(zip(images, labels)):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 15).reshape(8, 8).astype(np.uint8)).save(root / split / str(label) / f"{i}.png")
    return root


def deterministic_config(tmp_path: Path, batch_size: int, images: Path | None = None, workers: int = 2,
                         **trainer) -> Path:
    """Digits with 1,280 training samples (10 batches of 128), no dropout or batch norm: a run whose numbers
    do not depend on how its batches are split between processes. With images (digit_images): read from those files
    and augmented at random (a sample's draws depend on the seed, the epoch and its index alone, so the ranks' samples
    are augmented as one process's are), in `workers` persistent workers per process (their number changes no
    number)."""
    config = tiny_config(tmp_path / "saved", **trainer)
    config["arch"]["args"] = {"channels": 4, "dropout": 0.0, "batchnorm": False}
    if images is not None:
        config["data_loader"] = {"type": "ImageFolderDataLoader", "args": {
            "data_dir": str(images / "train"), "test_dir": str(images / "test"), "mode": "L", "mean": [0.3],
            "std": [0.4], "num_workers": workers, "persistent_workers": workers > 0,
            "transforms": [{"type": "RandomCrop", "args": {"size": 8, "padding": 1}},
                           {"type": "RandomErasing", "args": {"p": 0.3, "scale": [0.02, 0.1]}}]}}
    config["data_loader"]["args"].update(batch_size=batch_size, validation_split=157, shuffle=True)
    config["metrics"] = ["accuracy", {"type": "MulticlassF1Score", "args": {"num_classes": 10, "average": "macro"},
                                      "name": "f1"}]  # torchmetrics: exact over the epoch, states synced in compute()
    path = tmp_path / f"config_{batch_size}.json"
    path.write_text(json.dumps(config))
    return path


def torchrun(*args: str, nproc: int = 2, launcher: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """train.py with args under torchrun (launcher: more of torchrun's own options; env: more variables)."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *launcher, str(ROOT / "train.py"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    # on failure keep what the ranks said, not torchrun's summary
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if line.startswith("[rank")) or result.stderr
    return result


# The shared run: 3 epochs of 10 steps; the EMA of the weights (which validation uses), validation every 4 steps and
# at each epoch's end with the monitor, the best checkpoint of the epochs kept (save_top_k), a checkpoint every 15
# steps (step 15 is in the middle of epoch 2: the loss sums and the F1 states of both ranks are in it), and the
# features frozen for epoch 1 (DDP syncs the parameters that trained when it was wrapped: the model is wrapped anew
# at each change).
SHARED = {"epochs": 3, "ema": {"decay": 0.9}, "val_every_steps": 4, "save_top_k": 1, "log_step": 2,
          "save_every_steps": 15, "freeze": ["features.*"], "unfreeze_at_epoch": 2}
STEPS = [4, 8, 10, 12, 16, 20, 24, 28, 30]  # the metrics rows: each validation's
FILES = ["checkpoint-epoch3.pth", "checkpoint-step15.pth", "checkpoint-step30.pth", "model_best.pth"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, digit_images):
    """Two processes with 64 samples each per step (run "ddp"), and one process with 128 per step (run "single"),
    on the same data (image files, augmented, workers) with the same SHARED settings."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    result = torchrun("-c", str(deterministic_config(tmp_path, 64, digit_images, **SHARED)), "--run-id", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(["-c", str(deterministic_config(tmp_path, 128, digit_images, **SHARED)), "--run-id", "single"])
    return tmp_path / "saved"


def copy_run(save_dir: Path, run_id: str, to: Path) -> tuple[Path, Path]:
    """A copy of a run (its checkpoint and log directories) under the save directory `to`, to resume there and
    leave the shared run as it is; a checkpoint resumes into the directories that hold it."""
    for source, copy in zip(run_dir(save_dir, run_id), run_dir(to, run_id)):
        shutil.copytree(source, copy)
    return run_dir(to, run_id)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights, EMA weights and optimizer state, bit for bit."""
    for weights_a, weights_b in ((a["state_dict"], b["state_dict"]), (a["ema"]["state_dict"], b["ema"]["state_dict"])):
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(value, weights_b[key]) for key, value in weights_a.items())
    assert all(torch.equal(value, b["optimizer"]["state"][i][name])
               for i, state in a["optimizer"]["state"].items() for name, value in state.items())


def assert_same_rows(rows: list[dict], expected: list[dict], rel: float, abs: float) -> None:
    """The same records (epoch and step), each with the same keys and the same numbers within the tolerances;
    the timing keys aside."""
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in expected]
    for a, b in zip(rows, expected, strict=True):
        assert a.keys() == b.keys(), (a, b)
        for key in a.keys() - {"epoch", "step", *TIMING}:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=abs), (a["step"], key, a[key], b[key])


def test_ddp_writes_one_run_directory_and_one_set_of_files(shared):
    assert sorted(p.name for p in (shared / "models" / "Digits_CNN").iterdir()) == ["ddp", "single"]
    ckpt_dir, log_dir = run_dir(shared, "ddp")
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert [(r["epoch"], r["step"]) for r in read_metrics(log_dir)] == [(1 + (s - 1) // 10, s) for s in STEPS]
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == FILES
    manifest = json.loads((ckpt_dir / "run.json").read_text())  # written by rank 0 alone
    [start] = manifest["starts"]
    assert (manifest["status"], start["world_size"], start["variables"]["WORLD_SIZE"]) == ("finished", 2, "2")
    for name in FILES:
        state = torch.load(ckpt_dir / name, weights_only=True)
        assert not any(k.startswith("module.") for k in state["state_dict"]), name
        assert not any(k.startswith("module.") for k in state["ema"]["state_dict"]), name


def test_ddp_logs_the_numbers_a_single_process_logs(shared):
    """Every record, those of the validations between epochs included: the training loss and metrics (their
    sums and F1 states summed over the ranks), the validation's (of the average), the learning rate."""
    ddp, single = read_metrics(run_dir(shared, "ddp")[1]), read_metrics(run_dir(shared, "single")[1])
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == STEPS
    assert_same_rows(ddp, single, rel=1e-4, abs=1e-6)
    assert {"loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1", "lr"} <= ddp[-1].keys()
    assert ddp[-1]["val_accuracy"] > 0.5 and ddp[-1]["val_f1"] > 0.3


def test_freeze_and_unfreeze_under_ddp_give_a_single_processs_weights(shared):
    # the records are test_ddp_logs_the_numbers_a_single_process_logs'; here the weights of the last epoch
    ddp, single = (torch.load(run_dir(shared, run)[0] / "checkpoint-epoch3.pth", weights_only=True)
                   for run in ("ddp", "single"))
    assert ddp["state_dict"].keys() == single["state_dict"].keys()
    for key, value in single["state_dict"].items():
        assert torch.allclose(ddp["state_dict"][key], value, rtol=1e-4, atol=1e-6), key


def test_ema_step_validation_and_best_k_under_ddp_give_a_single_processs_average_and_files(shared):
    """Issue 15's parts under torchrun: the average, validation every 4 steps (10 steps an epoch) with the monitor,
    save_top_k (the records' numbers are test_ddp_logs_the_numbers_a_single_process_logs')."""
    (ddp_dir, _), (single_dir, _) = (run_dir(shared, r) for r in ("ddp", "single"))
    assert sorted(p.name for p in ddp_dir.glob("*.pth")) == sorted(p.name for p in single_dir.glob("*.pth"))
    a, b = (torch.load(d / "checkpoint-epoch3.pth", weights_only=True)["ema"]["state_dict"]
            for d in (ddp_dir, single_dir))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_ddp_checkpoint_evaluates_in_one_process(shared):
    ckpt_dir, _ = run_dir(shared, "ddp")
    results = test_script.main(["-r", str(ckpt_dir)])
    assert results["n_samples"] == 360 and results["accuracy"] > 0.5


def test_a_mid_epoch_checkpoint_under_torchrun_resumes_to_the_numbers_of_a_straight_run(shared, tmp_path):
    # resumed from step 15 of a copy of the shared run (augmented samples, persistent workers), and on past its last
    # epoch (trainer.epochs=4): every record of the straight run again, bit for bit, the loss sums and F1 states of
    # both ranks at step 15 in them, and its state at step 30 (epoch 3's end); then epoch 4's
    ckpt_dir, log_dir = copy_run(shared, "ddp", tmp_path)
    (ckpt_dir / "checkpoint-step30.pth").unlink()
    result = torchrun("-r", str(ckpt_dir / "checkpoint-step15.pth"), "trainer.epochs=4")
    assert result.returncode == 0, result.stderr[-3000:]
    straight, again = read_metrics(run_dir(shared, "ddp")[1], timing=False), read_metrics(log_dir, timing=False)
    assert [(r["epoch"], r["step"]) for r in again[len(STEPS):]] == [(4, 32), (4, 36), (4, 40)]
    assert again[:len(STEPS)] == straight
    assert_same_state(*(torch.load(d / "checkpoint-step30.pth", weights_only=True)
                        for d in (run_dir(shared, "ddp")[0], ckpt_dir)))


def test_a_rank_killed_mid_epoch_is_restarted_by_torchrun_and_the_run_ends_as_the_straight_one(shared, tmp_path,
                                                                                              digit_images):
    """torchrun --max-restarts=2 with --resume auto, and rank 1 killed (SIGKILL, TRAIN_FAULT) right after step 17:
    between the checkpoint of step 15 and epoch 2's end, after rank 0 logged the validation of step 16. Rank 0,
    stopped by torchrun while its peer is dead, saves nothing; the restarted job resumes step 15 in the same run
    directory, logs step 16 again in place of the first attempt's row, and ends as the shared run "ddp" (the same
    config): its records, and its last state bit for bit."""
    config = deterministic_config(tmp_path, 64, digit_images, **SHARED)
    result = torchrun("-c", str(config), "--run-id", "restarted", "--resume", "auto", launcher=("--max-restarts=2",),
                      env={"TRAIN_FAULT": "rank=1,step=17"})
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "restarted")
    assert f"Resumed from {ckpt_dir / 'checkpoint-step15.pth'}" in (log_dir / "info.log").read_text()
    assert read_metrics(log_dir, timing=False) == read_metrics(run_dir(shared, "ddp")[1], timing=False)
    assert_same_state(*(torch.load(d / "checkpoint-epoch3.pth", weights_only=True)
                        for d in (run_dir(shared, "ddp")[0], ckpt_dir)))


def test_a_single_process_checkpoint_resumes_under_torchrun(shared, tmp_path):
    ckpt_dir, log_dir = copy_run(shared, "single", tmp_path)
    result = torchrun("-r", str(ckpt_dir), "trainer.epochs=4", "data_loader.args.batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(r["epoch"], r["step"]) for r in read_metrics(log_dir)] == [
        *((1 + (s - 1) // 10, s) for s in STEPS), (4, 32), (4, 36), (4, 40)]


def test_a_time_limit_stops_every_rank_at_one_sync_point_and_resume_auto_finishes_the_run(shared, tmp_path,
                                                                                           digit_images):
    """trainer.max_time stopping every rank at one sync point, then the command again (--resume auto, the time limit
    lifted) finishing the run, with checkpoints by time: the shared run's records. (-r under torchrun: the tests
    above.)"""
    # no workers: the shared run's numbers all the same
    # and a checkpoint by time at every sync point (a tiny interval: when is not the point), agreed by every rank
    command = ["-c", str(deterministic_config(tmp_path, 64, digit_images, 0, **SHARED)), "--run-id", "limited",
               "--resume", "auto", "trainer.save_every_steps=null", 'trainer.checkpoint_every={"minutes": 1e-9}']
    limited = torchrun(*command, "trainer.max_time=1e-6")  # the first start: no run directory yet
    assert limited.returncode == 0, limited.stderr[-3000:]
    limited_dir, limited_log = run_dir(tmp_path / "saved", "limited")
    assert find_checkpoint(limited_dir)[1]["global_step"] == 2  # the first sync point (log_step 2), every rank
    result = torchrun(*command, "trainer.max_time=null")  # as with -r, the run's config keeps what is not given
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(read_metrics(limited_log), read_metrics(run_dir(shared, "ddp")[1]), rel=1e-5, abs=1e-7)
    steps = [int(p.stem.removeprefix("checkpoint-step")) for p in limited_dir.glob("checkpoint-step*.pth")]
    assert len(steps) > 2 and all(step % 2 == 0 for step in steps)  # at sync points (log_step 2) only


def test_early_stop_stops_every_rank(tmp_path):
    # 'max lr' never improves after epoch 1: patience 1 stops after epoch 2 on every rank, or the job would hang.
    # Accuracy alone: a torchmetrics metric costs each rank 3 s of imports (torchvision, torch._dynamo, scipy)
    path = deterministic_config(tmp_path, 64, epochs=5, monitor="max lr", early_stop=1)
    path.write_text(json.dumps({**json.loads(path.read_text()), "metrics": ["accuracy"]}))
    result = torchrun("-c", str(path), "--run-id", "stop")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "stop")
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2]
    # and a plain DDP run (save_period 1, no save_top_k) keeps one checkpoint an epoch, one set of files
    assert sorted(p.name for p in (tmp_path / "saved" / "models" / "Digits_CNN").iterdir()) == ["stop"]
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth",
                                                             "model_best.pth"]
    state = torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state["state_dict"])


def test_a_resume_path_that_no_machine_holds_is_a_clear_error(tmp_path):
    result = torchrun("-r", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # each rank says it, unless torchrun stopped it first because the other one had failed
    assert errors and all(line.startswith(f"error: {tmp_path / 'nowhere'}: no such file or directory on any "
                                          "machine of this torchrun job") for line in errors), lines
    assert result.stderr.count("Traceback") == 1 and "ChildFailedError" in result.stderr  # torchrun's summary only


# -- two machines without a shared disk: two torchrun "nodes" on 127.0.0.1, each in its own copy of the project

def project_copy(where: Path) -> Path:
    """A machine's copy of the project: the code, no saved/ directory."""
    shutil.copytree(ROOT, where, ignore=shutil.ignore_patterns(".git", "saved", "__pycache__", ".pytest_cache",
                                                                ".hypothesis", "tests", "benchmarks"))
    return where


def two_nodes(copies: list[Path], *args: str) -> list[subprocess.CompletedProcess]:
    """torchrun --nnodes=2 (one process each, c10d rendezvous on 127.0.0.1), one node in each copy, started
    together with the same arguments, as on two machines. The first copy's node is rank 0: the rendezvous
    orders nodes by address, and each node gives its own (--local-addr; all of 127.0.0.0/8 is this machine).
    One thread each, as torchrun gives each of several processes on one machine: two "machines" of two threads
    on two cores wait on each other's spinning threads (an epoch of 10 steps took 2.5 s instead of 0.15 s)."""
    port = free_port()
    results, nodes = [], []
    for address, copy in zip(("127.0.0.1", "127.0.0.2"), copies):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
                   f"--local-addr={address}", "train.py", *args]
        nodes.append(subprocess.Popen(command, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    for node in nodes:
        out, err = node.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return results


def test_two_machines_without_a_shared_disk_resume_from_the_one_that_holds_the_run(shared, tmp_path, monkeypatch,
                                                                                   digit_images):
    a, b = project_copy(tmp_path / "machine-a"), project_copy(tmp_path / "machine-b")
    config = json.loads(deterministic_config(tmp_path, 64, digit_images, 0, **SHARED).read_text())
    # relative: each machine's own disk; a timeout that is not the default restarts the process group once;
    # one epoch, then two resumes of one epoch each: the shared run's three
    config["trainer"].update(save_dir="saved/", dist_timeout=600, verbosity=1, epochs=1)
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
    ok, errors = succeeded(two_nodes([a, b], "-r", str(ckpt_dir), "trainer.epochs=2"))
    assert ok, errors
    swapped = two_nodes([b, a], "-r", str(ckpt_dir), "trainer.epochs=3")
    ok, errors = succeeded(swapped)
    assert ok, errors
    assert "(read by rank 1, sent to the others)" in swapped[1].stdout + swapped[1].stderr
    assert not (b / "saved").exists()
    rows = read_metrics(a / log_dir)
    assert [r["epoch"] for r in rows if "loss" in r] == [1, 2, 3]

    # the same numbers as one process trained straight for 3 epochs with the whole batch: the shared run's twin
    assert_same_rows(rows, read_metrics(run_dir(shared, "single")[1]), rel=1e-4, abs=1e-6)

    # test.py on the other machine needs only the checkpoint file (in this process: its status is not the point)
    shutil.copy(a / ckpt_dir / "checkpoint-epoch3.pth", b / "model.pth")
    monkeypatch.chdir(b)
    test_script.main(["-r", "model.pth"])
    results = json.loads((b / "test_results.json").read_text())
    assert results["n_samples"] == 360 and results["accuracy"] > 0.5
    assert not (b / "saved").exists()
