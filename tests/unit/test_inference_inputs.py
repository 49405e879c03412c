"""data_loader/inference.py: an image file through input_pipeline equals the same image served by the run's loader
for evaluation (the files' loaders, MNIST, CIFAR), the loaders that take no image files say so, and the lists,
labels, batches and arrays around them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_loader.data_loaders import (ArrayDataLoader, Cifar10DataLoader, DigitsDataLoader, ImageCsvDataLoader,
                                      ImageFolderDataLoader, MnistDataLoader)
from data_loader.inference import (ImageFiles, InputPipeline, Unreadable, array_batches, collate_inputs,
                                   folder_labels, image_files, input_pipeline, listed_images, names_in_data,
                                   read_arrays)
from fake_data import write_cifar, write_image, write_image_csv, write_image_folder, write_mnist
from utils.errors import UserError

CROP = [{"type": "Resize", "args": {"size": 10}}, {"type": "CenterCrop", "args": {"size": 8}}]


def through(pipeline: InputPipeline, path) -> torch.Tensor:
    return pipeline.transform(pipeline.read(str(path)))


@pytest.mark.parametrize("args", [{}, {"eval_transforms": CROP, "transforms": ["RandomHorizontalFlip"]},
                                  {"mode": "L", "mean": [0.5], "std": [0.25]}], ids=["default", "crop", "grey"])
def test_an_image_folder_file_equals_the_loaders_test_sample(tmp_path, args):
    write_image_folder(tmp_path / "test", {"a": 2, "b": 1}, size=(12, 9))
    loader = ImageFolderDataLoader(str(tmp_path / "train"), training=False, test_dir=str(tmp_path / "test"),
                                   validation_split=0, **args)
    pipeline = input_pipeline(ImageFolderDataLoader, {"data_dir": "unused", **args})
    for i, (path, _) in enumerate(loader.dataset.samples):
        assert torch.equal(through(pipeline, path), loader.dataset[i][0])


def test_an_image_csv_file_equals_the_loaders_test_sample(tmp_path):
    names = write_image_csv(tmp_path / "img", tmp_path / "test.csv", ["cat", "dog"])
    args = {"annotations_file": "unused", "img_dir": str(tmp_path / "img"), "eval_transforms": CROP,
            "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}
    loader = ImageCsvDataLoader(**args, training=False, test_annotations_file=str(tmp_path / "test.csv"),
                                validation_split=0)
    pipeline = input_pipeline(ImageCsvDataLoader, args)
    for i, name in enumerate(names):
        assert torch.equal(through(pipeline, tmp_path / "img" / name), loader.dataset[i][0])


@pytest.mark.parametrize("args", [{}, {"eval_transforms": [{"type": "CenterCrop", "args": {"size": 20}}],
                                       "mean": [0.5], "std": [0.2]}], ids=["sliced", "per-sample"])
def test_an_mnist_image_file_equals_the_in_memory_test_sample(tmp_path, args):
    images, _ = write_mnist(tmp_path, n_test=3)["t10k"]
    loader = MnistDataLoader(str(tmp_path), batch_size=3, training=False, download=False, **args)
    pipeline = input_pipeline(MnistDataLoader, {"data_dir": str(tmp_path), "batch_size": 3, **args})
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.astype(np.uint8), "L").save(tmp_path / f"{i}.png")
        assert torch.equal(through(pipeline, tmp_path / f"{i}.png"), loader.dataset[i][0])
    assert names_in_data(MnistDataLoader) and not names_in_data(ImageFolderDataLoader)


def test_a_cifar_image_file_equals_the_in_memory_test_sample(tmp_path):
    images, _ = write_cifar(tmp_path, n_test=3)["test"]
    loader = Cifar10DataLoader(str(tmp_path), batch_size=3, training=False, download=False)
    pipeline = input_pipeline(Cifar10DataLoader, {"data_dir": str(tmp_path), "batch_size": 3})
    for i, pixels in enumerate(images):
        Image.fromarray(pixels, "RGB").save(tmp_path / f"{i}.png")
        assert torch.equal(through(pipeline, tmp_path / f"{i}.png"), loader.dataset[i][0])


class MyLoader:
    def __init__(self, data_dir: str, batch_size: int = 4):
        pass


@pytest.mark.parametrize("cls, says", [(DigitsDataLoader, "DigitsDataLoader takes arrays, not image files"),
                                       (ArrayDataLoader, "ArrayDataLoader takes arrays"),
                                       (MyLoader, "data_loader.type MyLoader is not one whose image pipeline")])
def test_loaders_that_take_no_image_files_say_what_to_give(cls, says):
    pipeline = input_pipeline(cls, {})
    assert pipeline.read is None and says in pipeline.reason and "--input test" in pipeline.reason
    assert ".npy/.npz/.blosc2" in pipeline.reason


def test_a_bad_mode_is_an_error_naming_the_key():
    with pytest.raises(UserError, match="data_loader.args.mode"):
        input_pipeline(ImageFolderDataLoader, {"data_dir": "x", "mode": "CMYK"})


def test_image_files_are_found_in_subfolders_by_suffix_in_any_case_and_sorted(tmp_path):
    for name in ("b.PNG", "a/x.jpg", "a/deeper/z.TIFF", "c.webp", "a.gif"):  # found by name: the content is not read
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert image_files(str(tmp_path)) == (["a.gif", "a/deeper/z.TIFF", "a/x.jpg", "b.PNG", "c.webp"], 1)


def test_folder_labels_come_from_class_folders_only_when_every_file_has_one():
    assert folder_labels(["dog/1.png", "cat/2.png", "cat/x/3.png"], ["cat", "dog"]) == [1, 0, 0]
    assert folder_labels(["dog/1.png", "2.png"], ["cat", "dog"]) is None
    assert folder_labels(["emu/1.png"], ["cat", "dog"]) is None
    assert folder_labels(["dog/1.png"], None) is None


def test_a_csv_list_with_header_labels_and_mistakes(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("file,label\na.png,dog\nsub/b.png,cat\n")
    assert listed_images(str(path), ["cat", "dog"]) == (["a.png", "sub/b.png"], [1, 0])
    path.write_text("a.png\nb.jpg\n")  # no header, no labels: files need not exist yet (they are read later)
    assert listed_images(str(path), None) == (["a.png", "b.jpg"], None)
    path.write_text("name\na.png,1\nb.png,0\n")
    assert listed_images(str(path), None) == (["a.png", "b.png"], [1, 0])
    path.write_text("a.png,dog\nb.png,emu\n")
    with pytest.raises(UserError, match=r"list.csv:2: label 'emu' is not one of the run's classes"):
        listed_images(str(path), ["cat", "dog"])
    path.write_text("a.png,dog\nb.png\n")
    with pytest.raises(UserError, match=r"list.csv:2: no label, while other rows have one"):
        listed_images(str(path), ["cat", "dog"])
    path.write_text("file,label\n")
    with pytest.raises(UserError, match="lists no images"):
        listed_images(str(path), None)


def test_an_unreadable_file_is_set_aside_in_its_batch(tmp_path):
    write_image(tmp_path / "good.png", size=(8, 8))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    pipeline = input_pipeline(ImageFolderDataLoader, {"data_dir": "x"})
    dataset = ImageFiles([str(tmp_path / n) for n in ("good.png", "bad.png", "gone.png")], pipeline)
    samples = [dataset[i] for i in range(3)]
    assert isinstance(samples[1][1], Unreadable) and "bad.png" in samples[1][1].message
    assert isinstance(samples[2][1], Unreadable) and "gone.png" in samples[2][1].message
    batch = collate_inputs(samples)
    assert batch.indices == [0] and batch.inputs.shape == (1, 3, 8, 8) and [i for i, _ in batch.skipped] == [1, 2]
    assert collate_inputs(samples[1:]).inputs is None


def test_images_of_different_sizes_in_a_batch_are_a_user_error():
    with pytest.raises(UserError, match=r"different sizes \[\(3, 4, 4\), \(3, 5, 5\)\]"):
        collate_inputs([(0, torch.zeros(3, 4, 4)), (1, torch.zeros(3, 5, 5))])


def test_arrays_are_read_as_array_data_loader_reads_them(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    np.savez(tmp_path / "one.npz", samples=x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(6))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    inputs, labels = read_arrays(str(tmp_path / "one.npz"))
    assert np.array_equal(inputs, x) and labels is None
    inputs, labels = read_arrays(str(tmp_path / "xy.npz"))
    assert labels.tolist() == list(range(6))
    with pytest.raises(UserError, match=r"^--input .*two.npz: no array 'x' among \['a', 'b'\]"):
        read_arrays(str(tmp_path / "two.npz"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"^--input .*bad.npy: cannot read it"):
        read_arrays(str(tmp_path / "bad.npy"))
    batches = list(array_batches(x, 4))
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 5]] and batches[0].inputs.dtype == torch.float32
