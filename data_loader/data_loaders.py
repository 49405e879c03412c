"""The data loaders config.json can name in data_loader.type: the names in __all__."""
from __future__ import annotations

import copy
import functools
import os
import pickle
from typing import Callable

import torch
from torch.utils.data import Dataset, TensorDataset

from base.base_data_loader import BaseDataLoader, InferenceSource
from data_loader.arrays import ARRAY_INPUTS, ArrayDataLoader, arrays_only
from data_loader.datasets import (ImageFileDataset, collate_images, image_reader, in_memory_images,
                                  read_annotations, test_source)
from data_loader.file_check import readable_samples
from data_loader.inputs import image_files_source, read_pixels, with_defaults
from data_loader.transforms import describe_pipeline, image_pipeline, normalisation, transform_problems
from logger import get_logger
from utils.errors import UserError

__all__ = ["DigitsDataLoader", "MnistDataLoader", "FashionMnistDataLoader", "KmnistDataLoader", "Cifar10DataLoader",
           "Cifar100DataLoader", "ImageCsvDataLoader", "ImageFolderDataLoader", "ArrayDataLoader"]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the usual default for photographs


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
        pin_memory: bool = False,
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
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers, pin_memory=pin_memory)

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        """Arrays only (.npy/.npz/.blosc2): 1 x 8 x 8 samples scaled as the loader serves them."""
        return arrays_only(cls, path)

    @classmethod
    def preprocessing(cls, args: dict) -> dict:
        return dict(ARRAY_INPUTS)


class _TakesTransforms:
    """Loaders whose args list torchvision transforms: config validation checks them with every other problem."""

    @classmethod
    def config_problems(cls, args: dict, path: str) -> list[str]:
        return transform_problems(args, path)

    @classmethod
    def preprocessing(cls, args: dict) -> dict:
        """inference_source's steps: an image file read in the loader's mode, through eval_transforms, scaled to
        float and normalised (its class's _eval_pipeline, which inference_source uses too)."""
        mode, transform = cls._eval_pipeline(args)
        try:
            return describe_pipeline(transform, mode)
        except ValueError as e:
            raise ValueError(f"data_loader.args.eval_transforms: {e}") from None


class _TorchvisionDataLoader(_TakesTransforms, BaseDataLoader):
    """A torchvision dataset under data_dir in torchvision's layout, held in memory as uint8 tensors.

    Without transforms, the images are converted and normalised once and batches are sliced from one
    tensor; with transforms, each sample goes through them (use num_workers; persistent_workers keeps them between
    epochs). Validation and test samples go through eval_transforms. mean/std default to the dataset's own statistics.
    """

    dataset_name: str  # the torchvision.datasets class
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std of the training images

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        shuffle: bool = True,
        validation_split: float | int = 0.0,
        num_workers: int = 1,
        training: bool = True,
        download: bool = True,
        transforms: list | None = None,
        eval_transforms: list | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        self.data_dir = data_dir
        images, targets = self._read(data_dir, training, download)
        mean, std = self._statistics(mean, std)
        spec, key = (transforms, "transforms") if training else (eval_transforms, "eval_transforms")
        self.dataset = in_memory_images(images, targets, spec, mean, std, f"data_loader.args.{key}")
        eval_dataset = None
        if training and validation_split and eval_transforms != transforms:
            eval_dataset = in_memory_images(images, targets, eval_transforms, mean, std,
                                            "data_loader.args.eval_transforms")
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, eval_dataset=eval_dataset)

    @classmethod
    def _statistics(cls, mean: list[float] | None, std: list[float] | None) -> tuple[list[float], list[float]]:
        """(mean, std) per channel: the config's, else the dataset's own (stats)."""
        return normalisation(mean, std, cls.stats, len(cls.stats[0]), "data_loader.args")

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        """Image files as the dataset holds its images, their pixels uint8 C x H x W in its mode (grey for the MNIST
        family, RGB for CIFAR), through eval_transforms and the normalisation its test samples get (so an image must
        have the dataset's size unless eval_transforms resize); arrays as model inputs. The class names are the
        dataset's (CIFAR's from its meta file under data_dir: unknown without it)."""
        mode, transform = cls._eval_pipeline(args)
        return image_files_source(path, functools.partial(read_pixels, mode=mode), transform,
                                  cls._class_names(with_defaults(cls, args).get("data_dir") or ""))

    @classmethod
    def _eval_pipeline(cls, args: dict) -> tuple[str, Callable]:
        """(the mode new image files are read in, the transform their pixels go through), from the run's args."""
        args = with_defaults(cls, args)
        mean, std = cls._statistics(args["mean"], args["std"])
        mode = "L" if len(cls.stats[0]) == 1 else "RGB"
        return mode, image_pipeline(args["eval_transforms"], mean, std, "data_loader.args.eval_transforms")

    @classmethod
    def _class_names(cls, data_dir: str) -> list[str] | None:
        """The dataset's class names, read without its images: torchvision's for the MNIST family, the meta file's
        for CIFAR (None, with a warning, when data_dir does not hold it)."""
        dataset = _dataset_class(cls.dataset_name)
        if not hasattr(dataset, "meta"):
            return list(dataset.classes)
        path = os.path.join(data_dir, dataset.base_folder, dataset.meta["filename"])
        try:
            with open(path, "rb") as f:
                return [str(name) for name in pickle.load(f, encoding="latin1")[dataset.meta["key"]]]
        except (OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as e:
            get_logger("inputs").warning("Class names unknown (classes are written as indices): cannot read %s (%s)",
                                         path, e)
            return None

    def _read(self, data_dir: str, training: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images, uint8 (N, C, H, W), and their int64 labels."""
        dataset = self._open(data_dir, training, download)
        self.classes = list(dataset.classes)
        images = torch.as_tensor(dataset.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # CIFAR is N, H, W, C
        return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)

    def _open(self, data_dir: str, training: bool, download: bool):
        cls = _dataset_class(self.dataset_name)
        folder, files = _expected_files(cls, data_dir)
        try:
            return cls(data_dir, train=training, download=download)
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
            if all(os.path.isfile(os.path.join(folder, f)) for f in files):
                raise UserError(f"data_loader.args.data_dir: cannot read the {self.dataset_name} files in {folder} "
                                f"({e}); they may be damaged: delete them and download again") from e
            reason = "the download failed" if download else "data_loader.args.download is false"
            raise UserError(
                f"data_loader.args.data_dir: the {self.dataset_name} files are not in {folder} and {reason}; put "
                f"{', '.join(files)} there (torchvision's layout, archives extracted), or set "
                "data_loader.args.download=true on a machine with a network connection"
            ) from e


def _dataset_class(name: str) -> type:
    """The torchvision dataset class; CIFAR's files are checked for presence only, as MNIST's are (torchvision
    would hash about 180 MB on every start; the downloaded archive is still checked)."""
    from torchvision import datasets

    cls = getattr(datasets, name)
    if not hasattr(cls, "train_list"):
        return cls
    return type(name, (cls,), {"train_list": [[f, None] for f, _ in cls.train_list],
                               "test_list": [[f, None] for f, _ in cls.test_list], "meta": {**cls.meta, "md5": None}})


def _expected_files(cls: type, data_dir: str) -> tuple[str, list[str]]:
    """The folder under data_dir and the files there that cls reads."""
    if hasattr(cls, "train_list"):  # CIFAR: pickled batches
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return os.path.join(data_dir, cls.base_folder), files
    # The MNIST family: IDX files, gunzipped
    return (os.path.join(data_dir, cls.__name__, "raw"),
            [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources])


class MnistDataLoader(_TorchvisionDataLoader):
    """MNIST handwritten digits, 28x28 grey (data_dir/MNIST/raw), as in the original template."""

    dataset_name, stats = "MNIST", ((0.1307,), (0.3081,))


class FashionMnistDataLoader(_TorchvisionDataLoader):
    """Fashion-MNIST clothing images, 28x28 grey (data_dir/FashionMNIST/raw)."""

    dataset_name, stats = "FashionMNIST", ((0.2860,), (0.3530,))


class KmnistDataLoader(_TorchvisionDataLoader):
    """Kuzushiji-MNIST cursive Japanese characters, 28x28 grey (data_dir/KMNIST/raw)."""

    dataset_name, stats = "KMNIST", ((0.1918,), (0.3483,))


class Cifar10DataLoader(_TorchvisionDataLoader):
    """CIFAR-10, 32x32 colour images of 10 classes (data_dir/cifar-10-batches-py)."""

    dataset_name, stats = "CIFAR10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class Cifar100DataLoader(_TorchvisionDataLoader):
    """CIFAR-100, 32x32 colour images of 100 classes (data_dir/cifar-100-python)."""

    dataset_name, stats = "CIFAR100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


class _ImageFilesDataLoader(_TakesTransforms, BaseDataLoader):
    """Image files read as they are needed (use num_workers; persistent_workers keeps them between epochs), through
    transforms when training and eval_transforms for validation and test; mean/std default to ImageNet's. Every file
    is checked when the loader is built (data_loader/file_check.py: its header and end, not its pixels): an
    unreadable one is an error naming them all, or with skip_unreadable left out with a warning."""

    unreadable = 0  # the files left out as unreadable (skip_unreadable)

    @staticmethod
    def _statistics(mode: str, mean: list[float] | None, std: list[float] | None) -> tuple[list[float], list[float]]:
        """(mean, std) per channel of images read in mode: the config's, else ImageNet's for RGB and their grey
        average per channel for the other modes."""
        channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode)
        if channels is None:
            raise UserError(f"data_loader.args.mode: expected 'RGB', 'L' (grey) or 'RGBA', got {mode!r}")
        default = IMAGENET_STATS if channels == 3 else ((0.449,) * channels, (0.226,) * channels)
        return normalisation(mean, std, default, channels, "data_loader.args")

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        """Image files read in the loader's mode through eval_transforms, mean and std, as its test samples are;
        arrays as model inputs. A CSV's file names are relative to its own folder (ImageCsvDataLoader: to img_dir
        first)."""
        mode, transform = cls._eval_pipeline(args)
        return image_files_source(path, image_reader(mode), transform, args.get("classes"),
                                  csv_dirs=cls._csv_dirs(args))

    @classmethod
    def _eval_pipeline(cls, args: dict) -> tuple[str, Callable]:
        """(the mode new image files are read in, the transform they go through), from the run's args."""
        args = with_defaults(cls, args)
        mean, std = cls._statistics(args["mode"], args["mean"], args["std"])
        return args["mode"], image_pipeline(args["eval_transforms"], mean, std, "data_loader.args.eval_transforms")

    @classmethod
    def _csv_dirs(cls, args: dict) -> list[str]:
        """Where a CSV given as --input lists its files, before the CSV's own folder."""
        return []

    def _start(self, dataset: Dataset, training: bool, transforms: list | None, eval_transforms: list | None,
               mean: list[float] | None, std: list[float] | None, mode: str, *, files: tuple[str, str],
               skip_unreadable: bool, **loader_args) -> None:
        """files: (the config key of the images, their folder), for the check's messages."""
        mean, std = self._statistics(mode, mean, std)
        kept = readable_samples(dataset.samples, skip_unreadable, *files)
        self.unreadable = len(dataset.samples) - len(kept)
        if self.unreadable:
            dataset.samples = kept
            if hasattr(dataset, "targets"):  # torchvision's ImageFolder keeps the labels and samples twice more
                dataset.targets, dataset.imgs = [label for _, label in kept], kept
        spec, key = (transforms, "transforms") if training else (eval_transforms, "eval_transforms")
        dataset.transform = image_pipeline(spec, mean, std, f"data_loader.args.{key}")
        eval_dataset = copy.copy(dataset)
        eval_dataset.transform = image_pipeline(eval_transforms, mean, std, "data_loader.args.eval_transforms")
        self.dataset = dataset
        super().__init__(dataset, **loader_args, collate_fn=collate_images, eval_dataset=eval_dataset)


class ImageCsvDataLoader(_ImageFilesDataLoader):
    """Images in img_dir listed in a CSV of file name and label, as in PyTorch's custom-dataset tutorial.

    Labels are class indices or class names; names are mapped to indices in sorted order, and train.py
    saves that order as data_loader.args.classes in the run's config so that test.py and resume map the
    same way. header: whether the CSV's first row is a header (null: guessed).
    """

    def __init__(
        self,
        annotations_file: str,
        img_dir: str,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        num_workers: int = 0,
        training: bool = True,
        test_annotations_file: str | None = None,
        header: bool | None = None,
        classes: list[str] | None = None,
        transforms: list | None = None,
        eval_transforms: list | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        mode: str = "RGB",
        pin_memory: bool = False,
        persistent_workers: bool = False,
        skip_unreadable: bool = False,
    ):
        """skip_unreadable: leave out (with a warning) image files that cannot be read, instead of stopping at the
        start with their names."""
        key = "annotations_file" if training else "test_annotations_file"
        if not training:
            annotations_file = test_source(test_annotations_file, key, "a CSV of the test images (file name,label)")
        samples, self.classes = read_annotations(annotations_file, img_dir, header, classes, key)
        self._start(ImageFileDataset(samples, transform=None, mode=mode), training, transforms, eval_transforms,
                    mean, std, mode, batch_size=batch_size, shuffle=shuffle, validation_split=validation_split,
                    num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers,
                    skip_unreadable=skip_unreadable, files=(f"data_loader.args.{key}", img_dir))

    @classmethod
    def _csv_dirs(cls, args: dict) -> list[str]:
        """img_dir: the loader's own CSVs (its test CSV too) list files relative to it."""
        return [args["img_dir"]] if args.get("img_dir") else []


class ImageFolderDataLoader(_ImageFilesDataLoader):
    """Images in torchvision's ImageFolder layout, data_dir/<class name>/<image>; classes are the folder names
    in sorted order (saved as data_loader.args.classes in the run's config). test_dir: the test split."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        num_workers: int = 0,
        training: bool = True,
        test_dir: str | None = None,
        classes: list[str] | None = None,
        transforms: list | None = None,
        eval_transforms: list | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        mode: str = "RGB",
        pin_memory: bool = False,
        persistent_workers: bool = False,
        skip_unreadable: bool = False,
    ):
        """skip_unreadable: leave out (with a warning) image files that cannot be read, instead of stopping at the
        start with their names."""
        key = "data_dir" if training else "test_dir"
        if not training:
            data_dir = test_source(test_dir, key, "a folder of test images in the same <class name>/<image> layout")
        from data_loader.image_folder import image_folder  # imports torchvision: only for this loader

        dataset = image_folder(data_dir, classes, image_reader(mode), f"data_loader.args.{key}")
        self.classes = dataset.classes
        self._start(dataset, training, transforms, eval_transforms, mean, std, mode, batch_size=batch_size,
                    shuffle=shuffle, validation_split=validation_split, num_workers=num_workers,
                    pin_memory=pin_memory, persistent_workers=persistent_workers, skip_unreadable=skip_unreadable,
                    files=(f"data_loader.args.{key}", data_dir))
