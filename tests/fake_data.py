"""Tiny data files in the real on-disk formats: IDX (the MNIST family), CIFAR's pickled batches, image files
with a CSV of labels, torchvision's ImageFolder layout, and .npz arrays."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR = {  # folder, training batches, test batch, meta file, meta key, label key
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
         "label_names", "labels"),
    100: ("cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it: big-endian magic (2051 images, 2049 labels), sizes, uint8 data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 20, n_test: int = 10, name: str = "MNIST") -> dict:
    """Tiny MNIST-family files in torchvision's layout root/<name>/raw; returns {split: (images, labels)}."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.randint(0, 256, (n, 28, 28)), np.arange(n) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        data[split] = images, labels
    return data


def write_cifar(root: Path, n_train: int = 20, n_test: int = 10, classes: int = 10) -> dict:
    """Tiny CIFAR-10/100 files: pickled dicts of uint8 rows (N, 3072: the red, green, blue planes of 32x32)
    and labels, as the real batches are; returns {"train"|"test": (images N x 32 x 32 x 3, labels)}."""
    folder, train_batches, test_batch, meta, meta_key, label_key = CIFAR[classes]
    base = Path(root) / folder
    base.mkdir(parents=True)
    rng = np.random.RandomState(0)

    def dump(name: str, obj: dict) -> None:
        (base / name).write_bytes(pickle.dumps(obj, protocol=2))

    data = {}
    for split, names, n in (("train", train_batches, n_train), ("test", [test_batch], n_test)):
        images, labels = rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % classes
        for part, index in zip(names, np.array_split(np.arange(n), len(names))):
            rows = images[index].transpose(0, 3, 1, 2).reshape(len(index), 3072)
            dump(part, {"batch_label": part, "data": rows, label_key: labels[index].tolist()})
        data[split] = images, labels
    dump(meta, {meta_key: [f"class{i}" for i in range(classes)]})
    return data


def write_image(path: Path, size: tuple[int, int] = (12, 12), seed: int = 0, mode: str = "RGB") -> np.ndarray:
    """A random image file (the format from the suffix); returns its pixels."""
    from PIL import Image

    channels = {"RGB": (3,), "L": ()}[mode]
    pixels = np.random.RandomState(seed).randint(0, 256, (*size[::-1], *channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_image_csv(img_dir: Path, csv_file: Path, labels: list, header: bool = True, first: int = 0) -> list[str]:
    """PNG images in img_dir with a CSV of file name and label, one row per label; returns the file names."""
    names = [f"img{first + i}.png" for i in range(len(labels))]
    for i, name in enumerate(names):
        write_image(img_dir / name, seed=first + i)
    rows = (["file,label"] if header else []) + [f"{n},{label}" for n, label in zip(names, labels)]
    csv_file.write_text("\n".join(rows) + "\n")
    return names


def write_image_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 12)) -> None:
    """root/<class>/<n>.png for each class and count (torchvision's ImageFolder layout)."""
    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_image(root / name / f"{i}.png", size=size, seed=100 * c + i)


def write_arrays(path: Path, n: int = 40, features: int = 16, classes: int = 4, seed: int = 0) -> None:
    """An .npz of x (n, features) float32 and y (n,) int64 class indices that depend on x."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, features).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=np.argmax(x[:, :classes], axis=1).astype(np.int64))
