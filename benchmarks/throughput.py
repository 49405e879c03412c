"""Training throughput of the Trainer against a hand-written loop on the same task, in one process.

LeNet (MnistModel) on MNIST-shaped random tensors, Adam, 10% validation. The raw loop slices the
in-memory tensors by index and accumulates loss and accuracy on the device, reading them once per
epoch. The Trainer runs as train.py runs it: TensorBoard, progress bar, metrics.jsonl and checkpoints
on. Each round runs both, alternating which goes first; the last line is the median of the rounds'
trainer/raw ratios (pairs run back to back share the machine's state, which drifts between rounds).
--torchmetrics adds torchmetrics' MulticlassF1Score (macro) to both: the trainer as a configured metric, the
raw loop updating it each batch and computing it once per epoch and phase. --ema keeps an exponential moving
average of the weights in both (trainer.ema; the raw loop with torch's AveragedModel) and validates with it.

    python benchmarks/throughput.py [--samples 60000] [--epochs 2] [--batch-size 128] [--rounds 5] [--torchmetrics]
                                    [--ema]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base import BaseDataLoader, RunOutputs  # noqa: E402
from config import EMASettings, TrainerSettings  # noqa: E402
from model.metric import accuracy  # noqa: E402
from model.model import MnistModel  # noqa: E402
from trainer import Trainer  # noqa: E402
from utils.checkpoint import RunDirs  # noqa: E402


def synthetic(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def f1_metric(enabled: bool, **args):
    """torchmetrics' macro F1 over the 10 classes, or None."""
    if not enabled:
        return None
    from torchmetrics.classification import MulticlassF1Score
    return MulticlassF1Score(num_classes=10, average="macro", **args)


def raw_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, torchmetrics: bool = False,
             ema: bool = False) -> float:
    """A careful hand-written loop; returns training samples per second (validation time included)."""
    torch.manual_seed(0)
    f1 = f1_metric(torchmetrics, validate_args=False)  # inputs known to be right: no checks that read the device
    model = MnistModel()
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True) if ema else None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_valid = len(x) // 10
    valid, train = order[:n_valid], order[n_valid:]
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros(())
        perm = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
        for i in range(0, len(perm), batch_size):
            index = perm[i:i + batch_size]
            data, target = x[index], y[index]
            optimizer.zero_grad(set_to_none=True)
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            loss_sum += loss.detach() * len(index)
            correct += (output.argmax(1) == target).sum()
            if f1 is not None:
                f1.update(output.detach(), target)
        train_f1 = f1.compute().item() if f1 is not None else None
        if f1 is not None:
            f1.reset()
        evaluated = model if average is None else average.module
        evaluated.eval()
        with torch.no_grad():
            val_loss = torch.zeros(())
            for i in range(0, n_valid, batch_size):
                output, target = evaluated(x[valid[i:i + batch_size]]), y[valid[i:i + batch_size]]
                val_loss += F.nll_loss(output, target, reduction="sum")
                if f1 is not None:
                    f1.update(output, target)
        val_f1 = f1.compute().item() if f1 is not None else None
        if f1 is not None:
            f1.reset()
        _ = (loss_sum / len(train)).item(), (correct / len(train)).item(), float(val_loss) / n_valid, train_f1, val_f1
    return len(train) * epochs / (time.perf_counter() - started)


def trainer_run(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, torchmetrics: bool = False,
                ema: bool = False) -> float:
    """The same task through the Trainer with its defaults; returns training samples per second."""
    torch.manual_seed(0)
    loader = BaseDataLoader(TensorDataset(x, y), batch_size, True, 0.1, 0)
    model = MnistModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainerSettings(epochs=epochs, monitor="min val_loss", ema=EMASettings(decay=0.999) if ema else None)
        outputs = RunOutputs().open(RunDirs(Path(tmp), Path(tmp)), settings)
        metrics = {"accuracy": accuracy, **({"f1_macro": f1_metric(True)} if torchmetrics else {})}
        trainer = Trainer(model, F.nll_loss, metrics, optimizer, settings, data_loader=loader,
                          valid_data_loader=loader.split_validation(), outputs=outputs)
        started = time.perf_counter()
        trainer.train()
        return loader.n_samples * epochs / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torchmetrics", action="store_true", help="add torchmetrics' macro F1 to both loops")
    parser.add_argument("--ema", action="store_true", help="keep a moving average of the weights in both loops")
    args = parser.parse_args(argv)
    x, y = synthetic(args.samples)
    print(f"{args.samples} samples, batch {args.batch_size}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}"
          + (", torchmetrics MulticlassF1Score in both" if args.torchmetrics else "")
          + (", EMA of the weights in both" if args.ema else ""))
    options = (args.torchmetrics, args.ema)
    raw_loop(x[:1024], y[:1024], 1, args.batch_size, *options)  # warm-up: one-time imports and allocations
    trainer_run(x[:1024], y[:1024], 1, args.batch_size, *options)
    ratios = []
    for round_ in range(1, args.rounds + 1):
        runs = [("raw", raw_loop), ("trainer", trainer_run)]
        speed = dict((name, run(x, y, args.epochs, args.batch_size, *options))
                     for name, run in runs[::1 - 2 * (round_ % 2 == 0)])
        ratios.append(speed["trainer"] / speed["raw"])
        print(f"round {round_}: raw {speed['raw']:,.0f} samples/s, trainer {speed['trainer']:,.0f} samples/s, "
              f"ratio {ratios[-1]:.3f}")
    ratio = statistics.median(ratios)
    print(f"ratio trainer/raw: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
