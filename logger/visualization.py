"""TensorBoard writing behind explicit methods, and a do-nothing writer with the same methods.

A run's TensorBoard (RunBoard) is three event directories: train/ and valid/ hold the same tags (one chart
per metric, a curve for each, as TensorBoard shows sibling runs), the run's log directory itself holds
histograms, the hyperparameters and the final and best values the HParams dashboard compares runs by.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


TRAIN, VALID, RUN = "train", "valid", ""  # the event directories of a RunBoard: train/, valid/, the run's own
# What TensorBoard's file layer imports for remote log directories (s3://, fsspec URLs) when they are installed:
# boto3 alone holds about 8 MiB resident with s3transfer. A run's log directories are local.
REMOTE_FILESYSTEMS = ("botocore", "boto3", "fsspec")


class NullWriter:
    """Accepts every call and writes nothing: for runs or ranks that do not log to TensorBoard."""

    def add_scalar(self, tag: str, value: float, step: int, phase: str = RUN) -> None: ...

    def add_image(self, tag: str, image: torch.Tensor, step: int, phase: str = RUN) -> None: ...

    def add_histogram(self, tag: str, values: torch.Tensor, step: int, phase: str = RUN) -> None: ...

    def add_hparams(self, hparams: dict, metrics: list[str]) -> None: ...

    def add_confusion_matrix(self, tag: str, matrix: list, labels: list[str] | None, step: int,
                             phase: str = RUN) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorboardWriter(NullWriter):
    """Scalars, images and histograms into event files in log_dir, continuing an existing stream.

    A resumed run appends a new events file to log_dir. What it writes for a tag supersedes what the
    earlier files hold for that tag from the same step on (after a resume from an earlier checkpoint
    those steps would otherwise appear twice); the earlier files are rewritten without them at the
    first flush after the tag's first write.
    """

    def __init__(self, log_dir: Path):
        SummaryWriter = summary_writer_class()
        self._earlier = sorted(Path(log_dir).glob("events.out.tfevents.*"))
        self._writer = SummaryWriter(log_dir=str(log_dir))
        self._first_step: dict[str, int] = {}  # tag -> the first step this writer wrote for it
        self._settled: set[str] = set()  # tags already dropped from the earlier files

    def add_scalar(self, tag: str, value: float, step: int, phase: str = RUN) -> None:
        self._first_step.setdefault(tag, step)
        self._writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: torch.Tensor, step: int, phase: str = RUN) -> None:
        self._first_step.setdefault(tag, step)
        self._writer.add_image(tag, image, step)

    def add_hparams(self, hparams: dict, metrics: list[str]) -> None:
        """The HParams dashboard's record of this run, in this directory's own events (SummaryWriter.add_hparams
        would start a new directory per call): its hyperparameters and the scalar tags that measure it."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        for summary in hparams_summaries(hparams, dict.fromkeys(metrics, 0.0)):
            self._writer.file_writer.add_summary(summary)

    def add_confusion_matrix(self, tag: str, matrix: list, labels: list[str] | None, step: int,
                             phase: str = RUN) -> None:
        """A confusion matrix (rows: true class, columns: predicted) drawn as an image, labelled by class name."""
        self._first_step.setdefault(tag, step)
        self._writer.add_figure(tag, confusion_figure(matrix, labels), step, close=True)

    def add_histogram(self, tag: str, values: torch.Tensor, step: int, phase: str = RUN) -> None:
        self._first_step.setdefault(tag, step)
        # 'tensorflow' bins are computed in a fixed number of passes; 'auto' (the old default) is slow.
        self._writer.add_histogram(tag, values.detach().float().cpu(), step, bins="tensorflow")

    def flush(self) -> None:
        self._writer.flush()
        self._drop_superseded()

    def close(self) -> None:
        self._writer.close()
        self._drop_superseded()

    def _drop_superseded(self) -> None:
        cut = {tag: step for tag, step in self._first_step.items() if tag not in self._settled}
        if cut and self._earlier:
            for path in self._earlier:
                drop_from_events_file(path, cut)
        self._settled.update(cut)


class RunBoard(NullWriter):
    """A run's TensorBoard: each call goes to the event directory of its phase (TRAIN, VALID or the RUN's own)."""

    def __init__(self, log_dir: Path):
        self._writers = {phase: TensorboardWriter(Path(log_dir) / phase) for phase in (TRAIN, VALID, RUN)}

    def add_scalar(self, tag: str, value: float, step: int, phase: str = RUN) -> None:
        self._writers[phase].add_scalar(tag, value, step)

    def add_image(self, tag: str, image: torch.Tensor, step: int, phase: str = RUN) -> None:
        self._writers[phase].add_image(tag, image, step)

    def add_histogram(self, tag: str, values: torch.Tensor, step: int, phase: str = RUN) -> None:
        self._writers[phase].add_histogram(tag, values, step)

    def add_hparams(self, hparams: dict, metrics: list[str]) -> None:
        self._writers[RUN].add_hparams(hparams, metrics)

    def add_confusion_matrix(self, tag: str, matrix: list, labels: list[str] | None, step: int,
                             phase: str = RUN) -> None:
        self._writers[phase].add_confusion_matrix(tag, matrix, labels, step)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def summary_writer_class() -> type:
    """torch's SummaryWriter, imported on first use (tensorboard is slow to import) without the remote filesystem
    packages its file layer would import: while it is imported they read as missing, so TensorBoard marks S3 and
    fsspec URLs unsupported; afterwards they import as usual. Already imported ones are left as they are."""
    hidden = [name for name in REMOTE_FILESYSTEMS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # `import name` raises ImportError while the entry is None
    try:
        from torch.utils.tensorboard import SummaryWriter
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return SummaryWriter


def make_writer(log_dir: Path | None, enabled: bool) -> NullWriter:
    """A RunBoard when enabled and there is a log directory, else a NullWriter."""
    return RunBoard(log_dir) if enabled and log_dir is not None else NullWriter()


def confusion_figure(matrix: list, labels: list[str] | None):
    """torchmetrics' drawing of a confusion matrix ((C, C), or (L, 2, 2) for multilabel) as a matplotlib figure;
    the counts are written in the cells up to 20 classes."""
    import matplotlib
    matplotlib.use("Agg")  # no display: draw into memory
    from torchmetrics.utilities.plot import plot_confusion_matrix

    confmat = torch.tensor(matrix)
    n = confmat.shape[0]
    labels = labels if labels and len(labels) == n else None
    figure, _ = plot_confusion_matrix(confmat, add_text=n <= 20 if confmat.dim() == 2 else n <= 6, labels=labels)
    size = min(max(5.5, 0.35 * n + 2), 12.0) if confmat.dim() == 2 else None
    if size:
        figure.set_size_inches(size, size)
    return figure


def hparam_values(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The config's leaves by dotted path, as the HParams dashboard takes them: lists as JSON text, nulls left out
    (a key must keep one type across the runs compared)."""
    values = {}
    for key, value in config.items():
        if isinstance(value, dict):
            values.update(hparam_values(value, f"{prefix}{key}."))
        elif value is not None:
            values[prefix + key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return values


def drop_from_events_file(path: Path, cut: dict[str, int]) -> None:
    """Rewrite an events file without the values of each tag in cut at or after cut[tag]."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    kept, changed = [], False
    for record in RawEventFileLoader(str(path)).Load():  # stops at a record cut short by a crash
        event = Event.FromString(record)
        values = [v for v in event.summary.value if not (v.tag in cut and event.step >= cut[v.tag])]
        if len(values) != len(event.summary.value):
            changed = True
            if not values:
                continue
            del event.summary.value[:]
            event.summary.value.extend(values)
            record = event.SerializeToString()
        kept.append(record)
    if changed:
        tmp = path.with_name(".rewrite.tmp")  # no 'tfevents' in the name: TensorBoard ignores it
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for record in kept:
                writer.write(record)
        os.replace(tmp, path)
