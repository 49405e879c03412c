"""The data loaders config.json can name in data_loader.type: every public class defined here."""
from __future__ import annotations

import os

import torch
from torch.utils.data import TensorDataset

from base.base_data_loader import BaseDataLoader
from utils.errors import UserError

_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


class DigitsDataLoader(BaseDataLoader):
    """scikit-learn's 1,797 8x8 handwritten digits: ships with scikit-learn, so nothing to download."""

    def __init__(
        self,
        data_dir: str = "data/",  # unused; accepted so that calls written for MnistDataLoader work
        batch_size: int = 64,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        num_workers: int = 0,
        training: bool = True,
        target: str = "label",
    ):
        """target: "label" (the digit, for classification) or "image" (the input itself, for autoencoders)."""
        if target not in ("label", "image"):
            raise UserError(f"data_loader.args.target must be 'label' or 'image', got {target!r}")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        # A fixed, stratified 20% test part; training=True gives the rest (train + validation).
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        x_train, x_test = x_train / 16.0, x_test / 16.0
        mean, std = x_train.mean(), x_train.std()
        x, y = (x_train, y_train) if training else (x_test, y_test)
        images = torch.as_tensor((x - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)
        labels = torch.as_tensor(y, dtype=torch.int64)
        self.dataset = TensorDataset(images, labels if target == "label" else images)
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers)


class MnistDataLoader(BaseDataLoader):
    """MNIST from torchvision, as in the original template (downloads into data_dir/MNIST/raw)."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        shuffle: bool = True,
        validation_split: float | int = 0.0,
        num_workers: int = 1,
        training: bool = True,
        download: bool = True,
    ):
        from torchvision import datasets

        self.data_dir = data_dir
        try:
            mnist = datasets.MNIST(self.data_dir, train=training, download=download)
        except (RuntimeError, OSError) as e:  # "Dataset not found", or a failed download (URLError is an OSError)
            raw = os.path.join(data_dir, "MNIST", "raw")
            if all(os.path.isfile(os.path.join(raw, f)) for f in _MNIST_FILES):
                raise
            reason = "the download failed" if download else "data_loader.args.download is false"
            raise UserError(
                f"data_loader.args.data_dir: the MNIST files are not in {raw} and {reason}; put "
                f"{', '.join(_MNIST_FILES)} there (gunzipped: torchvision extracts the .gz files only when "
                "downloading), or set data_loader.args.download=true on a machine with a network connection"
            ) from e
        # Kept in memory and normalised once, exactly as ToTensor + Normalize((0.1307,), (0.3081,)) would
        # per sample; batches are then sliced from the tensors.
        images = mnist.data.unsqueeze(1).float().div(255).sub(0.1307).div(0.3081)
        self.dataset = TensorDataset(images, mnist.targets)
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers)
