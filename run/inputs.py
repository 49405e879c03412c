"""What --input names, for predict.py and export.py alike: the word test (the run's test split, built as test.py
builds it), or a file or folder that the run's data loader turns into model inputs through its inference_source."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from base.base_data_loader import InputBatch, no_inference_source
from logger import get_logger
from parse_config import ConfigParser
from run.data import build_data
from utils.distributed import SINGLE
from utils.errors import UserError
from utils.registry import DATA_LOADERS

# (indices of the inputs in the batch, their model inputs or None, their labels or None, (index, reason) skipped)
Batch = tuple[list[int], Any, "torch.Tensor | None", list[tuple[int, str]]]


@dataclass
class Inputs:
    """What --input names, in batches: key is the first column ("file" or "index"), names[i] the i-th input's."""

    source: str
    key: str
    names: Sequence
    batches: Iterable[Batch]
    count: int
    n_batches: int
    classes: list[str] | None


def open_inputs(config: ConfigParser, given: str, batch_size: int | None = None,
                num_workers: int | None = None) -> Inputs:
    """The inputs that given (--input) names, as batches of model inputs: the run's test split for the word test,
    else what the run's data loader class makes of the file or folder (its inference_source, with the run's
    data_loader.args). batch_size: default the run's (64 when it has none); num_workers: processes reading files
    (default 0; for the test split, the run's)."""
    loader_class = DATA_LOADERS.get(config["data_loader"]["type"], "data_loader.type")
    if given == "test":
        return split_inputs(config, loader_class, batch_size, num_workers)
    if not Path(given).exists():
        raise UserError(f"--input {given}: no such file or folder (relative paths are from the working directory); "
                        "give a file, a folder or the word test")
    args = config["data_loader"]["args"]
    if not hasattr(loader_class, "inference_source"):  # a registered class that is not a BaseDataLoader
        raise UserError(no_inference_source(loader_class, given))
    source = loader_class.inference_source(given, dict(args))
    size = batch_size or args.get("batch_size") or 64
    classes = None if source.classes is None else [str(name) for name in source.classes]
    return Inputs(given, source.key, source.names, labelled(source.batches(size, num_workers or 0), source.labels),
                  len(source), math.ceil(len(source) / size), classes)


def labelled(batches: Iterable[InputBatch], labels: Sequence[int] | np.ndarray | None) -> Iterator[Batch]:
    """InputBatches with the labels of their inputs (None when the inputs have none)."""
    labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    for batch in batches:
        yield (batch.indices, batch.inputs, None if labels is None else labels[batch.indices], batch.skipped)


def split_inputs(config: ConfigParser, loader_class: type, batch_size: int | None = None,
                 num_workers: int | None = None) -> Inputs:
    """The run's test split, built as test.py builds it (batch_size and num_workers applied when the loader takes
    them); its class targets are the labels, its class names data_loader.args.classes or the loader's."""
    params = inspect.signature(loader_class).parameters
    given = {"batch_size": batch_size, "num_workers": num_workers}
    config["data_loader"]["args"].update({k: v for k, v in given.items() if v is not None and k in params})
    loader, _ = build_data(config, False, SINGLE)
    sampler = getattr(loader, "sampler", None)
    count = len(sampler) if sampler is not None else len(loader.dataset)
    names = config["data_loader"]["args"].get("classes") or getattr(loader, "classes", None)
    return Inputs("test", "index", range(count), split_batches(loader), count, len(loader),
                  None if names is None else [str(name) for name in names])


def split_batches(loader: Iterable) -> Iterator[Batch]:
    start = 0
    for data, target in loader:
        n = len(data) if isinstance(data, torch.Tensor) else len(target)
        classes = isinstance(target, torch.Tensor) and target.ndim == 1 and not target.is_floating_point()
        yield list(range(start, start + n)), data, target if classes else None, []
        start += n


def first_inputs(inputs: Inputs, n: int) -> torch.Tensor:
    """The first n model inputs that can be read, as one tensor (repeated when there are fewer): an example batch
    for export.py. A file that cannot be read is skipped with a warning."""
    taken, have = [], 0
    for _, data, _, skipped in inputs.batches:
        for _, message in skipped:
            get_logger("inputs").warning("Skipping %s", message)
        if data is None:
            continue
        if not isinstance(data, torch.Tensor):
            raise UserError(f"--input {inputs.source}: the inputs are a {type(data).__name__}, not one tensor; "
                            "export.py exports models that take one tensor")
        taken.append(data[:n - have])
        have += len(taken[-1])
        if have >= n:
            break
    if not taken:
        raise UserError(f"--input {inputs.source}: none of its {inputs.count} input(s) could be read; see the "
                        "warnings above")
    data = torch.cat(taken)
    if len(data) < n:
        data = data.repeat(math.ceil(n / len(data)), *[1] * (data.dim() - 1))
    return data[:n]
