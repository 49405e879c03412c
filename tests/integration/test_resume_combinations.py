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
import signal
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
    test_images, test_labels = _digits(16, 10, 1)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image, mode="L").save(root / "folder" / str(label) / f"{i}.png") if (
            (root / "folder" / str(label)).mkdir(parents=True, exist_ok=True) or True) else None
        rows.append(f"{label}/{i}.png,{label}")
    (root / "train.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    mnist = root / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    big, big_test = _digits(N_TRAIN, 28, 2), _digits(16, 28, 3)
    for split, (x, y) in (("train", big), ("t10k", big_test)):
        write_idx(mnist / f"{split}-images-idx3-ubyte", x)
        write_idx(mnist / f"{split}-labels-idx1-ubyte", y)
    np.savez(root / "arrays.npz", x=((images[:, None, 1:9, 1:9] / 255.0 - 0.3) / 0.3).astype(np.float32), y=labels)
    np.savez(root / "arrays_test.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=test_labels[:4])
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
    workers: str  # "0", "2" or "2p" (persistent)
    stop: str  # "epoch", "mid", "after_val", "in_group", "max_time"
    features: tuple[str, ...] = ()  # of FEATURES


FEATURES = {"ema": {"ema": {"decay": 0.9}}, "accumulate": {"accumulate_steps": 4}, "val_steps": {"val_every_steps": 2},
            "top_k": {"save_top_k": 1}, "bf16": {"amp": "bf16"}}


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
    train.main(["-c", str(path), "--run-id", run_id, *extra])


def final(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / f"checkpoint-epoch{EPOCHS}.pth", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    """The states of two final checkpoints are equal bit for bit."""
    for key in ("state_dict", "ema"):
        assert (a.get(key) is None) == (b.get(key) is None), key
        if a.get(key) is not None:
            for name, value in a[key]["state_dict" if key == "ema" else None or slice(None)].items() \
                    if key == "ema" else a[key].items():
                other = b[key]["state_dict"][name] if key == "ema" else b[key][name]
                assert torch.equal(value, other), (key, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][i][name])), (i, name)
    for key in ("lr_scheduler", "monitor", "global_step", "epoch", "scaler"):
        assert a.get(key) == b.get(key), key


def straight_and_resumed(row: Row, data: dict, tmp_path: Path) -> None:
    save_dir = tmp_path / "saved"
    config = config_for(row, data, save_dir)
    run(config, tmp_path / "straight.json", "straight")
    ckpt_dir, log_dir = run_dir(save_dir, "split")
    if row.stop == "max_time":
        run(config, tmp_path / "split.json", "split", "trainer.max_time=1e-9")
        train.main(["-r", str(ckpt_dir), "trainer.max_time=null"])
    else:
        where = {"epoch": {"epoch": 1}, "mid": {"step": 3}, "after_val": {"step": 8}, "in_group": {"step": 2}}
        with stop_at(**where[row.stop]), pytest.raises(SystemExit):
            run(config, tmp_path / "split.json", "split")
        train.main(["-r", str(ckpt_dir)])
    straight_dir, straight_log = run_dir(save_dir, "straight")
    assert read_metrics(log_dir, timing=False) == read_metrics(straight_log, timing=False)
    assert_identical(final(straight_dir), final(ckpt_dir))


def test_random_crop_with_workers_stopped_mid_epoch_resumes_bit_exact(data, tmp_path):
    straight_and_resumed(Row("folder", "2", "mid"), data, tmp_path)
