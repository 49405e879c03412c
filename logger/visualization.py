"""TensorBoard writing behind explicit methods, and a do-nothing writer with the same methods."""
from __future__ import annotations

from pathlib import Path

import torch


class NullWriter:
    """Accepts every call and writes nothing: for runs or ranks that do not log to TensorBoard."""

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None: ...

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorboardWriter(NullWriter):
    """Scalars, images and histograms into event files in log_dir (appends to an existing stream)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is slow to import

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self._writer.add_image(tag, image, step)

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        # 'tensorflow' bins are computed in a fixed number of passes; 'auto' (the old default) is slow.
        self._writer.add_histogram(tag, values.detach().float().cpu(), step, bins="tensorflow")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def make_writer(log_dir: Path | None, enabled: bool) -> NullWriter:
    """A TensorboardWriter when enabled and there is a log directory, else a NullWriter."""
    return TensorboardWriter(log_dir) if enabled and log_dir is not None else NullWriter()
