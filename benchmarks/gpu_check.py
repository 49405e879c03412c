"""The GPU fast path, proved in one command on a CUDA machine (sized for under 5 minutes on one H100 or H200).

Seven sections, in order; one that raises prints `FAILED <section>: <type>: <message>` and its traceback, and
the next one runs. The exit status is 1 when any failed, else 0; the last line sums up, with the ratios.

1. default: the shipped config.json (scikit-learn digits) as train.py runs it, for 3 epochs: wall time, val_accuracy.
2. sync: no host-device sync per step. Each model trains one epoch of N and one of 2N steps (log_step beyond
   the epoch) under torch.cuda.set_sync_debug_mode("warn"); the syncs counted must not grow with the steps.
   DigitsModel (also with trainer.ema and a torchmetrics MulticlassF1Score), and torchvision's resnet18 on
   CIFAR-shaped inputs in fp32 and in bf16 + channels_last.
3. throughput: resnet18, 20,480 + 2,560 random 3x32x32 samples, batch 256, Adam: the Trainer (as
   benchmarks/throughput.py builds it, pinned in-memory batches, model placed as train.py places it) against a
   hand-written loop with the same settings, after a warm-up, in fp32, bf16, fp16 (GradScaler), bf16 +
   channels_last and bf16 + channels_last + torch.compile. The ratio is over the epochs' training and
   validation time (metrics.jsonl's epoch_time); the Trainer's number with its checkpoints and logs follows it.
4. resume: config.json with trainer.amp=fp16, 4 epochs straight against 2 then `-r` to 4 (deterministic cuDNN
   and cuBLAS): the final checkpoints' tensors and metrics.jsonl must be identical.
5. memory: peak allocated and reserved GPU memory of each Trainer run of section 3 (and the raw loop's).
6. checkpoint: section 3's fp32 Trainer writing a checkpoint every epoch (monitor min val_loss), in the background
   (trainer.async_checkpoint, the default) and on the training path, against the same Trainer writing none: all of
   train(), its last write included (benchmarks/checkpointing.py measures the same on the CPU).
7. sharding: benchmarks/sharding.py with a rank per GPU (2 at most; with one GPU nothing is sharded): per-rank
   parameters, gradients and AdamW state, peak GPU memory and step time of trainer.strategy fsdp2 against DDP, and
   the activations one forward keeps with and without activation checkpointing.

    python benchmarks/gpu_check.py                        # on a CUDA machine; without one it says so and exits 0
    python benchmarks/gpu_check.py --device cpu --smoke   # the same code on tiny data on the CPU (the tests run it)

--smoke shrinks every size (seconds on a GPU too). On the CPU the sync and memory checks, which need CUDA, are
skipped (their trainers still run), and torch.compile uses the eager backend.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to check (default: cuda)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: prove the code paths in seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # Before the heavy imports below: without CUDA there is nothing to check, and that is not an error.
    if parse_args().device == "cuda" and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here): nothing checked; "
              "--device cpu --smoke runs its code paths on the CPU")
        raise SystemExit(0)
    # Deterministic cuBLAS for the resume check: read when cuBLAS starts, so before anything uses it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch.nn.functional as F  # noqa: E402  (the imports that must wait for the lines above)
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from base import BaseDataLoader, RunOutputs  # noqa: E402
from config import EMASettings, TrainerSettings  # noqa: E402
from logger import setup_logging  # noqa: E402
from model.metric import accuracy  # noqa: E402
from model.model import DigitsModel  # noqa: E402
from run import assemble, load_config, open_run, place_model, resume  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.step import AMP_DTYPES  # noqa: E402
from utils.checkpoint import Checkpointer, RunDirs  # noqa: E402
from utils.distributed import SINGLE  # noqa: E402
from utils.registry import ARCHS  # noqa: E402

CONFIGS = {"fp32": {}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"},
           "bf16+cl": {"amp": "bf16", "channels_last": True},
           "bf16+cl+compile": {"amp": "bf16", "channels_last": True, "compile": True}}
# The sync check also runs these: the weights' moving average and an exact-over-the-epoch torchmetrics metric.
SYNC_ONLY = {"fp32+ema+f1": {"ema": EMASettings(decay=0.99), "torchmetrics": True}}
SYNC_WARNING = "called a synchronizing CUDA operation"  # what torch warns in sync debug mode "warn"
CHECKPOINT_WRITES = ("none", "path", "background")  # section 6: no checkpoint, async_checkpoint false, true
TIMING = ("epoch_time", "samples_per_sec")  # differ between otherwise identical runs
MIB = 2**20


class CheckFailed(Exception):
    """A check ran and found the fast path wanting."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A model and its loss, trained on random inputs of shape (n, *shape) with 10 classes."""
    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    criterion: Callable


DIGITS = Task("digits", DigitsModel, (1, 8, 8), F.nll_loss)
RESNET = Task("resnet18", lambda: ARCHS.get("resnet18", "arch.type")(num_classes=10), (3, 32, 32), F.cross_entropy)
# resnet18 in miniature (stem, max pool, residual blocks) for --smoke: resnet18 takes seconds a step on a small CPU
MINI = Task("resnet-mini", lambda: ARCHS.get("CNN", "arch.type")(input=3, blocks="(cnf8_3_2 m3_2) r8 r16_3_2",
                                                               num_classes=10), (3, 32, 32), F.cross_entropy)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each section trains, and on what."""
    image: Task = RESNET  # the image model of the sync, throughput and memory sections
    default_epochs: int = 3
    sync_steps: int = 20  # N: the sync check trains N and 2N steps
    sync_batch: int = 64
    train: int = 20480  # throughput: training samples, a multiple of batch (no short last batch to recompile for)
    valid: int = 2560
    batch: int = 256
    warm_batches: int = 8  # the warm-up epoch before each timed run: compile, cuDNN's choices, the allocator
    timed_epochs: int = 2
    resume_epochs: int = 4
    resume_overrides: tuple[str, ...] = ()  # of config.json in the resume check
    checkpoint_epochs: int = 5  # the checkpoint section: epochs of each run (a checkpoint each), and rounds
    checkpoint_rounds: int = 3


FULL = Sizes()
# fp16 and bf16 run slowly on a CPU: the smoke run's resume check trains a narrow model 2 steps an epoch.
SMOKE = Sizes(image=MINI, default_epochs=1, sync_steps=2, sync_batch=8, train=16, valid=8, batch=8, warm_batches=1,
              timed_epochs=1, resume_epochs=2, resume_overrides=("+arch.args.channels=4", "trainer.len_epoch=2"),
              checkpoint_epochs=2, checkpoint_rounds=1)


@dataclasses.dataclass(frozen=True)
class Data:
    """Random in-memory samples served in batches; n_valid of them held out for validation."""
    dataset: TensorDataset
    n_valid: int
    batch_size: int

    @classmethod
    def random(cls, task: Task, n_train: int, n_valid: int, batch_size: int) -> "Data":
        n, generator = n_train + n_valid, torch.Generator().manual_seed(0)
        inputs = torch.randn(n, *task.shape, generator=generator)
        return cls(TensorDataset(inputs, torch.randint(0, 10, (n,), generator=generator)), n_valid, batch_size)

    @property
    def n_train(self) -> int:
        return len(self.dataset) - self.n_valid

    def head(self, batches: int) -> "Data":
        """The first samples: `batches` training batches and one validation batch (a warm-up)."""
        n = (batches + 1) * self.batch_size
        return Data(TensorDataset(*(t[:n] for t in self.dataset.tensors)), self.batch_size, self.batch_size)

    def loader(self, device: torch.device) -> BaseDataLoader:
        """The project's loader: batches sliced from the tensors, pinned for a GPU."""
        return BaseDataLoader(self.dataset, self.batch_size, True, self.n_valid, 0, pin_memory=device.type == "cuda",
                              seed=0)


@dataclasses.dataclass
class Context:
    """What the sections share: where they run, how much, and what the summary and the memory section report."""
    device: torch.device
    sizes: Sizes
    tmp: Path
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    peaks: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # run: (allocated, reserved) bytes

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# -- building and timing
def build_trainer(task: Task, model: nn.Module, data: Data, settings: TrainerSettings, device: torch.device,
                  out: Path | None = None, metrics: dict | None = None) -> Trainer:
    """A Trainer built as benchmarks/throughput.py builds one (Adam, accuracy and any more metrics); writing into
    out when given."""
    loader = data.loader(device)
    outputs = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        outputs = RunOutputs().open(RunDirs(out, out), settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Trainer(model, task.criterion, {"accuracy": accuracy, **(metrics or {})}, optimizer, settings,
                   data_loader=loader,
                   valid_data_loader=loader.split_validation(), device=device, outputs=outputs)


def f1_macro():
    """torchmetrics' macro F1 over the 10 classes of both tasks, as `metrics` would build it by name."""
    from torchmetrics.classification import MulticlassF1Score
    return MulticlassF1Score(num_classes=10, average="macro")


def placed(task: Task, settings: TrainerSettings, device: torch.device) -> nn.Module:
    """A fresh model placed as train.py places it (device, channels_last, compile)."""
    torch.manual_seed(0)
    return place_model(task.build(), device, [], settings, SINGLE)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds run() takes, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def fresh_peaks(device: torch.device) -> None:
    """Start counting peak memory afresh (and return cached blocks, so that reserved means this run's)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> tuple[int, int]:
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def raw_epochs(model: nn.Module, data: Data, settings: TrainerSettings, criterion: Callable, device: torch.device,
               epochs: int) -> None:
    """A careful hand-written loop with the Trainer's settings: batches sliced from the host tensors, pinned and
    copied without blocking (as the project's loader serves them), autocast, a GradScaler for fp16, channels_last
    inputs; loss and accuracy summed on the device and read once per epoch, after validation."""
    x, y = data.dataset.tensors
    n_train = data.n_train
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type) if settings.amp == "fp16" else None
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format

    def autocast() -> contextlib.AbstractContextManager:
        dtype = AMP_DTYPES.get(settings.amp)
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def batches(index: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(index), data.batch_size):
            part = index[start:start + data.batch_size]
            inputs, target = x[part], y[part]
            if device.type == "cuda":
                inputs, target = inputs.pin_memory(), target.pin_memory()
            yield (inputs.to(device, memory_format=memory_format, non_blocking=True),
                   target.to(device, non_blocking=True))

    for epoch in range(epochs):
        model.train()
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for inputs, target in batches(torch.randperm(n_train, generator=torch.Generator().manual_seed(epoch))):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                output = model(inputs)
                loss = criterion(output, target)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach() * len(target)
            correct += (output.argmax(1) == target).sum()
        model.eval()
        val_loss, val_correct = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad(), autocast():
            for inputs, target in batches(torch.arange(n_train, len(x))):
                output = model(inputs)
                val_loss += criterion(output, target) * len(target)
                val_correct += (output.argmax(1) == target).sum()
        torch.stack([loss_sum, correct, val_loss, val_correct]).tolist()


def raw_speed(ctx: Context, data: Data, settings: TrainerSettings, name: str) -> float:
    """Training samples per second of the hand-written loop (its own model, placed and compiled by hand)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    model = ctx.sizes.image.build().to(ctx.device, memory_format=memory_format)
    if settings.compile is not False:
        model = torch.compile(model, **(settings.compile if isinstance(settings.compile, dict) else {}))
    criterion = ctx.sizes.image.criterion
    raw_epochs(model, data.head(ctx.sizes.warm_batches), settings, criterion, ctx.device, 1)
    fresh_peaks(ctx.device)
    seconds = timed(lambda: raw_epochs(model, data, settings, criterion, ctx.device, settings.epochs), ctx.device)
    if ctx.cuda:
        ctx.peaks[f"raw {name}"] = peaks(ctx.device)
    return data.n_train * settings.epochs / seconds


def trainer_speed(ctx: Context, data: Data, settings: TrainerSettings, name: str) -> tuple[float, float]:
    """Training samples per second of the Trainer after a warm-up epoch on the same model: over its epochs' train and
    validation time (metrics.jsonl's epoch_time), and over all of train() with its checkpoints and logs."""
    task = ctx.sizes.image
    model = placed(task, settings, ctx.device)
    warm = dataclasses.replace(settings, epochs=1, monitor="off")
    build_trainer(task, model, data.head(ctx.sizes.warm_batches), warm, ctx.device).train()
    out = ctx.tmp / f"throughput-{name}"
    trainer = build_trainer(task, model, data, settings, ctx.device, out)
    fresh_peaks(ctx.device)
    seconds = timed(trainer.train, ctx.device)
    if ctx.cuda:
        ctx.peaks[f"trainer {name}"] = peaks(ctx.device)
    samples = data.n_train * settings.epochs
    return samples / sum(row["epoch_time"] for row in read_metrics(out)), samples / seconds


@contextlib.contextmanager
def recorded_syncs(device: torch.device) -> Iterator[list[str]]:
    """The places (file:line) of the host-device syncs in the block, torch's sync debug mode 'warn' recording them;
    none on the CPU, where there is no such mode."""
    places: list[str] = []
    if device.type != "cuda":
        yield places
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield places
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places.extend(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))


def epoch_syncs(ctx: Context, task: Task, steps: int, options: dict) -> list[str]:
    """The syncs of one Trainer epoch of `steps` steps (validation included; nothing written; logged every
    steps + 1 steps: never in the epoch). The data holds 2N batches: no epoch starts a second pass over it."""
    options = dict(options)
    metrics = {"f1": f1_macro()} if options.pop("torchmetrics", False) else None
    settings = TrainerSettings(epochs=1, len_epoch=steps, log_step=steps + 1, verbosity=0, **options)
    batch = ctx.sizes.sync_batch
    data = Data.random(task, 2 * ctx.sizes.sync_steps * batch, batch, batch)
    trainer = build_trainer(task, placed(task, settings, ctx.device), data, settings, ctx.device, metrics=metrics)
    with recorded_syncs(ctx.device) as places:
        trainer.train()
    return places


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """cuDNN's deterministic algorithms and torch's deterministic ops (warning where there is none) in the block."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def run_train(ctx: Context, *args: str, resume_from: Path | None = None, run_id: str | None = None) -> None:
    """What train.py does for `-c CONFIG ARGS` (or `-r resume_from ARGS`), through the run package in this process (on
    the CPU with n_gpu=0), the console back to warnings only afterwards; on a GPU, a check that it trained there."""
    fresh_peaks(ctx.device)
    config_file = None if resume_from else args[0]
    overrides = [*(args[1:] if config_file else args), *([] if ctx.cuda else ["n_gpu=0"])]
    config, checkpoint, _ = load_config(argparse.Namespace(config=config_file, resume=resume_from, run_id=run_id,
                                                           overrides=overrides))
    trainer, dist = assemble(config)
    with open_run(config, trainer, dist):
        if checkpoint is not None:
            resume(trainer, checkpoint, config)
        trainer.train()
    setup_logging(None, verbosity=0)
    if ctx.cuda and not torch.cuda.max_memory_allocated(ctx.device):
        raise CheckFailed(f"train.py {' '.join(args)} allocated no GPU memory: it did not train on the GPU")


def read_metrics(log_dir: Path, timing: bool = True) -> list[dict]:
    """A run's metrics.jsonl records; without the timing keys when timing is False."""
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return rows if timing else [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def checkpoint_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's tensors and the optimizer's state tensors of a checkpoint, by name."""
    optimizer = {f"optimizer.{i}.{k}": v for i, state in checkpoint["optimizer"]["state"].items()
                 for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {**{f"model.{k}": v for k, v in checkpoint["state_dict"].items()}, **optimizer}


def tensor_differences(a: dict, b: dict) -> dict[str, float]:
    """{name: largest absolute difference} of the tensors of two state dicts that are not identical."""
    if a.keys() != b.keys():
        return {f"keys {sorted(a.keys() ^ b.keys())}": float("inf")}
    return {k: (a[k].double() - b[k].double()).abs().max().item() if a[k].shape == b[k].shape else float("inf")
            for k in a if not torch.equal(a[k], b[k])}


# -- the sections
def default_config(ctx: Context) -> None:
    """1. The shipped config.json as train.py runs it: wall time and final val_accuracy."""
    epochs = ctx.sizes.default_epochs
    seconds = timed(lambda: run_train(ctx, str(ROOT / "config.json"), f"trainer.epochs={epochs}",
                                      f"trainer.save_dir={ctx.tmp}", "trainer.verbosity=0", run_id="default"),
                    ctx.device)
    rows = read_metrics(ctx.tmp / "log" / "Digits_CNN" / "default")
    accuracy_ = rows[-1]["val_accuracy"]
    print(f"config.json on {ctx.device}: {len(rows)} epoch(s) in {seconds:.1f} s wall time (in this process), "
          f"val_accuracy {accuracy_:.4f}")
    if len(rows) != epochs or accuracy_ < 0.5:
        raise CheckFailed(f"expected {epochs} epochs and val_accuracy above 0.5, got {len(rows)} and {accuracy_:.4f}")


def no_sync_per_step(ctx: Context) -> None:
    """2. The syncs of an epoch do not grow with its steps (sync debug mode 'warn'; CUDA only)."""
    n, failures = ctx.sizes.sync_steps, []
    for task, config in [(DIGITS, "fp32"), (DIGITS, "fp32+ema+f1"), (ctx.sizes.image, "fp32"),
                         (ctx.sizes.image, "bf16+cl")]:
        lengths = (n, n, 2 * n) if ctx.cuda else (n, 2 * n)  # on a GPU the first warms up (CUDA's lazy starts)
        runs = [epoch_syncs(ctx, task, steps, {**CONFIGS, **SYNC_ONLY}[config]) for steps in lengths]
        short, long = len(runs[-2]), len(runs[-1])
        label = f"{task.name} {config}"
        if not ctx.cuda:
            print(f"{label}: trained epochs of {n} and {2 * n} steps; sync counting needs CUDA: skipped")
            continue
        where = ", ".join(f"{place} x{runs[-1].count(place)}" for place in sorted(set(runs[-1])))
        verdict = "PASS" if 0 < long <= short else "FAIL"
        print(f"{label}: {short} syncs in an epoch of {n} steps, {long} in one of {2 * n}: {verdict} ({where})")
        if not short:
            failures.append(f"{label}: no sync recorded at all, not even the epoch's end: the counting is broken")
        elif long > short:
            failures.append(f"{label}: {long} syncs with {2 * n} steps > {short} with {n}")
    if failures:
        raise CheckFailed("; ".join(failures))


def throughput(ctx: Context) -> None:
    """3. The image model through the Trainer and through a hand-written loop, per configuration."""
    s = ctx.sizes
    data = Data.random(s.image, s.train, s.valid, s.batch)
    shape = "x".join(map(str, s.image.shape))
    print(f"{s.image.name}, {s.train} + {s.valid} random samples {shape}, batch {s.batch}, Adam, "
          f"{s.timed_epochs} timed epoch(s) after a warm-up")
    for name, options in CONFIGS.items():
        if options.get("compile") and not ctx.cuda:
            options = {**options, "compile": {"backend": "eager"}}  # inductor's C++ build takes minutes on a CPU
        settings = TrainerSettings(epochs=s.timed_epochs, monitor="min val_loss", verbosity=0, **options)
        loop, whole = trainer_speed(ctx, data, settings, name)
        raw = raw_speed(ctx, data, settings, name)
        ctx.ratios[name] = loop / raw
        print(f"{name:>16}: raw {raw:9,.0f} samples/s, trainer {loop:9,.0f} samples/s, ratio {loop / raw:.2f} "
              f"(all of train(), checkpoints and logs included: {whole:,.0f} samples/s, {whole / raw:.2f})",
              flush=True)


def fp16_resume(ctx: Context) -> None:
    """4. fp16 training resumed from a checkpoint equals a straight run, bit for bit."""
    epochs = ctx.sizes.resume_epochs
    half = epochs // 2
    common = [str(ROOT / "config.json"), f"trainer.save_dir={ctx.tmp}", "trainer.amp=fp16", "trainer.verbosity=0",
              *ctx.sizes.resume_overrides]
    models = ctx.tmp / "models" / "Digits_CNN"
    with deterministic():
        run_train(ctx, *common, f"trainer.epochs={epochs}", run_id="straight")
        run_train(ctx, *common, f"trainer.epochs={half}", run_id="split")
        run_train(ctx, f"trainer.epochs={epochs}", "trainer.verbosity=0", resume_from=models / "split")
    straight, resumed = (torch.load(models / run / f"checkpoint-epoch{epochs}.pth", map_location="cpu",
                                    weights_only=True) for run in ("straight", "split"))
    logs = [read_metrics(ctx.tmp / "log" / "Digits_CNN" / run, timing=False) for run in ("straight", "split")]
    problems = resume_problems(straight, resumed, *logs)
    print(f"fp16, {epochs} epochs straight against {half} + resumed to {epochs}: {len(checkpoint_tensors(straight))} "
          f"model and optimizer tensors, the GradScaler's state and {len(logs[0])} metrics.jsonl records "
          f"{'identical: PASS' if not problems else 'compared: FAIL'}")
    if problems:
        raise CheckFailed("; ".join(problems))


def resume_problems(straight: dict, resumed: dict, straight_log: list[dict], resumed_log: list[dict]) -> list[str]:
    """What differs between the checkpoints and metrics.jsonl records of a straight and a resumed run."""
    problems = []
    tensors = checkpoint_tensors(straight)
    differ = tensor_differences(tensors, checkpoint_tensors(resumed))
    if differ:
        worst = max(differ, key=differ.get)
        problems.append(f"{len(differ)} of {len(tensors)} tensors differ, the most {worst} (largest absolute "
                        f"difference {differ[worst]:.3g})")
    if straight["scaler"] is None or straight["scaler"] != resumed["scaler"]:
        problems.append(f"GradScaler state {straight['scaler']} straight, {resumed['scaler']} resumed")
    rows = [(a, b) for a, b in zip(straight_log, resumed_log) if a != b]
    if rows or len(straight_log) != len(resumed_log):
        problems.append(f"metrics.jsonl differs: {rows[0] if rows else (len(straight_log), len(resumed_log))}")
    return problems


def peak_memory(ctx: Context) -> None:
    """5. Peak GPU memory of section 3's runs."""
    if not ctx.cuda:
        print("peak GPU memory needs CUDA: skipped")
        return
    if not ctx.peaks:
        raise CheckFailed("no run of the throughput section finished, so no peak was measured")
    for run, (allocated, reserved) in ctx.peaks.items():
        print(f"{run:>24}: max allocated {allocated / MIB:8,.0f} MiB, max reserved {reserved / MIB:8,.0f} MiB")


def checkpoint_cost(ctx: Context) -> None:
    """6. A checkpoint every epoch, written in the background (the default) and on the training path, against none."""
    s = ctx.sizes
    data = Data.random(s.image, s.train, s.valid, s.batch)
    print(f"{s.image.name} fp32 as in section 3, {s.checkpoint_epochs} epochs, monitor min val_loss (model_best.pth "
          f"too on improvement); all of train(), its last write included; median of {s.checkpoint_rounds} rounds")
    seconds: dict[str, list[float]] = {writes: [] for writes in CHECKPOINT_WRITES}
    for round_ in range(s.checkpoint_rounds):
        for writes in CHECKPOINT_WRITES[round_ % 3:] + CHECKPOINT_WRITES[:round_ % 3]:
            settings = TrainerSettings(epochs=s.checkpoint_epochs, monitor="min val_loss", verbosity=0,
                                       async_checkpoint=writes == "background")
            model = placed(s.image, settings, ctx.device)
            warm = dataclasses.replace(settings, epochs=1, monitor="off")
            build_trainer(s.image, model, data.head(s.warm_batches), warm, ctx.device).train()
            trainer = build_trainer(s.image, model, data, settings, ctx.device, ctx.tmp / f"ckpt-{writes}-{round_}")
            if writes == "none":
                trainer.outputs.checkpointer = Checkpointer(None)
            seconds[writes].append(timed(trainer.train, ctx.device))
    size = (ctx.tmp / "ckpt-path-0" / f"checkpoint-epoch{s.checkpoint_epochs}.pth").stat().st_size
    median = {writes: statistics.median(times) for writes, times in seconds.items()}
    ctx.ratios["checkpoint background"] = median["none"] / median["background"]
    ctx.ratios["checkpoint path"] = median["none"] / median["path"]
    print(f"checkpoint {size / 1e6:.0f} MB: none {median['none']:.2f} s, on the training path {median['path']:.2f} s "
          f"({ctx.ratios['checkpoint path']:.2f}), in the background {median['background']:.2f} s "
          f"({ctx.ratios['checkpoint background']:.2f})")


def sharding(ctx: Context) -> None:
    """7. benchmarks/sharding.py: FSDP2's per-rank state and peak memory against DDP's, activation checkpointing."""
    smoke = ["--width", "64", "--layers", "2", "--steps", "2"] if ctx.sizes is SMOKE else []
    # FSDP2 shards over 2 GPUs (1 GPU: nothing to shard); on the CPU 2 gloo processes, 1 in the smoke run
    ranks = min(2, torch.cuda.device_count()) if ctx.cuda else 1 if smoke else 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sharding as benchmark

    benchmark.main(["--ranks", str(ranks), *smoke, *([] if ctx.cuda else ["--cpu"])])


SECTIONS = {"default": default_config, "sync": no_sync_per_step, "throughput": throughput, "resume": fp16_resume,
            "memory": peak_memory, "checkpoint": checkpoint_cost, "sharding": sharding}


def run_section(name: str, section: Callable[[Context], None], ctx: Context) -> bool:
    """Run one section; an exception is printed (one FAILED line, then the traceback) and makes it False."""
    print(f"\n== {name}: {section.__doc__}", flush=True)
    started = time.perf_counter()
    try:
        section(ctx)
    except Exception as error:  # a section's failure must not stop the others
        print(f"FAILED {name}: {type(error).__name__}: {error}")
        traceback.print_exc(file=sys.stdout)
        return False
    finally:
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return True


def summary(card: str, passed: list[str], failed: list[str], ratios: dict[str, float]) -> str:
    """The last line: sections passed, and the trainer/raw ratio per configuration."""
    failures = f" (failed: {', '.join(failed)})" if failed else ""
    ratio = " ".join(f"{name} {ratios[name]:.2f}" if name in ratios else f"{name} n/a" for name in CONFIGS)
    checkpoints = " ".join(f"{ratios[f'checkpoint {w}']:.2f}" if f"checkpoint {w}" in ratios else "n/a"
                           for w in ("background", "path"))
    return f"gpu_check: {card}: {len(passed)}/{len(passed) + len(failed)} sections passed{failures}; " \
           f"ratio trainer/raw {ratio}; checkpoint every epoch/none: background, on the path {checkpoints}"


def main(argv: list[str] | None = None) -> int:
    """Run every section; 1 when any failed, else 0."""
    args = parse_args(argv)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")  # as train.py's n_gpu=1 chooses
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {card}: torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, {torch.get_num_threads()} CPU threads"
          f"{', smoke sizes' if args.smoke else ''}", flush=True)
    setup_logging(None, verbosity=0)
    results: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Context(device, SMOKE if args.smoke else FULL, Path(tmp))
        for name, section in SECTIONS.items():
            results[name] = run_section(name, section, ctx)
    print(summary(card, [n for n, ok in results.items() if ok], [n for n, ok in results.items() if not ok],
                  ctx.ratios))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
