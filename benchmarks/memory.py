"""Peak resident memory of the original template's default job through train.py, through a hand-written torchvision
loop and, where they are at hand, through the original template itself and through Lightning; each a whole process.

The job is the original pytorch-template's default: LeNet (MnistModel) on MNIST, batch 128, 10% validation, Adam
(lr 1e-3, amsgrad, as configs/mnist.json has it), nll_loss, accuracy and top-3 accuracy, 2 epochs. MNIST-format
IDX files of random pixels (60,000 training and 10,000 test images by default) are written to a temporary
directory in torchvision's layout. The sides:
  ours      python train.py -c configs/mnist.json with data_dir (the files), download=false, trainer.epochs,
            trainer.save_dir (a temporary directory) and num_workers=0; everything else as the config has it:
            TensorBoard, progress bar, metrics.jsonl, a checkpoint each epoch
  baseline  torchvision.datasets.MNIST(root, download=False) with ToTensor + Normalize, a 90/10 random_split,
            DataLoaders (batch 128, the training one shuffled), the same LeNet (a copy: the process imports nothing
            of the project), optimizer and StepLR; validation each epoch, a checkpoint each epoch, and the
            TensorBoard scalars ours writes, through torch's SummaryWriter (train/ and valid/ writers: the loss
            every 50 steps; loss, accuracy and top-3 accuracy each epoch, the learning rate)
  original  with --original DIR, a checkout of https://github.com/victoresque/pytorch-template (it needs pandas<3):
            its own train.py and config.json, with data_dir, trainer.epochs, trainer.save_dir and num_workers=0
            changed; everything else as it has it (TensorBoard with an image grid every log step, a checkpoint each
            epoch)
  lightning where `lightning` is installed (pip install lightning; not a dependency of the project): the same LeNet,
            data, optimizer and metrics as a LightningModule under lightning.Trainer at its defaults (TensorBoard
            logger, progress bar, a checkpoint each epoch, two sanity validation batches)
With --no-tensorboard, ours runs with trainer.tensorboard=false and the loop without its writers (the original
and Lightning keep theirs). boto3 and botocore, which TensorBoard's file layer imports where they happen to be
installed and which no side's requirements install, are hidden on every side: each side holds what it would on a
machine with its requirements only. num_workers is 0 on every side: getrusage(RUSAGE_SELF) counts the process
itself, not DataLoader workers (and ours starts none anyway: its batches are sliced from one tensor in memory).

Each side runs as `python benchmarks/memory.py --child SIDE --data DIR --save-dir DIR --epochs N`, which runs the job
in-process (ours and original: their train.py's own __main__ block, with sys.argv set) and prints its peak resident
memory (resource.getrusage(RUSAGE_SELF).ru_maxrss, KiB on Linux) as its last line. Wall time is from the command to
the process's exit. Start-up is from the command to the first training step: the child wraps the trainer's train
method (ours and original; Lightning: a callback at the first training batch), in the child only, to print the wall
clock at its entry, after imports, data, model and the run directory. torch's import alone, in a fresh process, is
printed for reference. With --rounds > 1 the order of the sides turns each round and each figure is the median of
its rounds; a line gives ours' peak over each other side's, the last line over the hand-written loop's.

    python benchmarks/memory.py [--samples 60000] [--epochs 2] [--rounds 1] [--original DIR] [--sides A,B]
                                [--no-tensorboard]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import runpy
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

STARTED = time.time()  # the child's first line, before torch is imported; the parent knows when it ran the command

ROOT = Path(__file__).resolve().parents[1]
MARK = "@bench"  # the children's lines for the parent start with it; train.py's own output is left alone
MEAN, STD = (0.1307,), (0.3081,)  # MNIST's, as the original template normalises
TENSORBOARD = True  # False with --no-tensorboard: ours and the loop write no TensorBoard events


# -- the parent: a command per side, and what its lines say
class Child(NamedTuple):
    """A child's run: when its command started, its wall time to exit, its marked lines by key, its last line."""
    launched: float
    wall: float
    marks: dict[str, list[str]]
    last: str

    def startup(self) -> float:
        """Seconds from the command to the first training step."""
        return float(self.marks["training-starts"][0]) - self.launched

    def startup_text(self) -> str:
        """The start-up, and the interpreter's part of it (from the command to the script's first line)."""
        interpreter = float(self.marks["script-starts"][0]) - self.launched
        return f"{self.startup():.2f} s (interpreter {interpreter:.2f} s, then imports, data, model)"


def run_child(script: str, argv: list[str]) -> Child:
    """Run a benchmark's child command, `python SCRIPT ARGV`, and read its lines. A child that fails stops the
    benchmark with its output's tail."""
    launched = time.time()
    result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - launched
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:2])} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    marks: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith(MARK + " "):
            _, key, *values = line.split(" ", 2)
            marks.setdefault(key, []).append(values[0] if values else "")
    return Child(launched, wall, marks, result.stdout.strip().splitlines()[-1])


def torch_import_seconds() -> float:
    """How long `import torch` takes in a fresh interpreter (its files already in the page cache)."""
    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


# -- the children
def mark(key: str, value: object = "") -> None:
    print(f"{MARK} {key} {value}", flush=True)


def run_train_py(script: Path, argv: list[str], trainer_class) -> int:
    """`python SCRIPT ARGV` in this process (its __main__ block runs), marking when TRAINER_CLASS.train is entered;
    its exit status."""
    train = trainer_class.train

    def marked_train(self) -> None:
        mark("training-starts", time.time())
        train(self)

    trainer_class.train = marked_train  # this process only: the first training step follows at once
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def train_py_in_this_process(argv: list[str]) -> int:
    """`python train.py ARGV` in this process, marking when training starts; its exit status."""
    sys.path.insert(0, str(ROOT))
    from base import BaseTrainer

    return run_train_py(ROOT / "train.py", argv, BaseTrainer)


def ours(data: str, save_dir: str, epochs: int, template: str | None = None) -> int:
    return train_py_in_this_process([
        "-c", str(ROOT / "configs" / "mnist.json"), "--run-id", "memory", f"data_loader.args.data_dir={data}",
        "+data_loader.args.download=false", "data_loader.args.num_workers=0", f"trainer.epochs={epochs}",
        f"trainer.save_dir={save_dir}", f"trainer.tensorboard={str(TENSORBOARD).lower()}"])


def original(data: str, save_dir: str, epochs: int, template: str | None = None) -> int:
    """The original template's train.py on its own config.json, with the data, epochs, save_dir and num_workers
    changed. It runs from its own directory: it reads logger/logger_config.json relative to the working one."""
    root = Path(template).resolve()
    config = json.loads((root / "config.json").read_text())
    config["data_loader"]["args"].update(data_dir=data, num_workers=0)
    config["trainer"].update(epochs=epochs, save_dir=save_dir)
    config_path = Path(save_dir) / "original_config.json"
    config_path.write_text(json.dumps(config, indent=4))
    os.chdir(root)
    sys.path.insert(0, str(root))
    from base import BaseTrainer

    return run_train_py(root / "train.py", ["-c", str(config_path)], BaseTrainer)


def lenet():
    """The project's MnistModel, written out as a hand-written script would have it."""
    from torch import nn
    from torch.nn import functional as F

    class LeNet(nn.Module):
        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
            self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
            self.conv2_drop = nn.Dropout2d()
            self.fc1 = nn.Linear(320, 50)
            self.fc2 = nn.Linear(50, num_classes)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = F.relu(self.fc1(x.flatten(1)))
            x = F.dropout(x, training=self.training)
            return F.log_softmax(self.fc2(x), dim=1)

    return LeNet()


def baseline(data: str, save_dir: str, epochs: int, template: str | None = None) -> int:
    """The same job written by hand with torchvision's MNIST and torch's DataLoader."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    torch.manual_seed(123)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as ours with n_gpu 1
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.MNIST(data, train=True, download=False, transform=transform)
    n_valid = int(len(dataset) * 0.1)
    train_set, valid_set = random_split(dataset, [len(dataset) - n_valid, n_valid],
                                        generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=0)
    valid_loader = DataLoader(valid_set, batch_size=128, num_workers=0)
    model = lenet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.1)

    def counts(output, target, loss):  # loss sum, correct, correct in the top 3: summed on the device
        top3 = (output.topk(3, dim=1).indices == target[:, None]).any(1)
        return torch.stack([loss * len(target), (output.argmax(1) == target).sum(), top3.sum()])

    if TENSORBOARD:
        from torch.utils.tensorboard import SummaryWriter

        writers = {part: SummaryWriter(Path(save_dir) / "log" / part) for part in ("train", "valid")}
    else:
        writers = {}
    mark("training-starts", time.time())
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        sums = torch.zeros(3, device=device)
        for data_, target in train_loader:
            data_, target = data_.to(device), target.to(device)
            optimizer.zero_grad(set_to_none=True)
            output = model(data_)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            sums += counts(output.detach(), target, loss.detach())
            step += 1
            if writers and step % 50 == 0:  # as ours: the loss every log_step (50) steps
                writers["train"].add_scalar("loss_step", loss.item(), step)
        scheduler.step()
        model.eval()
        val_sums = torch.zeros(3, device=device)
        with torch.no_grad():
            for data_, target in valid_loader:
                data_, target = data_.to(device), target.to(device)
                output = model(data_)
                val_sums += counts(output, target, F.nll_loss(output, target))
        train_values, val_values = (sums / len(train_set)).tolist(), (val_sums / n_valid).tolist()
        print(f"epoch {epoch}: loss, accuracy, top-3 {train_values}; validation {val_values}", flush=True)
        if writers:
            for part, values in (("train", train_values), ("valid", val_values)):
                for tag, value in zip(("loss", "accuracy", "top_k_acc"), values):
                    writers[part].add_scalar(tag, value, epoch)
            writers["train"].add_scalar("lr", scheduler.get_last_lr()[0], epoch)
        torch.save({"epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict()}, Path(save_dir) / f"checkpoint-epoch{epoch}.pth")
    for writer in writers.values():
        writer.close()
    return 0


def lightning(data: str, save_dir: str, epochs: int, template: str | None = None) -> int:
    """The same job as a LightningModule under lightning.Trainer at its defaults."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    class LeNetModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = lenet()

        def forward(self, x):
            return self.model(x)

        def step(self, batch, stage: str):
            data_, target = batch
            output = self.model(data_)
            loss = F.nll_loss(output, target)
            top3 = (output.topk(3, dim=1).indices == target[:, None]).any(1)
            self.log_dict({f"{stage}_loss": loss, f"{stage}_accuracy": (output.argmax(1) == target).float().mean(),
                           f"{stage}_top_3": top3.float().mean()}, on_step=False, on_epoch=True,
                          prog_bar=stage == "val")
            return loss

        def training_step(self, batch, batch_idx):
            return self.step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self.step(batch, "val")

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=0, amsgrad=True)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.1)]

    class MarkFirstStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 0 and batch_idx == 0:
                mark("training-starts", time.time())

    L.seed_everything(123, verbose=False)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.MNIST(data, train=True, download=False, transform=transform)
    n_valid = int(len(dataset) * 0.1)
    train_set, valid_set = random_split(dataset, [len(dataset) - n_valid, n_valid],
                                        generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_epochs=epochs, devices=1, default_root_dir=save_dir, callbacks=[MarkFirstStep()])
    trainer.fit(LeNetModule(), DataLoader(train_set, batch_size=128, shuffle=True, num_workers=0),
                DataLoader(valid_set, batch_size=128, num_workers=0))
    return 0


SIDES = {"ours": ours, "baseline": baseline, "original": original, "lightning": lightning}
LABELS = {"ours": "ours (train.py)", "baseline": "baseline (torchvision loop)", "original": "original template",
          "lightning": "Lightning"}


# Packages TensorBoard's file layer imports for remote log directories where they happen to be installed, that no
# side's requirements install: hidden on every side, so that each measures what it holds on a machine with its
# requirements only. (ours hides them, and fsspec, itself; fsspec comes with torch, so the other sides import it.)
NOT_REQUIRED = ("boto3", "botocore")


def child(side: str, data: str, save_dir: str, epochs: int, template: str | None) -> int:
    mark("script-starts", STARTED)
    sys.modules.update(dict.fromkeys(NOT_REQUIRED))  # `import boto3` raises ImportError, as where it is missing
    status = SIDES[side](data, save_dir, epochs, template)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)  # KiB on Linux
    return status


# -- the data
def write_idx(path: Path, array) -> None:
    """An IDX file as MNIST ships it: big-endian magic (2051 images, 2049 labels), sizes, uint8 data."""
    import numpy as np

    magic = {3: 2051, 1: 2049}[array.ndim]
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int, n_test: int) -> None:
    """MNIST-format files of random pixels and labels in torchvision's layout: root/MNIST/raw."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.randint(0, 10, n, dtype=np.uint8))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000, help="training images (test images: a sixth)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--original", metavar="DIR", help="a checkout of victoresque/pytorch-template to run too")
    parser.add_argument("--sides", type=lambda text: text.split(","), metavar="A,B",
                        help=f"which of {','.join(SIDES)} to run (default: ours, baseline, original with --original, "
                             f"lightning where installed)")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="ours with trainer.tensorboard=false, the loop without its writers")
    parser.add_argument("--child", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global TENSORBOARD
    TENSORBOARD = not args.no_tensorboard
    if args.child:
        raise SystemExit(child(args.child, args.data, args.save_dir, args.epochs, args.original))
    if args.original and not (Path(args.original) / "train.py").is_file():
        parser.error(f"--original {args.original}: no train.py there; pass a checkout of "
                     f"https://github.com/victoresque/pytorch-template")

    have_lightning = importlib.util.find_spec("lightning") is not None
    if args.sides is None:
        args.sides = ["baseline", "ours"] + ["original"] * bool(args.original) + ["lightning"] * have_lightning
    if not {"ours", "baseline"} <= set(args.sides) <= set(SIDES):
        parser.error(f"--sides {','.join(args.sides)}: name ours and baseline, and any of original and lightning "
                     f"to add")
    if "original" in args.sides and not args.original:
        parser.error("--sides original needs --original DIR")
    if "lightning" in args.sides and not have_lightning:
        parser.error("--sides lightning: lightning is not installed (pip install lightning)")
    sides = args.sides
    print(f"MNIST-format files of random pixels: {args.samples} training + {args.samples // 6} test images; batch 128, "
          f"validation 10%, {args.epochs} epochs, num_workers 0 on every side; {sys.executable}")
    why = {"original": "" if args.original else " (needs --original DIR)",
           "lightning": "" if have_lightning else " (not installed)"}
    skipped = [side + why[side] for side in SIDES if side not in sides]
    if skipped:
        print(f"not run: {', '.join(skipped)}")
    print(f"torch import alone: {torch_import_seconds():.2f} s (a fresh process)")
    results: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}  # peak, wall, start-up
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_mnist(data, args.samples, args.samples // 6)
        for round_ in range(1, args.rounds + 1):
            turn = (round_ - 1) % len(sides)
            for side in sides[turn:] + sides[:turn]:
                with tempfile.TemporaryDirectory(dir=tmp) as save_dir:
                    run = run_child(__file__, ["--child", side, "--data", str(data), "--save-dir", save_dir,
                                               "--epochs", str(args.epochs)]
                                    + (["--original", args.original] if side == "original" else [])
                                    + ["--no-tensorboard"] * args.no_tensorboard)
                peak = int(run.last) / 1024
                results[side].append((peak, run.wall, run.startup()))
                print(f"round {round_} {side:9s}: peak resident {peak:7.1f} MiB, wall {run.wall:6.1f} s, "
                      f"start-up {run.startup_text()}", flush=True)
    of = f" (medians of {args.rounds} rounds)" if args.rounds > 1 else ""
    medians = {side: [statistics.median(column) for column in zip(*rows)] for side, rows in results.items()}
    for side in sides:
        peak, wall, startup = medians[side]
        print(f"{LABELS[side]:28s}: peak resident {peak:7.1f} MiB, wall {wall:6.1f} s, start-up {startup:.2f} s "
              f"from the command to the first training step{of}")
    for side in sides:
        if side not in ("ours", "baseline"):
            print(f"ratio ours/{side}: {medians['ours'][0] / medians[side][0]:.2f}")
    ratio = medians["ours"][0] / medians["baseline"][0]
    print(f"ratio ours/baseline: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
