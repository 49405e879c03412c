"""Datasets behind the data loaders: images held in memory, image files listed in a CSV, and their helpers."""
from __future__ import annotations

import csv
import functools
import os
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data.dataloader import default_collate

from data_loader.transforms import image_pipeline
from utils.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # new files' image suffixes


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) held in memory and their targets; each image goes through transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Callable):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]


class StoredImages(TensorDataset):
    """uint8 images (N, C, H, W) and their targets, held as stored; a batch is converted to float32 and normalised
    where it is used, after its copy to the device (prepare): a quarter of float32's memory, and of its copies.
    The values are those of the per-sample pipeline's ToDtype(float32, scale=True) and Normalize, bit for bit."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        super().__init__(images, targets)
        self.mean, self.std = list(mean), list(std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A batch (or one image) of stored images as the model takes it, on their device."""
        from torchvision.transforms.v2 import functional as F

        scaled = F.to_dtype(images, torch.float32, scale=True)  # a new tensor: uint8 in, float32 out
        return F.normalize(scaled, self.mean, self.std, inplace=True)  # in it: no second batch-sized tensor

    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        return self.prepare(image), target


def in_memory_images(images: torch.Tensor, targets: torch.Tensor, spec: Sequence | None, mean: Sequence[float],
                     std: Sequence[float], path: str) -> Dataset:
    """images with the transforms spec names; without any, kept as they are stored and served as slices of one
    tensor (the fast path: converted and normalised a batch at a time, on the device), else per sample."""
    pipeline = image_pipeline(spec, mean, std, path)
    if not spec and images.dtype == torch.uint8:
        return StoredImages(images, targets, mean, std)
    if not spec:
        return TensorDataset(pipeline(images), targets)
    return ImageTensorDataset(images, targets, pipeline)


def read_image(path: str, mode: str = "RGB"):
    """The image at path as a PIL image in mode ("RGB", "L", ...); a missing or unreadable file raises UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"{path}: cannot read the image ({e}); replace or remove the file") from None


def image_reader(mode: str) -> Callable:
    """read_image for one mode, picklable for DataLoader workers."""
    return functools.partial(read_image, mode=mode)


class ImageFileDataset(Dataset):
    """(image file, label) pairs: each image is read when asked for and goes through transform."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, mode: str = "RGB"):
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_image(path, self.mode)), label


def collate_images(batch: list):
    """default_collate, with the fix spelled out when images of different sizes meet in a batch."""
    try:
        return default_collate(batch)
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        sizes = sorted({tuple(sample[0].shape) for sample in batch})
        raise UserError(f"data_loader.args: images of different sizes {sizes[:3]} cannot form a batch; add "
                        "{\"type\": \"Resize\", \"args\": {\"size\": [H, W]}} (or a crop) to both transforms and "
                        "eval_transforms") from None


def test_source(value: str | None, key: str, what: str) -> str:
    """The test split's file or folder, data_loader.args.<key> (training=False, as test.py asks); unset, a
    UserError says to set it to what."""
    if value is None:
        raise UserError(f"data_loader.args.{key} is not set: test.py evaluates on a test split; set it to {what}")
    return value


def read_annotations(annotations_file: str, img_dir: str, header: bool | None, classes: Sequence[str] | None,
                     key: str) -> tuple[list[tuple[str, int]], list[str] | None]:
    """The (image path, label index) pairs of a CSV of file name and label, and the class names when the
    labels are names (sorted, or as given by classes); integer labels are used as they are.

    With header=None, the first row is a header when its label is not an integer and its file is not in img_dir.
    """
    where = f"data_loader.args.{key}"
    if not os.path.isfile(annotations_file):
        raise UserError(f"{where}: no file {annotations_file} (relative paths are from the working directory)")
    if not os.path.isdir(img_dir):
        raise UserError(f"data_loader.args.img_dir: no directory {img_dir} (relative paths are from the working "
                        "directory)")
    try:
        with open(annotations_file, newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{where}: cannot read {annotations_file}: {e}") from None
    if rows and (header or header is None and _looks_like_header(rows[0][1], img_dir)):
        rows = rows[1:]
    if not rows:
        raise UserError(f"{where}: {annotations_file} lists no images; expected rows of 'file name,label'")
    names, labels = [], []
    for n, row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UserError(f"{annotations_file}:{n}: expected 'file name,label', got {','.join(row)!r}; fix or "
                            "remove the row")
        names.append(os.path.join(img_dir, row[0].strip()))
        labels.append(row[1].strip())
    missing = [(n, name) for (n, _), name in zip(rows, names) if not os.path.isfile(name)]
    if missing:
        n, name = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{annotations_file}:{n}: no image file {name}{more}; fix data_loader.args.img_dir or the "
                        "CSV")
    indices, classes = _label_indices(labels, classes, [n for n, _ in rows], annotations_file)
    return list(zip(names, indices)), classes


def _looks_like_header(row: list[str], img_dir: str) -> bool:
    return len(row) >= 2 and not _is_int(row[1]) and not os.path.isfile(os.path.join(img_dir, row[0].strip()))


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _label_indices(labels: list[str], classes: Sequence[str] | None, lines: list[int],
                   annotations_file: str) -> tuple[list[int], list[str] | None]:
    if classes is None and all(_is_int(label) for label in labels):
        indices = [int(label) for label in labels]
        bad = next((i for i, v in enumerate(indices) if v < 0), None)
        if bad is not None:
            raise UserError(f"{annotations_file}:{lines[bad]}: label {indices[bad]} is negative; labels are class "
                            "indices from 0, or class names")
        return indices, None
    classes = sorted(set(labels)) if classes is None else list(classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = next((i for i, label in enumerate(labels) if label not in index), None)
    if unknown is not None:
        raise UserError(f"{annotations_file}:{lines[unknown]}: label {labels[unknown]!r} is not one of the classes "
                        f"in data_loader.args.classes {classes}")
    return [index[label] for label in labels], classes
