"""Helpers for a data loader's inference_source (base.BaseDataLoader): new files as model inputs, made the way the
loader makes its test samples. image_files_source reads a folder of images, a CSV list of image files (with labels
or without) or an array file; array_source (data_loader/arrays.py) an array file alone. A file that cannot be read
is set aside in its batch, not raised, so that DataLoader workers go on and predict.py can skip or stop."""
from __future__ import annotations

import csv
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from base.base_data_loader import InferenceSource, InputBatch
from data_loader.arrays import SUFFIXES as ARRAY_SUFFIXES
from data_loader.arrays import array_source
from data_loader.datasets import IMAGE_SUFFIXES, image_reader, read_image
from logger import get_logger
from utils.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "InferenceSource", "InputBatch", "Unreadable", "array_source",
           "collate_inputs", "folder_labels", "image_files", "image_files_source", "image_reader",
           "listed_images", "read_image", "read_pixels", "with_defaults"]

KINDS = f"a folder of images, a .csv list of image files, a {'/'.join(ARRAY_SUFFIXES)} file of samples or the word test"


def with_defaults(loader_class: type, args: dict) -> dict:
    """data_loader.args completed with the defaults of loader_class's __init__ (a run's config holds only the keys
    written in it)."""
    defaults = {name: p.default for name, p in inspect.signature(loader_class).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **args}


def image_files_source(path: str, read: Callable[[str], Any], transform: Callable[[Any], torch.Tensor],
                       classes: Sequence[str] | None = None, *, csv_dirs: Sequence[str] = ()) -> InferenceSource:
    """Image files at path as model inputs, each transform(read(file)), for an inference_source. path is a folder
    (its images and its subfolders', sorted by path; when every one lies in a folder named after one of classes,
    the folders are the labels), a .csv file (one image file a row, relative to the first of csv_dirs that holds it,
    else to the CSV's folder, or absolute; an optional label column of class names or indices; a first row that
    names no image file is a header), or a .npy/.npz/.blosc2 file (its samples as model inputs, as they are).
    read and transform run in DataLoader workers (--num-workers): give picklable ones, e.g. image_reader(mode)."""
    suffix = Path(path).suffix.lower()
    if os.path.isfile(path) and suffix in ARRAY_SUFFIXES:
        return array_source(path, classes=classes)
    if os.path.isdir(path):
        names, others = image_files(path)
        if not names:
            raise UserError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its subfolders; "
                            "give a folder of images")
        if others:
            get_logger("inputs").info("Leaving out %d file(s) in %s that are not images (%s).", others, path,
                                      ", ".join(IMAGE_SUFFIXES))
        paths, labels = [os.path.join(path, name) for name in names], folder_labels(names, classes)
    elif suffix == ".csv":
        names, labels = listed_images(path, classes, csv_dirs)
        paths = listed_paths(path, names, csv_dirs)
    else:
        raise UserError(f"--input {path}: unknown kind of file {suffix or '(no suffix)'!r}; give {KINDS}")
    files = ImageFiles(paths, read, transform)
    return InferenceSource("file", names, functools.partial(file_batches, files), labels,
                           None if classes is None else list(classes))


def read_pixels(path: str, mode: str) -> torch.Tensor:
    """The image at path in mode as a uint8 C x H x W tensor: what the in-memory torchvision loaders hold."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(read_image(path, mode))


# ---- what a folder or a CSV lists ----

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


def listed_images(csv_file: str, classes: Sequence[str] | None,
                  csv_dirs: Sequence[str] = ()) -> tuple[list[str], list[int] | None]:
    """(the file names as listed, their label indices or None) of a CSV of image file names, one a row; a second
    column of labels (class indices, or names of the run's classes) on every row gives the labels. The first row is a
    header when it names no file (in csv_dirs or the CSV's folder) and no image file (e.g. file,label)."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(f), 1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"--input {csv_file}: cannot read it: {e}") from None
    first = rows[0][1][0] if rows else ""
    if rows and not first.lower().endswith(IMAGE_SUFFIXES) and not any(
            os.path.isfile(os.path.join(folder, first)) for folder in (*csv_dirs, os.path.dirname(csv_file))):
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


def listed_paths(csv_file: str, names: Sequence[str], csv_dirs: Sequence[str] = ()) -> list[str]:
    """The file each name of a CSV list stands for: in the first of csv_dirs that holds it, else in the CSV's folder
    (an absolute name as it is)."""
    here = os.path.dirname(csv_file)
    return [next((p for p in (os.path.join(d, name) for d in csv_dirs) if os.path.isfile(p)), os.path.join(here, name))
            for name in names]


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


# ---- the files in batches ----

class Unreadable(NamedTuple):
    """What ImageFiles gives for a file it cannot read: the reason, naming the file."""

    message: str


class ImageFiles(Dataset):
    """Image files, each transform(read(path)); a file that cannot be read gives Unreadable instead of raising."""

    def __init__(self, paths: Sequence[str], read: Callable[[str], Any], transform: Callable[[Any], torch.Tensor]):
        self.paths, self.read, self.transform = paths, read, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | Unreadable]:
        try:
            image = self.read(self.paths[index])
        except UserError as e:  # read_image's one line for a missing, corrupt or truncated file
            return index, Unreadable(str(e))
        return index, self.transform(image)


def file_batches(files: ImageFiles, batch_size: int, num_workers: int = 0) -> DataLoader:
    """The files in order, batch_size at a time, read by num_workers processes (0: this one)."""
    return DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_inputs)


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
