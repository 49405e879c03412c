"""Batches per second of the catalogue's Cifar10DataLoader against the usual hand-written loading, in one process.

CIFAR-10-format files of random images are written to a temporary directory. The baseline is what one
writes by hand: torchvision.datasets.CIFAR10 with a v2 Compose and a torch DataLoader. Two settings:
  plain   ToImage, ToDtype, Normalize (ours: kept as uint8, batches sliced from one tensor and converted a batch
          at a time, no workers)
  augment RandomCrop(32, padding=4) and RandomHorizontalFlip before them, in num_workers processes
Each round times both, alternating which goes first; the ratio ours/baseline is the median over rounds.

    python benchmarks/data_loading.py [--samples 20000] [--batch-size 128] [--workers 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from data_loader.data_loaders import Cifar10DataLoader, _dataset_class  # noqa: E402
from fake_data import write_cifar  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
AUGMENT = [{"type": "RandomCrop", "args": {"size": 32, "padding": 4}}, "RandomHorizontalFlip"]


def baseline(root: str, augment: bool, batch_size: int, workers: int):
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
    transform = v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    # torchvision's class, checking the files' presence as ours does (the generated files have other md5s)
    dataset = _dataset_class("CIFAR10")(root, train=True, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def ours(root: str, augment: bool, batch_size: int, workers: int):
    return Cifar10DataLoader(root, batch_size, shuffle=True, validation_split=0, num_workers=workers,
                             download=False, transforms=AUGMENT if augment else None)


def batches_per_second(loader) -> float:
    start, n = time.perf_counter(), 0
    for x, y in loader:
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_cifar(Path(root), n_train=args.samples, n_test=10)
        for augment in (False, True):
            workers = args.workers
            loaders = {"baseline": baseline(root, augment, args.batch_size, workers),
                       "ours": ours(root, augment, args.batch_size, workers)}
            ratios = []
            for r in range(args.rounds):
                order = ["baseline", "ours"] if r % 2 == 0 else ["ours", "baseline"]
                speed = {name: batches_per_second(loaders[name]) for name in order}
                ratios.append(speed["ours"] / speed["baseline"])
                print(f"{'augment' if augment else 'plain':8s} round {r}: baseline {speed['baseline']:8.1f} "
                      f"batches/s, ours {speed['ours']:8.1f} batches/s (num_workers={workers})")
            print(f"{'augment' if augment else 'plain':8s} ratio ours/baseline: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
