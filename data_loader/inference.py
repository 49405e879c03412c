"""How a run's data loader turns new inputs into model inputs, for predict.py: image files through the loader's own
evaluation pipeline (input_pipeline), array files read as ArrayDataLoader reads them, and the lists of files, the
dataset and the batches around them. A file that cannot be read is set aside in its batch, not raised, so that
DataLoader workers go on."""
from __future__ import annotations

import csv
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data_loader.arrays import SUFFIXES as ARRAY_SUFFIXES
from data_loader.arrays import _read, _tensor
from data_loader.data_loaders import (IMAGENET_STATS, ArrayDataLoader, DigitsDataLoader, _ImageFilesDataLoader,
                                      _TorchvisionDataLoader)
from data_loader.datasets import image_reader, read_image
from data_loader.transforms import image_pipeline, normalisation
from utils.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}  # the image modes _ImageFilesDataLoader takes


class InputPipeline(NamedTuple):
    """How one image file becomes one model input: transform(read(path)). read is None when the run's loader takes
    no image files; reason then says what it takes instead."""

    read: Callable[[str], Any] | None
    transform: Callable[[Any], torch.Tensor] | None
    reason: str = ""


def input_pipeline(loader_class: type, args: dict) -> InputPipeline:
    """The evaluation pipeline that a run's data loader (its class and data_loader.args) applies to a test image:
    ImageFolder/ImageCsv loaders read the file in their mode and apply eval_transforms with their mean/std; the
    in-memory torchvision loaders (MNIST family, CIFAR) take the file's pixels as a uint8 C x H x W tensor in the
    dataset's mode (L, RGB) and apply their eval_transforms with the dataset's statistics (or the config's mean/std).
    Digits, arrays and loaders it does not know take no image files: read is None and reason says why."""
    arg = _with_defaults(loader_class, args)
    name = loader_class.__name__
    if issubclass(loader_class, _ImageFilesDataLoader):
        mode = arg("mode")
        channels = CHANNELS.get(mode)
        if channels is None:
            raise UserError(f"data_loader.args.mode: expected 'RGB', 'L' (grey) or 'RGBA', got {mode!r}")
        # the defaults of _ImageFilesDataLoader._start; tests/unit/test_inference_inputs.py holds them equal
        default = IMAGENET_STATS if channels == 3 else ((0.449,) * channels, (0.226,) * channels)
        return InputPipeline(image_reader(mode), _eval_pipeline(arg, default, channels))
    if issubclass(loader_class, _TorchvisionDataLoader):
        channels = len(loader_class.stats[0])  # MNIST family 1, CIFAR 3
        mode = "L" if channels == 1 else "RGB"
        return InputPipeline(functools.partial(read_pixels, mode=mode),
                             _eval_pipeline(arg, loader_class.stats, channels))
    if issubclass(loader_class, (DigitsDataLoader, ArrayDataLoader)):
        return InputPipeline(None, None, f"data_loader.type {name} takes arrays, not image files: give a "
                                         f"{'/'.join(ARRAY_SUFFIXES)} file of samples shaped and scaled as the loader "
                                         "serves them, or --input test")
    return InputPipeline(None, None, f"data_loader.type {name} is not one whose image pipeline predict.py knows: "
                                     f"give --input test (the loader's test split) or a {'/'.join(ARRAY_SUFFIXES)} "
                                     "file of model inputs")


def names_in_data(loader_class: type) -> bool:
    """Whether the loader reads its class names from its data files (torchvision's datasets) rather than keeping
    them in data_loader.args.classes: then only a built loader knows them."""
    return issubclass(loader_class, _TorchvisionDataLoader)


def _with_defaults(loader_class: type, args: dict) -> Callable[[str], Any]:
    params = inspect.signature(loader_class).parameters

    def arg(key: str) -> Any:
        if key in args:
            return args[key]
        default = params[key].default if key in params else None
        return None if default is inspect.Parameter.empty else default
    return arg


def _eval_pipeline(arg: Callable[[str], Any], default: tuple, channels: int) -> Callable:
    mean, std = normalisation(arg("mean"), arg("std"), default, channels, "data_loader.args")
    return image_pipeline(arg("eval_transforms"), mean, std, "data_loader.args.eval_transforms")


def read_pixels(path: str, mode: str) -> torch.Tensor:
    """The image at path in mode as a uint8 C x H x W tensor: what the in-memory torchvision loaders hold."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(read_image(path, mode))


# ---- what --input names: a folder, a CSV of files, an array file ----

def image_files(folder: str) -> tuple[list[str], int]:
    """The image files (IMAGE_SUFFIXES, any case) in folder and its subfolders as paths relative to it, sorted;
    and the number of other files left out."""
    names, others = [], 0
    for root, _, files in os.walk(folder, followlinks=True):
        for file in files:
            if file.lower().endswith(IMAGE_SUFFIXES):
                names.append(Path(root, file).relative_to(folder).as_posix())
            else:
                others += 1
    return sorted(names), others


def folder_labels(names: Sequence[str], classes: Sequence[str] | None) -> list[int] | None:
    """The class index of each file when every one lies under a folder named after one of the classes (torchvision's
    ImageFolder layout, <class name>/<image>), else None."""
    if not classes:
        return None
    index = {name: i for i, name in enumerate(classes)}
    tops = [name.split("/", 1)[0] if "/" in name else None for name in names]
    return [index[top] for top in tops] if all(top in index for top in tops) else None


def listed_images(csv_file: str, classes: Sequence[str] | None) -> tuple[list[str], list[int] | None]:
    """(the file names as listed, their label indices or None) of a CSV of image file names, one a row, relative to
    the CSV's folder; a second column of labels (class indices, or names of the run's classes) on every row gives
    the labels. The first row is a header when it names no file there and no image file (e.g. file,label)."""
    folder = os.path.dirname(csv_file)
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(f), 1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"--input {csv_file}: cannot read it: {e}") from None
    first = rows[0][1][0] if rows else ""
    if rows and not os.path.isfile(os.path.join(folder, first)) and not first.lower().endswith(IMAGE_SUFFIXES):
        rows = rows[1:]
    if not rows:
        raise UserError(f"--input {csv_file} lists no images; expected rows of 'file name' or 'file name,label'")
    for n, row in rows:
        if not row[0]:
            raise UserError(f"{csv_file}:{n}: expected 'file name' or 'file name,label', got {','.join(row)!r}; fix "
                            "or remove the row")
    names = [row[0] for _, row in rows]
    with_label = [len(row) > 1 and row[1] != "" for _, row in rows]
    if not any(with_label):
        return names, None
    if not all(with_label):
        n = rows[with_label.index(False)][0]
        raise UserError(f"{csv_file}:{n}: no label, while other rows have one; give every row a label or none")
    return names, _label_indices([(n, row[1]) for n, row in rows], classes, csv_file)


def _label_indices(labels: list[tuple[int, str]], classes: Sequence[str] | None, csv_file: str) -> list[int]:
    index = {name: i for i, name in enumerate(classes or [])}
    indices = []
    for n, label in labels:
        if label in index:
            indices.append(index[label])
        elif label.isdigit():
            indices.append(int(label))
        else:
            known = f"one of the run's classes {list(classes)}" if classes else "a class index (the run has no " \
                                                                                 "class names)"
            raise UserError(f"{csv_file}:{n}: label {label!r} is not {known}; fix the label or leave the column out")
    return indices


_ARG = "__input__"  # arrays._read names the config key data_loader.args.<arg>; its messages are rewritten to --input


def read_arrays(path: str, inputs_key: str = "x",
                targets_key: str | None = "y") -> tuple[np.ndarray, np.ndarray | None]:
    """(the samples, their labels or None) of a .npy/.npz/.blosc2 file, read as ArrayDataLoader reads its files:
    a .npz gives its only array, else the one named inputs_key; labels when it also holds targets_key with one
    integer per sample."""
    names: dict[str, str] = {}
    if Path(path).suffix.lower() == ".npz":
        _read_arrays(path, {})  # the checks on the file itself
        with np.load(path, allow_pickle=False) as npz:
            held = list(npz.files)
        key = held[0] if len(held) == 1 else inputs_key
        if key not in held:
            raise UserError(f"--input {path}: no array {inputs_key!r} among {held or 'none'}; save the inputs as "
                            f"{inputs_key!r} (np.savez(path, {inputs_key}=inputs)) or give a .npy file")
        names = {"inputs_key": key}
        if targets_key in held and targets_key != key:
            names["targets_key"] = targets_key
    arrays = _read_arrays(path, names)
    inputs = arrays[0]
    targets = arrays[1] if len(arrays) == 2 else None
    labelled = targets is not None and targets.ndim == 1 and targets.dtype.kind in "iu" and len(targets) == len(inputs)
    return inputs, targets if labelled else None


def _read_arrays(path: str, names: dict[str, str]) -> list[np.ndarray]:
    try:
        return _read(path, _ARG, ARRAY_SUFFIXES, names)
    except UserError as e:
        raise UserError([p.replace(f"data_loader.args.{_ARG}: ", "--input ") for p in e.problems]) from None


# ---- the inputs in batches ----

class Unreadable(NamedTuple):
    """What ImageFiles gives for a file it cannot read: the reason, naming the file."""

    message: str


class InputBatch(NamedTuple):
    """indices: the inputs in the batch (their positions in the list); inputs: their model inputs stacked, None when
    none could be read; skipped: (index, reason) of those that could not be read."""

    indices: list[int]
    inputs: torch.Tensor | None
    skipped: list[tuple[int, str]]


class ImageFiles(Dataset):
    """Image files through an InputPipeline; a file that cannot be read gives Unreadable instead of raising."""

    def __init__(self, paths: Sequence[str], pipeline: InputPipeline):
        self.paths, self.pipeline = paths, pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | Unreadable]:
        try:
            image = self.pipeline.read(self.paths[index])
        except UserError as e:  # read_image's one line for a missing, corrupt or truncated file
            return index, Unreadable(str(e))
        return index, self.pipeline.transform(image)


def collate_inputs(samples: list[tuple[int, torch.Tensor | Unreadable]]) -> InputBatch:
    """ImageFiles' samples as one batch, the unreadable ones set aside."""
    skipped = [(i, x.message) for i, x in samples if isinstance(x, Unreadable)]
    kept = [(i, x) for i, x in samples if not isinstance(x, Unreadable)]
    if not kept:
        return InputBatch([], None, skipped)
    try:
        inputs = torch.stack([x for _, x in kept])
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        sizes = sorted({tuple(x.shape) for _, x in kept})
        raise UserError(f"--input: images of different sizes {sizes[:3]} in one batch, which the run's "
                        "data_loader.args.eval_transforms do not resize; give images of the size the run was trained "
                        "on") from None
    return InputBatch([i for i, _ in kept], inputs, skipped)


def array_batches(inputs: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
    """The samples of an array in batches, float32 as ArrayDataLoader serves inputs (converted a batch at a time)."""
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        yield InputBatch(list(range(start, start + len(chunk))), _tensor(chunk), [])
