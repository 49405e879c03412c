"""Resume is bit-exact on every path (issue 26): runs stopped and resumed, each compared with its straight run bit
for bit (the weights, the optimizer's state, the EMA, the scheduler, the monitor and the metrics.jsonl rows, timing
aside).

The factors: the loader (image folder, CSV, arrays, MNIST's files in torchvision's layout, each written here in its
real on-disk format) x the workers (0, 2, 2 persistent) x where it stops (at an epoch's end, in the middle of an
epoch, right after a validation in the middle of an epoch, inside an accumulation group, by trainer.max_time) x the
features (EMA, accumulate_steps, val_every_steps, save_top_k, bf16 autocast). The image loaders augment at random
(RandomCrop, RandomHorizontalFlip, RandomErasing). ROWS lists a small design that holds every pair of levels of the
loader, the workers and the stop, and every feature with every loader and every stop it allows.

The stops are the trainer's own (in this process): a stop signal's flag set as SignalStop's handler sets it, after a
given step or epoch, or trainer.max_time. Real signals (SIGINT, SIGTERM, kill -9 from the newest checkpoint) stop
real processes in the slow rows at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pytest
import torch

import train
from conftest import ROOT, read_metrics, run_dir, tiny_config
from fake_data import write_idx
from trainer.parts import Stops

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging

N_TRAIN, N_VALID, BATCH = 56, 8, 8  # 6 steps an epoch
EPOCHS = 2
AUGMENT = [{"type": "RandomCrop", "args": {"size": 8}}, "RandomHorizontalFlip",
           {"type": "RandomErasing", "args": {"p": 0.5, "scale": [0.05, 0.2]}}]
EVAL = [{"type": "CenterCrop", "args": {"size": 8}}]


def _digits(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n grey images side x side (uint8) with labels 0..9: sklearn's 8x8 digits, scaled and padded with noise."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(seed)
    pick = rng.choice(len(x), n, replace=False)
    images = rng.randint(0, 40, (n, side, side)).astype(np.uint8)
    offset = (side - 8) // 2
    images[:, offset:offset + 8, offset:offset + 8] = (x[pick] * 15).reshape(n, 8, 8).astype(np.uint8)
    return images, y[pick].astype(np.int64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict]:
    """data_loader.args of each loader (its type under "type"), over the same kind of data."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    images, labels = _digits(N_TRAIN, 10, 0)
    test_labels = _digits(4, 10, 1)[1]
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / "folder" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "folder" / str(label) / f"{i}.png")
        rows.append(f"{label}/{i}.png,{label}")
    (root / "train.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    mnist = root / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    big, big_test = _digits(N_TRAIN, 28, 2), _digits(16, 28, 3)
    for split, (x, y) in (("train", big), ("t10k", big_test)):
        write_idx(mnist / f"{split}-images-idx3-ubyte", x)
        write_idx(mnist / f"{split}-labels-idx1-ubyte", y)
    np.savez(root / "arrays.npz", x=((images[:, None, 1:9, 1:9] / 255.0 - 0.3) / 0.3).astype(np.float32), y=labels)
    np.savez(root / "arrays_test.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=test_labels)
    common = {"batch_size": BATCH, "shuffle": True, "validation_split": N_VALID}
    images_args = {**common, "transforms": AUGMENT, "eval_transforms": EVAL, "mode": "L"}
    return {
        "folder": {"type": "ImageFolderDataLoader", **images_args, "data_dir": str(root / "folder")},
        "csv": {"type": "ImageCsvDataLoader", **images_args, "annotations_file": str(root / "train.csv"),
                "img_dir": str(root / "folder")},
        "array": {"type": "ArrayDataLoader", **common, "data_file": str(root / "arrays.npz"),
                  "test_file": str(root / "arrays_test.npz")},
        "mnist": {"type": "MnistDataLoader", **{k: v for k, v in images_args.items() if k != "mode"},
                  "data_dir": str(root / "mnist"), "download": False},
    }


class Row(NamedTuple):
    loader: str  # a key of data
    workers: str  # "0", "2" or "2p" (2, persistent)
    stop: str  # a key of STOPS, or "max_time"
    features: tuple[str, ...] = ()  # keys of FEATURES


# 6 steps an epoch, 2 epochs. With accumulate_steps 4 the optimizer steps after steps 4, 6, 10, 12; the validations
# in the middle of an epoch (val_every_steps 2) follow steps 2, 4, 8, 10 (4 and 10 with accumulation).
FEATURES = {"ema": {"ema": {"decay": 0.9}}, "accumulate": {"accumulate_steps": 4}, "val_steps": {"val_every_steps": 2},
            "top_k": {"save_top_k": 1}, "bf16": {"amp": "bf16"}}
# Where the stop signal's flag is set: as epoch 1 ends (after its validation: checkpoint-epoch1.pth), after step 3
# (epoch 1's middle; step 4 with accumulation), after step 4 (a validation in the middle of epoch 1 just ran), after
# step 8 (inside the accumulation group of steps 7-10: it stops after step 10).
STOPS = {"epoch": {"epoch": 1}, "mid": {"step": 3}, "after_val": {"step": 4}, "in_group": {"step": 8}}
NEEDS = {"after_val": "val_steps", "in_group": "accumulate"}

# Every pair of loader, workers and stop (the arrays are served from memory: no persistent workers), and every
# feature with every loader, workers and stop (test_the_rows_hold_every_pair checks it).
ROWS = [
    Row("folder", "0", "after_val", ("ema", "accumulate", "val_steps")),
    Row("csv", "0", "mid", ("top_k",)),
    Row("array", "0", "in_group", ("ema", "accumulate", "top_k")),
    Row("mnist", "0", "epoch", ("top_k",)),
    Row("array", "0", "epoch", ("val_steps", "top_k", "bf16")),
    Row("array", "2", "after_val", ("val_steps",)),
    Row("array", "2", "mid", ("bf16",)),
    Row("csv", "2", "epoch", ("ema", "accumulate", "val_steps")),
    Row("csv", "2p", "after_val", ("val_steps",)),
    Row("csv", "2p", "in_group", ("accumulate", "val_steps", "bf16")),
    Row("folder", "2", "in_group", ("accumulate",)),
    Row("folder", "2p", "epoch", ("top_k",)),
    Row("folder", "2p", "mid", ("val_steps", "top_k", "bf16")),
    Row("mnist", "2", "after_val", ("val_steps", "top_k", "bf16")),
    Row("mnist", "2p", "in_group", ("accumulate",)),
    Row("mnist", "2p", "mid", ("ema", "accumulate")),
    Row("mnist", "0", "max_time", ("accumulate", "val_steps")),
]
FAST = 3  # the first rows: no workers, in -m "not slow"


def config_for(row: Row, data: dict, save_dir: Path) -> dict:
    config = tiny_config(save_dir, epochs=EPOCHS, tensorboard=False, log_step=1)
    for feature in row.features:
        config["trainer"].update(FEATURES[feature])
    args = dict(data[row.loader])
    config["data_loader"] = {"type": args.pop("type"), "args": args}
    args["num_workers"] = 0 if row.workers == "0" else 2
    if row.workers == "2p":
        args["persistent_workers"] = True
    config["arch"]["args"] = {"channels": 4}
    config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}
    return config


@contextlib.contextmanager
def stop_at(step: int | None = None, epoch: int | None = None, signum: int = signal.SIGTERM) -> Iterator[None]:
    """A stop signal arrives (its flag set as SignalStop's handler sets it) after global step `step`, or as epoch
    `epoch` ends (after its validation)."""
    on_step_end, on_epoch_end = Stops.on_step_end, Stops.on_epoch_end

    def step_end(self, loop):
        if loop.global_step == step:
            self.signals.requested = signum
        on_step_end(self, loop)

    def epoch_end(self, loop):
        if loop.epoch == epoch:
            self.signals.requested = signum
        on_epoch_end(self, loop)

    Stops.on_step_end, Stops.on_epoch_end = step_end, epoch_end
    try:
        yield
    finally:
        Stops.on_step_end, Stops.on_epoch_end = on_step_end, on_epoch_end


def run(config: dict, path: Path, run_id: str, *extra: str) -> None:
    path.write_text(json.dumps(config))
    main(["-c", str(path), "--run-id", run_id, *extra])


main = train.main


def final(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / f"checkpoint-epoch{EPOCHS}.pth", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    """Two final checkpoints hold the same state bit for bit: weights, EMA, optimizer, scheduler, monitor, scaler,
    step."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    assert (a.get("ema") is None) == (b.get("ema") is None)
    if a.get("ema") is not None:
        assert a["ema"]["updates"] == b["ema"]["updates"]
        for name, value in a["ema"]["state_dict"].items():
            assert torch.equal(value, b["ema"]["state_dict"][name]), ("ema", name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][i][name])), (i, name)
    for key in ("lr_scheduler", "monitor", "monitor_best", "global_step", "epoch", "scaler"):
        assert a.get(key) == b.get(key), key


def saved_at_stop(row: Row) -> str:
    """The checkpoint a row's stop writes: after the step it lands on (an optimizer step), or epoch 1's."""
    if row.stop == "epoch":
        return "checkpoint-epoch1.pth"
    group_end = {1: 4, 3: 4, 4: 4, 8: 10}  # with accumulate_steps 4: the end of the group the step is in
    step = 1 if row.stop == "max_time" else STOPS[row.stop]["step"]
    return f"checkpoint-step{group_end[step] if 'accumulate' in row.features else step}.pth"


def straight_and_resumed(row: Row, data: dict, tmp_path: Path) -> None:
    """The row's run straight, and stopped and resumed (in this process): the same final state, metrics.jsonl rows
    and checkpoint files."""
    save_dir = tmp_path / "saved"
    config = config_for(row, data, save_dir)
    run(config, tmp_path / "straight.json", "straight")
    ckpt_dir, log_dir = run_dir(save_dir, "split")
    if row.stop == "max_time":  # the first optimizer step: planned, exit 0
        run(config, tmp_path / "split.json", "split", "trainer.max_time=1e-9")
    else:
        with stop_at(**STOPS[row.stop]), pytest.raises(SystemExit) as stopped:
            run(config, tmp_path / "split.json", "split")
        assert stopped.value.code == 128 + signal.SIGTERM
    assert (ckpt_dir / "latest").read_text().strip() == saved_at_stop(row)
    main(["-r", str(ckpt_dir), *(["trainer.max_time=null"] if row.stop == "max_time" else [])])
    assert_same_run(save_dir, row)


def assert_same_run(save_dir: Path, row: Row) -> None:
    """Run "split" ended as run "straight": the same final state, metrics.jsonl rows and best checkpoints."""
    (straight_dir, straight_log), (ckpt_dir, log_dir) = run_dir(save_dir, "straight"), run_dir(save_dir, "split")
    assert read_metrics(log_dir, timing=False) == read_metrics(straight_log, timing=False)
    assert_identical(final(straight_dir), final(ckpt_dir))
    if "top_k" in row.features:  # the same best epoch kept
        assert sorted(p.name for p in straight_dir.glob("checkpoint-epoch*.pth")) == \
            sorted(p.name for p in ckpt_dir.glob("checkpoint-epoch*.pth"))


def _id(row: Row) -> str:
    return "-".join([row.loader, f"w{row.workers}", row.stop, *row.features])


@pytest.mark.parametrize("row", [pytest.param(row, id=_id(row), marks=[] if i < FAST else [pytest.mark.slow])
                                 for i, row in enumerate(ROWS)])
def test_a_stopped_and_resumed_run_is_its_straight_run(row, data, tmp_path):
    straight_and_resumed(row, data, tmp_path)


def test_the_rows_hold_every_pair():
    def pairs(row: Row) -> set:
        held = {("LW", row.loader, row.workers), ("LS", row.loader, row.stop), ("WS", row.workers, row.stop)}
        for f in row.features:
            held |= {("FL", f, row.loader), ("FW", f, row.workers), ("FS", f, row.stop)}
        return held

    held = set().union(*map(pairs, ROWS))
    loaders, workers, stops = ["folder", "csv", "array", "mnist"], ["0", "2", "2p"], list(STOPS)
    wanted = {("LW", l, w) for l in loaders for w in workers if (l, w) != ("array", "2p")}
    wanted |= {("LS", l, s) for l in loaders for s in stops} | {("WS", w, s) for w in workers for s in stops}
    for f in FEATURES:
        wanted |= {("FL", f, l) for l in loaders} | {("FW", f, w) for w in workers} | {("FS", f, s) for s in stops}
    assert wanted <= held, sorted(wanted - held)
    assert all(NEEDS[row.stop] in row.features for row in ROWS if row.stop in NEEDS)
    assert not any(row.loader == "array" and row.workers == "2p" for row in ROWS)


# ---- real signals to real processes (the straight runs and the resumes in this process)

# train.py with a signal sent after global step argv[1]: argv[2] the signal, argv[3] "group" to send it to the
# process group (a terminal's Ctrl-C reaches the DataLoader workers too) or "self"; then train.py's arguments.
SIGNAL_AT_STEP = """
import os, runpy, signal, sys
from trainer.parts import Stops
step, signum, to = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
on_step_end = Stops.on_step_end
def signalled(self, loop):
    if loop.global_step == step:
        os.killpg(0, signum) if to == "group" else os.kill(os.getpid(), signum)
    on_step_end(self, loop)
Stops.on_step_end = signalled
sys.argv = ["train.py", *sys.argv[4:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("row, step, signum, to", [
    (Row("folder", "2", "mid", ("ema",)), 3, signal.SIGINT, "group"),  # Ctrl-C
    (Row("csv", "2p", "after_val", ("val_steps", "bf16")), 4, signal.SIGTERM, "self"),
    (Row("mnist", "2", "mid", ("top_k",)), 9, signal.SIGKILL, "self"),  # the newest checkpoint: step 8's
], ids=["SIGINT", "SIGTERM", "kill-9"])
def test_a_process_stopped_by_a_signal_resumes_to_its_straight_run(row, step, signum, to, data, tmp_path):
    save_dir = tmp_path / "saved"
    config = config_for(row, data, save_dir)
    config["trainer"]["save_every_steps"] = 2  # kill -9 resumes from the newest of these
    run(config, tmp_path / "straight.json", "straight")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(config))
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # this process's: the same numbers
    stopped = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, str(step), str(int(signum)), to, "-c", str(path),
                              "--run-id", "split"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             start_new_session=True, env=threads)
    assert stopped.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), stopped.stderr
    ckpt_dir, _ = run_dir(save_dir, "split")
    newest = torch.load(ckpt_dir / (ckpt_dir / "latest").read_text().strip(), weights_only=True)["global_step"]
    if signum == signal.SIGKILL:  # step 8's, or an earlier one while step 8's was still being written in the background
        assert newest in (2, 4, 6, 8) and not list(ckpt_dir.glob("checkpoint-step1?.pth"))
    else:  # a stop waits for its checkpoint
        assert newest == step
    main(["-r", str(ckpt_dir)])
    assert_same_run(save_dir, row)
