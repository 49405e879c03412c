"""Wall time from the command until validation accuracy first reaches 97%, and the final test accuracy, for the
default config.json through train.py and for a careful hand-written loop, each a whole process of its own.

The job is config.json's: scikit-learn's 8x8 digits (shipped with scikit-learn), DigitsModel, batch 64, Adam (lr
0.002, amsgrad), StepLR (10, 0.5), nll_loss, up to 30 epochs, early stop after 10 epochs without a better
val_accuracy. The two sides:
  ours      python train.py -c config.json with trainer.save_dir a temporary directory (and trainer.epochs);
            then python test.py -r RUN_DIR (its newest checkpoint: the last epoch's) for the test accuracy
  baseline  the same data as DigitsDataLoader (the stratified 20% test split, the training images scaled by their
            mean and std, the same fixed 15% validation part), the same model (a copy: the process imports
            nothing of the project), seed, optimizer, scheduler and early stop; batches sliced from the tensors
            in the order ours serves them (a generator seeded with seed + epoch), so that both take the same steps;
            validation each epoch; the test split evaluated with the last epoch's weights, as test.py does ours
How the times are taken: the parent notes the wall clock (time.time()) when it starts each command. Each side
runs as `python benchmarks/time_to_accuracy.py --child ours|baseline ...`; ours runs train.py's own __main__ block
in that process, with two wrappers set in the child only (the project is not edited): BaseTrainer.train prints the
wall clock at its entry (start-up: imports, data, model and the run directory done; the first step follows), and
MetricsFile.append prints the wall clock with each row it writes to metrics.jsonl (after the epoch's validation).
The baseline prints the same two. Time to target = the first row with val_accuracy >= target, from the command.
torch's import alone, in a fresh process, is printed for reference. The last line is the ratio of the times to
target (n/a when a side never reaches it; its best is reported); with --rounds > 1 the sides alternate which runs
first and the medians of their times are compared.

    python benchmarks/time_to_accuracy.py [--target 0.97] [--epochs 30] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()  # the child's first line, before torch is imported

from memory import ROOT, Child, mark, run_child, torch_import_seconds, train_py_in_this_process  # noqa: E402

CONFIG = json.loads((ROOT / "config.json").read_text())
# config.json's settings, written out as a hand-written script has them (a test checks that they agree)
SEED, BATCH_SIZE, VALIDATION_SPLIT = 123, 64, 0.15
LR, AMSGRAD, STEP_SIZE, GAMMA, EARLY_STOP = 0.002, True, 10, 0.5, 10


# -- the children
def ours(save_dir: str, epochs: int) -> int:
    sys.path.insert(0, str(ROOT))
    from logger.reporter import MetricsFile

    append = MetricsFile.append

    def marked_append(self, record: dict) -> None:
        append(self, record)
        mark("row", f"{time.time()} {json.dumps(record)}")

    MetricsFile.append = marked_append  # this process only
    return train_py_in_this_process(["-c", str(ROOT / "config.json"), "--run-id", "tta",
                                     f"trainer.save_dir={save_dir}", f"trainer.epochs={epochs}"])


def digits_cnn(num_classes: int = 10, channels: int = 32, dropout: float = 0.25):
    """The project's DigitsModel, written out as a hand-written script would have it."""
    from torch import nn
    from torch.nn import functional as F

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.head = nn.Sequential(
                nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 16, 128), nn.ReLU(),
                nn.Dropout(dropout), nn.Linear(128, num_classes),
            )

        def forward(self, x):
            return F.log_softmax(self.head(self.features(x)), dim=1)

    return DigitsCNN()


def digits_splits():
    """(training images, labels), (test images, labels) as DigitsDataLoader makes them, and the training part's
    (training indices, validation indices) as BaseDataLoader splits it."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_test = x_train / 16.0, x_test / 16.0
    mean, std = x_train.mean(), x_train.std()

    def tensors(x, y):
        return torch.as_tensor((x - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.as_tensor(y)

    order = np.random.RandomState(0).permutation(len(x_train))  # a fixed validation part, as ours holds back
    n_valid = int(len(x_train) * VALIDATION_SPLIT)
    parts = torch.as_tensor(np.sort(order[n_valid:])), torch.as_tensor(np.sort(order[:n_valid]))
    return tensors(x_train, y_train), tensors(x_test, y_test), parts


def baseline(epochs: int) -> int:
    """config.json's job written by hand: slices of in-memory tensors, values summed on the device."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as ours with n_gpu 1
    (x, y), (x_test, y_test), (train_idx, valid_idx) = digits_splits()
    x, y, x_test, y_test = x.to(device), y.to(device), x_test.to(device), y_test.to(device)
    model = digits_cnn().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=0, amsgrad=AMSGRAD)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)

    def evaluate(index: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> float:
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(0, len(index), BATCH_SIZE):
                batch = index[i:i + BATCH_SIZE].to(device)
                correct += (model(images[batch]).argmax(1) == labels[batch]).sum()
        return correct.item() / len(index)

    mark("training-starts", time.time())
    best, wait = -1.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(SEED + epoch))]
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(order), BATCH_SIZE):
            batch = order[i:i + BATCH_SIZE].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(batch)
        scheduler.step()
        val_accuracy = evaluate(valid_idx, x, y)
        row = {"epoch": epoch, "loss": loss_sum.item() / len(order), "val_accuracy": val_accuracy}
        mark("row", f"{time.time()} {json.dumps(row)}")
        if val_accuracy > best:
            best, wait = val_accuracy, 0
        else:
            wait += 1
        if wait >= EARLY_STOP:
            break
    mark("test", json.dumps({"accuracy": evaluate(torch.arange(len(y_test)), x_test, y_test), "epoch": epoch}))
    return 0


def child(side: str, save_dir: str, epochs: int) -> int:
    mark("script-starts", STARTED)
    status = ours(save_dir, epochs) if side == "ours" else baseline(epochs)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)  # KiB on Linux
    return status


# -- the parent
def rows(run: Child) -> list[tuple[float, dict]]:
    """(seconds from the command, the row) for each epoch's row."""
    return [(float(at) - run.launched, json.loads(row)) for at, row in (m.split(" ", 1) for m in run.marks["row"])]


def test_py(run_dir: Path, out: Path) -> dict:
    """python test.py -r RUN_DIR, as another process; its results."""
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "-r", str(run_dir), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"test.py failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def report(label: str, run: Child, target: float, test: dict) -> float | None:
    """Print a side's figures; its time to target, or None."""
    epochs = rows(run)
    reached = next(((t, row) for t, row in epochs if row["val_accuracy"] >= target), None)
    best_t, best = max(epochs, key=lambda e: e[1]["val_accuracy"])
    first = (f"val_accuracy {reached[1]['val_accuracy']:.4f} >= {target} at epoch {reached[1]['epoch']}, "
             f"{reached[0]:.2f} s from the command" if reached else
             f"never reached val_accuracy {target} in {len(epochs)} epochs")
    print(f"{label}: {first}; best val_accuracy {best['val_accuracy']:.4f} (epoch {best['epoch']}, "
          f"{best_t:.2f} s); {len(epochs)} epochs, wall {run.wall:.1f} s; start-up {run.startup_text()}; "
          f"test accuracy {test['accuracy']:.4f} (weights of epoch {test['epoch']})")
    return reached[0] if reached else None


def main(argv: list[str] | None = None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.97, help="the validation accuracy to reach")
    parser.add_argument("--epochs", type=int, default=CONFIG["trainer"]["epochs"], help="at most (config.json's)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each side; the times' medians are compared")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        raise SystemExit(child(args.child, args.save_dir, args.epochs))

    print(f"config.json ({CONFIG['name']}): target val_accuracy {args.target}, at most {args.epochs} epochs; "
          f"{sys.executable}")
    print(f"torch import alone: {torch_import_seconds():.2f} s (a fresh process)")
    times: dict[str, list[float | None]] = {"ours": [], "baseline": []}
    for round_ in range(1, args.rounds + 1):
        for side in ["ours", "baseline"] if round_ % 2 else ["baseline", "ours"]:
            times[side].append(run_side(side, args, f"round {round_} "))
    missing = [side for side, t in times.items() if None in t]
    if missing:
        print(f"ratio ours/baseline: n/a ({' and '.join(missing)} did not reach val_accuracy {args.target}"
              f"{' in every round' if args.rounds > 1 else ''})")
        return None
    median = {side: statistics.median(t) for side, t in times.items()}
    if args.rounds > 1:
        print(f"median time to val_accuracy {args.target} over {args.rounds} rounds: ours {median['ours']:.2f} s, "
              f"baseline {median['baseline']:.2f} s")
    ratio = median["ours"] / median["baseline"]
    print(f"ratio ours/baseline: {ratio:.2f}")
    return ratio


def run_side(side: str, args: argparse.Namespace, prefix: str) -> float | None:
    """One side's run (ours: train.py, then test.py), reported; its time to target, or None."""
    if side == "baseline":
        run = run_child(__file__, ["--child", "baseline", "--epochs", str(args.epochs)])
        return report(f"{prefix}baseline (hand-written)", run, args.target, json.loads(run.marks["test"][0]))
    with tempfile.TemporaryDirectory() as tmp:
        run = run_child(__file__, ["--child", "ours", "--save-dir", tmp, "--epochs", str(args.epochs)])
        test = test_py(Path(tmp) / "models" / CONFIG["name"] / "tta", Path(tmp) / "test_results.json")
        return report(f"{prefix}ours (train.py, test.py)", run, args.target, test)

if __name__ == "__main__":
    main()
