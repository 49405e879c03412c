"""What checkpoints cost the training loop: the Trainer writing a checkpoint every epoch, in the background (the
default, trainer.async_checkpoint) and on the training path (async_checkpoint false), against the same Trainer
writing none, in one process.

An MLP on random tensors, Adam, monitor "min val_loss" (as config.json: model_best.pth too when validation
improves), metrics.jsonl written by all three. Its checkpoint holds the weights and Adam's two moments, about 12 bytes
a parameter (--width 2048: 6.3 M parameters, a 76 MB file). The time is all of train(): it returns once its last
checkpoint is on disk. Each round runs the three after one another, in a rotating order (the machine's state drifts
between rounds); the last line is the median over the rounds of background/none, with on-the-path/none beside it.
benchmarks/gpu_check.py measures the same on a GPU with resnet18.

    python benchmarks/checkpointing.py [--width 2048] [--samples 4096] [--epochs 4] [--batch-size 128] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base import BaseDataLoader, RunOutputs  # noqa: E402
from config import TrainerSettings  # noqa: E402
from model.metric import accuracy  # noqa: E402
from trainer import Trainer  # noqa: E402
from utils.checkpoint import Checkpointer, RunDirs  # noqa: E402

WRITES = ("none", "path", "background")  # no checkpoint; async_checkpoint false; async_checkpoint true
INPUTS = 1024


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(INPUTS, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def trainer_seconds(data: TensorDataset, width: int, epochs: int, batch_size: int, writes: str, out: Path) -> float:
    """Seconds of trainer.train() with a checkpoint every epoch as `writes` says (one of WRITES)."""
    torch.manual_seed(0)
    loader = BaseDataLoader(data, batch_size, True, 0.1, 0)
    model = mlp(width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    settings = TrainerSettings(epochs=epochs, monitor="min val_loss", verbosity=0, tensorboard=False,
                               async_checkpoint=writes == "background")
    out.mkdir(parents=True)
    outputs = RunOutputs().open(RunDirs(out, out), settings)
    if writes == "none":
        outputs.checkpointer = Checkpointer(None)
    trainer = Trainer(model, F.cross_entropy, {"accuracy": accuracy}, optimizer, settings, data_loader=loader,
                      valid_data_loader=loader.split_validation(), outputs=outputs)
    os.sync()  # the runs before this one leave no writing to the disk behind
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(out)
    return seconds


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.samples, INPUTS, generator=generator),
                         torch.randint(0, 10, (args.samples,), generator=generator))
    parameters = sum(p.numel() for p in mlp(args.width).parameters())
    print(f"MLP of {parameters / 1e6:.1f} M parameters, Adam, {args.samples} samples, batch {args.batch_size}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads, torch {torch.__version__}")
    background, path = [], []
    with tempfile.TemporaryDirectory(prefix="checkpointing-") as tmp:
        trainer_seconds(TensorDataset(*data[:512]), args.width, 1, args.batch_size, "background", Path(tmp) / "warm")
        state = {"model": mlp(args.width).state_dict()}
        print(f"checkpoint file: {3 * sum(t.nbytes for t in state['model'].values()) / 1e6:.0f} MB (weights and "
              f"Adam's two moments), and model_best.pth when validation improves")
        for round_ in range(1, args.rounds + 1):
            order = WRITES[round_ % 3:] + WRITES[:round_ % 3]
            seconds = {writes: trainer_seconds(data, args.width, args.epochs, args.batch_size, writes,
                                               Path(tmp) / f"{round_}-{writes}") for writes in order}
            background.append(seconds["none"] / seconds["background"])
            path.append(seconds["none"] / seconds["path"])
            print(f"round {round_}: " + ", ".join(f"{w} {seconds[w]:.2f} s" for w in WRITES)
                  + f"; speed against none: background {background[-1]:.3f}, on the path {path[-1]:.3f}")
    ratio = statistics.median(background)
    print(f"ratio background/none: {ratio:.2f} (on the training path/none: {statistics.median(path):.2f})")
    return ratio


if __name__ == "__main__":
    main()
