"""Tests for data_loader/data_loaders.py: Digits, the torchvision datasets read from files in their real formats,
image files with a CSV of labels, and ImageFolder trees."""
from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch

from data_loader.data_loaders import (Cifar10DataLoader, Cifar100DataLoader, DigitsDataLoader, FashionMnistDataLoader,
                                      ImageCsvDataLoader, ImageFolderDataLoader, KmnistDataLoader, MnistDataLoader)
from fake_data import write_cifar, write_image, write_image_csv, write_image_folder, write_mnist
from utils.errors import UserError


# ---- digits ----

def _rows(x):
    return {tuple(row) for row in x.reshape(len(x), -1).tolist()}


def test_digits_sizes_shapes_and_dtypes():
    train = DigitsDataLoader(batch_size=64, validation_split=0.1)
    test = DigitsDataLoader(batch_size=64, validation_split=0.0, training=False)
    assert len(test.dataset) == 360  # ceil(0.2 * 1797)
    assert len(train.dataset) == 1797 - 360
    assert train.n_samples == 1437 - 143 and len(train.valid_sampler) == 143  # int(0.1 * 1437)
    assert test.n_samples == 360 and test.split_validation() is None
    x, y = next(iter(train))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    images = train.dataset.tensors[0]
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3  # normalised on this part
    assert set(test.dataset.tensors[1].tolist()) == set(range(10))  # stratified: every class in the test part


def test_digits_validation_split_as_a_count():
    loader = DigitsDataLoader(validation_split=200)
    assert loader.n_samples == 1437 - 200
    assert len(loader.split_validation().dataset) == 1437  # the same dataset, restricted by the sampler
    assert sum(len(y) for _, y in loader.split_validation()) == 200


def test_digits_test_part_is_disjoint_from_the_training_part_and_fixed():
    torch.manual_seed(1)
    train = DigitsDataLoader(validation_split=0.1)
    test = DigitsDataLoader(validation_split=0.0, training=False)
    assert not _rows(train.dataset.tensors[0]) & _rows(test.dataset.tensors[0])
    assert len(_rows(train.dataset.tensors[0]) | _rows(test.dataset.tensors[0])) == 1797
    torch.manual_seed(2)
    train2 = DigitsDataLoader(validation_split=0.1)
    test2 = DigitsDataLoader(validation_split=0.0, training=False)
    assert torch.equal(train.dataset.tensors[0], train2.dataset.tensors[0])
    assert torch.equal(test.dataset.tensors[0], test2.dataset.tensors[0])
    assert torch.equal(train.valid_sampler.indices, train2.valid_sampler.indices)
    assert train.sampler.seed != train2.sampler.seed  # ... while the training order follows the seed


def test_digits_image_target_for_autoencoders():
    loader = DigitsDataLoader(batch_size=8, target="image", validation_split=0.0)
    data, target = next(iter(loader))
    assert torch.equal(data, target) and data.shape == (8, 1, 8, 8)
    with pytest.raises(UserError, match="target must be 'label' or 'image'"):
        DigitsDataLoader(target="pixels")


# ---- MNIST (tiny files in the real IDX format; nothing is downloaded) ----

@pytest.fixture
def mnist_dir(tmp_path):
    return tmp_path, write_mnist(tmp_path)


@pytest.mark.parametrize("training, split", [(True, "train"), (False, "t10k")])
def test_mnist_reads_idx_files_and_normalises(mnist_dir, training, split):
    root, data = mnist_dir
    loader = MnistDataLoader(data_dir=root, batch_size=4, shuffle=False, num_workers=0, training=training, download=False)
    images, labels = data[split]
    assert len(loader.dataset) == len(images) and loader.split_validation() is None
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    expected = (torch.as_tensor(images[:4], dtype=torch.float32).unsqueeze(1) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == labels[:4].tolist()
    assert sorted(int(v) for _, y in loader for v in y) == sorted(labels.tolist())


def test_mnist_missing_files_without_download(tmp_path):
    with pytest.raises(UserError, match=r"MNIST files are not in .*MNIST/raw and data_loader\.args\.download is false"):
        MnistDataLoader(data_dir=tmp_path, batch_size=4, download=False)


def test_mnist_missing_files_when_the_download_fails(tmp_path, monkeypatch):
    import torchvision

    # A closed local port: the download fails at once, here and on machines with a network.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(UserError, match=r"not in .*MNIST/raw and the download failed.*t10k-labels-idx1-ubyte"):
        MnistDataLoader(data_dir=tmp_path, batch_size=4, download=True)


def test_mnist_needs_all_four_files_even_for_one_split(mnist_dir):
    root, _ = mnist_dir
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()  # torchvision checks all four
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte, train-labels-idx1-ubyte"):
        MnistDataLoader(data_dir=root, batch_size=4, training=True, download=False)


# ---- torchvision datasets ----

# loader, writer of its files, the folder under data_dir, the test split's key, channels, mean, std
TORCHVISION = [
    (MnistDataLoader, lambda root: write_mnist(root, name="MNIST"), "MNIST/raw", "t10k", (0.1307,), (0.3081,)),
    (FashionMnistDataLoader, lambda root: write_mnist(root, name="FashionMNIST"), "FashionMNIST/raw", "t10k",
     (0.2860,), (0.3530,)),
    (KmnistDataLoader, lambda root: write_mnist(root, name="KMNIST"), "KMNIST/raw", "t10k", (0.1918,), (0.3483,)),
    (Cifar10DataLoader, lambda root: write_cifar(root, classes=10), "cifar-10-batches-py", "test",
     (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    (Cifar100DataLoader, lambda root: write_cifar(root, classes=100), "cifar-100-python", "test",
     (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
]
IDS = [row[0].__name__ for row in TORCHVISION]


def normalised(images: np.ndarray, mean, std) -> torch.Tensor:
    """What ToTensor + Normalize(mean, std) give for uint8 images N x H x W (x C)."""
    x = torch.as_tensor(images, dtype=torch.float32) / 255
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("cls, write, folder, test_key, mean, std", TORCHVISION, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_torchvision_loaders_read_the_real_formats_and_normalise(tmp_path, cls, write, folder, test_key, mean, std,
                                                                  training):
    data = write(tmp_path)
    images, labels = data["train" if training else test_key]
    loader = cls(data_dir=str(tmp_path), batch_size=4, shuffle=False, num_workers=0, training=training,
                 download=False)
    x, y = batches(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and len(x) == len(images)
    assert torch.allclose(x, normalised(images, mean, std), atol=1e-5)
    assert y.tolist() == list(labels)


@pytest.mark.parametrize("cls, write, folder, test_key, mean, std", TORCHVISION, ids=IDS)
def test_torchvision_loaders_without_files_name_the_folder_and_the_files(tmp_path, cls, write, folder, test_key,
                                                                          mean, std):
    with pytest.raises(UserError) as info:
        cls(data_dir=str(tmp_path), batch_size=4, download=False)
    message = str(info.value)
    assert f"not in {tmp_path / folder} and data_loader.args.download is false" in message
    write(tmp_path / "other")  # the names listed are the ones torchvision looks for
    for name in (tmp_path / "other" / folder).iterdir():
        assert name.name in message


def test_a_failed_download_says_so(tmp_path, monkeypatch):
    from torchvision import datasets

    # A closed local port: the download fails at once, here and on machines with a network.
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(UserError, match=r"cifar-10-batches-py and the download failed; put data_batch_1, .*test_batch"):
        Cifar10DataLoader(data_dir=str(tmp_path), batch_size=4, download=True)


def test_a_damaged_cifar_file_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"cannot read the CIFAR10 files in .*cifar-10-batches-py .*download again"):
        Cifar10DataLoader(data_dir=str(tmp_path), batch_size=4, download=False)


def test_validation_batches_get_eval_transforms_not_training_augmentation(tmp_path):
    data = write_mnist(tmp_path, n_train=40)
    images, _ = data["train"]
    loader = MnistDataLoader(str(tmp_path), batch_size=8, shuffle=False, validation_split=10, num_workers=0,
                             download=False, transforms=[{"type": "RandomInvert", "args": {"p": 1.0}}])
    plain, inverted = normalised(images, (0.1307,), (0.3081,)), normalised(255 - images, (0.1307,), (0.3081,))
    train_idx = loader.sampler.indices
    valid_loader = loader.split_validation()
    valid_idx = valid_loader.sampler.indices
    x_train, _ = batches(loader)
    x_valid, _ = batches(valid_loader)
    assert torch.allclose(x_train, inverted[train_idx], atol=1e-5)  # augmented
    assert torch.allclose(x_valid, plain[valid_idx], atol=1e-5)  # not augmented
    # test.py's split goes through eval_transforms too
    test_loader = MnistDataLoader(str(tmp_path), batch_size=8, shuffle=False, training=False, download=False,
                                  transforms=[{"type": "RandomInvert", "args": {"p": 1.0}}],
                                  eval_transforms=[{"type": "RandomVerticalFlip", "args": {"p": 1.0}}])
    x_test, _ = batches(test_loader)
    assert torch.allclose(x_test, normalised(data["t10k"][0][:, ::-1].copy(), (0.1307,), (0.3081,)), atol=1e-5)


@pytest.mark.parametrize("cls", [MnistDataLoader, Cifar10DataLoader, ImageCsvDataLoader, ImageFolderDataLoader])
def test_every_catalogue_loader_passes_pin_memory_to_its_loaders(tmp_path, cls):
    write_mnist(tmp_path), write_cifar(tmp_path), write_image_folder(tmp_path / "folder", {"a": 6})
    write_image_csv(tmp_path / "images", tmp_path / "labels.csv", [0, 1] * 3)
    args = {MnistDataLoader: {"data_dir": str(tmp_path), "download": False},
            Cifar10DataLoader: {"data_dir": str(tmp_path), "download": False},
            ImageCsvDataLoader: {"annotations_file": str(tmp_path / "labels.csv"), "img_dir": str(tmp_path / "images")},
            ImageFolderDataLoader: {"data_dir": str(tmp_path / "folder")}}[cls]
    loader = cls(**args, batch_size=2, validation_split=2, pin_memory=True)
    assert loader.pin_memory and loader.split_validation().pin_memory


def test_mean_and_std_can_be_set(tmp_path):
    data = write_cifar(tmp_path)
    loader = Cifar10DataLoader(str(tmp_path), batch_size=4, shuffle=False, download=False, mean=[0.5], std=[0.5])
    assert torch.allclose(batches(loader)[0], normalised(data["train"][0], (0.5,) * 3, (0.5,) * 3), atol=1e-5)
    with pytest.raises(UserError, match=r"data_loader\.args\.mean: expected 1 or 3 numbers"):
        Cifar10DataLoader(str(tmp_path), batch_size=4, download=False, mean=[0.5, 0.5])
    with pytest.raises(UserError, match=r"data_loader\.args\.std: every value must be positive"):
        Cifar10DataLoader(str(tmp_path), batch_size=4, download=False, std=[0.0])


# ---- images listed in a CSV ----

@pytest.fixture
def image_csv(tmp_path):
    img_dir, csv_file = tmp_path / "images", tmp_path / "labels.csv"
    write_image_csv(img_dir, csv_file, ["dog", "cat", "emu"] * 4)
    return img_dir, csv_file


@pytest.mark.parametrize("header", [True, False])
def test_image_csv_maps_names_to_sorted_classes_with_or_without_a_header(tmp_path, header):
    img_dir, csv_file = tmp_path / "images", tmp_path / "labels.csv"
    names = write_image_csv(img_dir, csv_file, ["dog", "cat", "emu", "cat"], header=header)
    loader = ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=2, shuffle=False, validation_split=0)
    assert loader.classes == ["cat", "dog", "emu"] and len(loader.dataset) == 4
    x, y = batches(loader)
    assert y.tolist() == [1, 0, 2, 0] and x.shape == (4, 3, 12, 12)
    from PIL import Image
    pixels = torch.as_tensor(np.array(Image.open(img_dir / names[2]))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x[2], (pixels - mean) / std, atol=1e-5)


def test_image_csv_integer_labels_are_used_as_they_are(tmp_path):
    img_dir, csv_file = tmp_path / "images", tmp_path / "labels.csv"
    write_image_csv(img_dir, csv_file, [3, 0, 7], header=False)
    loader = ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=3, shuffle=False, validation_split=0,
                                mode="L")
    x, y = batches(loader)
    assert loader.classes is None and y.tolist() == [3, 0, 7] and x.shape == (3, 1, 12, 12)


@pytest.mark.parametrize("row, message", [
    ("img0.png", r"labels\.csv:3: expected 'file name,label', got 'img0\.png'; fix or remove the row"),
    ("img0.png,", r"labels\.csv:3: expected 'file name,label'"),
    ("missing.png,cat", r"labels\.csv:3: no image file .*images/missing\.png; fix data_loader\.args\.img_dir"),
])
def test_a_bad_csv_row_is_named_by_line(tmp_path, image_csv, row, message):
    img_dir, csv_file = image_csv
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join(lines[:2] + [row] + lines[2:]) + "\n")
    with pytest.raises(UserError, match=message):
        ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=2)


def test_missing_csv_and_image_dir_are_named(tmp_path, image_csv):
    img_dir, csv_file = image_csv
    with pytest.raises(UserError, match=r"data_loader\.args\.annotations_file: no file .*nope\.csv"):
        ImageCsvDataLoader(str(tmp_path / "nope.csv"), str(img_dir))
    with pytest.raises(UserError, match=r"data_loader\.args\.img_dir: no directory .*nowhere"):
        ImageCsvDataLoader(str(csv_file), str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"test_annotations_file is not set: test\.py evaluates on a test split"):
        ImageCsvDataLoader(str(csv_file), str(img_dir), training=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_unreadable_image_is_named_even_from_a_worker(image_csv, num_workers):
    img_dir, csv_file = image_csv
    loader = ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=4, shuffle=False, validation_split=0,
                                num_workers=num_workers)
    (img_dir / "img4.png").write_bytes(b"\x89PNG truncated")  # after the loader's check of every file at its start
    iterator = iter(loader)
    with pytest.raises(UserError) as info:
        batches(iterator)
    assert info.value.problems == [info.value.problems[0]] and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{img_dir / 'img4.png'}: cannot read the image")
    # Shut the workers down now: the error's frames hold the iterator in a reference cycle, and when the garbage
    # collector breaks it (in whichever later test) the iterator's queues can go first, so that its workers never
    # hear the stop and each join waits out its 5 s timeout. Cleared frames leave this name the last reference.
    traceback.clear_frames(info.tb)
    del iterator


def test_images_of_different_sizes_ask_for_a_resize(image_csv):
    img_dir, csv_file = image_csv
    write_image(img_dir / "img1.png", size=(20, 16))
    loader = ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=4, shuffle=False, validation_split=0)
    with pytest.raises(UserError, match=r"images of different sizes .* add \{\"type\": \"Resize\""):
        batches(loader)
    resized = ImageCsvDataLoader(str(csv_file), str(img_dir), batch_size=4, shuffle=False, validation_split=0,
                                 transforms=[{"type": "Resize", "args": {"size": [8, 8]}}])
    assert batches(resized)[0].shape == (12, 3, 8, 8)


def test_given_classes_map_test_labels_the_same_way(tmp_path, image_csv):
    img_dir, _ = image_csv
    test_csv = tmp_path / "test.csv"
    write_image_csv(img_dir, test_csv, ["emu", "emu"], first=50)  # a test set without cats or dogs
    loader = ImageCsvDataLoader("unused.csv", str(img_dir), training=False, test_annotations_file=str(test_csv),
                                classes=["cat", "dog", "emu"], shuffle=False, validation_split=0)
    assert batches(loader)[1].tolist() == [2, 2]
    with pytest.raises(UserError, match=r"test\.csv:2: label 'emu' is not one of the classes in data_loader\.args"):
        ImageCsvDataLoader("unused.csv", str(img_dir), training=False, test_annotations_file=str(test_csv),
                           classes=["cat", "dog"], validation_split=0)


# ---- ImageFolder ----

def test_image_folder_classes_are_the_sorted_folders_and_test_dir_keeps_them(tmp_path):
    write_image_folder(tmp_path / "train", {"zebra": 3, "ant": 2, "moth": 1})
    write_image_folder(tmp_path / "test", {"moth": 2})
    loader = ImageFolderDataLoader(str(tmp_path / "train"), batch_size=6, shuffle=False, validation_split=0)
    assert loader.classes == ["ant", "moth", "zebra"] and batches(loader)[1].tolist() == [0, 0, 1, 2, 2, 2]
    test = ImageFolderDataLoader("unused", training=False, test_dir=str(tmp_path / "test"), classes=loader.classes,
                                 shuffle=False, validation_split=0)
    assert batches(test)[1].tolist() == [1, 1]
    with pytest.raises(UserError, match=r"test_dir: folder .*test/moth is not one of the classes"):
        ImageFolderDataLoader("unused", training=False, test_dir=str(tmp_path / "test"), classes=["ant"])
    with pytest.raises(UserError, match=r"data_loader\.args\.test_dir is not set"):
        ImageFolderDataLoader(str(tmp_path / "train"), training=False)


def test_image_folder_errors_name_the_directory(tmp_path):
    with pytest.raises(UserError, match=r"data_loader\.args\.data_dir: no directory .*absent"):
        ImageFolderDataLoader(str(tmp_path / "absent"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match=r"data_loader\.args\.data_dir: .*expected .*empty/<class name>/<image file>"):
        ImageFolderDataLoader(str(tmp_path / "empty"))
    write_image_folder(tmp_path / "broken", {"a": 2})
    (tmp_path / "broken" / "a" / "1.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"data_loader\.args\.data_dir: 1 of the 2 image files cannot be read: "
                                        r"a/1\.png \(not an image\)"):  # found at the start (data_loader/file_check.py)
        ImageFolderDataLoader(str(tmp_path / "broken"), batch_size=2, validation_split=0)


def test_torchvision_loaders_have_their_datasets_class_names(tmp_path):
    write_mnist(tmp_path), write_cifar(tmp_path)
    mnist = MnistDataLoader(str(tmp_path), batch_size=4, download=False, training=False)
    assert mnist.classes[:2] == ["0 - zero", "1 - one"] and len(mnist.classes) == 10
    cifar = Cifar10DataLoader(str(tmp_path), batch_size=4, download=False)
    assert cifar.classes == [f"class{i}" for i in range(10)]  # read from the dataset's batches.meta
    from data_loader.data_loaders import DigitsDataLoader
    assert DigitsDataLoader().classes is None  # no names: per-class results stay lists


# ---- in-memory images kept as stored (uint8), converted a batch at a time where the model runs ----

@pytest.mark.parametrize("cls, write, stats", [(MnistDataLoader, write_mnist, ((0.1307,), (0.3081,))),
                                               (Cifar10DataLoader, write_cifar, None)])
def test_stored_images_give_the_float_paths_batches_bit_for_bit(tmp_path, cls, write, stats):
    from data_loader.datasets import StoredImages
    from data_loader.transforms import image_pipeline

    write(tmp_path, n_train=40)
    loader = cls(str(tmp_path), batch_size=16, shuffle=True, validation_split=8, download=False)
    stored = loader.dataset
    assert isinstance(stored, StoredImages) and stored.tensors[0].dtype == torch.uint8  # a quarter of float32
    float_path = image_pipeline(None, stored.mean, stored.std, "x")(stored.tensors[0])  # the old whole-tensor path
    assert float_path.dtype == torch.float32
    loader.set_epoch(3)
    order = loader.sampler.epoch_order()
    x, _ = batches(loader)
    assert torch.equal(x, float_path[order])
    assert torch.equal(stored[5][0], float_path[5])  # one sample, as a Dataset
    valid = loader.split_validation()
    assert torch.equal(torch.cat([b for b, _ in valid]), float_path[valid.sampler.epoch_order()])


def test_integer_arrays_are_kept_as_stored_and_converted_per_batch(tmp_path):
    from data_loader.arrays import ArrayDataLoader, StoredArrays

    rng = np.random.RandomState(0)
    np.savez(tmp_path / "a.npz", x=rng.randint(0, 256, (30, 1, 4, 4)).astype(np.uint8), y=np.arange(30) % 3)
    loader = ArrayDataLoader(str(tmp_path / "a.npz"), batch_size=8, shuffle=False, validation_split=0)
    assert isinstance(loader.dataset, StoredArrays) and loader.dataset.tensors[0].dtype == torch.uint8
    x, _ = batches(loader)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(np.load(tmp_path / "a.npz")["x"].astype(np.float32)))
    np.save(tmp_path / "f.npy", rng.rand(10, 3))  # float64: converted once to float32, as before
    floats = ArrayDataLoader(str(tmp_path / "f.npy"), batch_size=4, targets_key=None)
    assert floats.dataset.tensors[0].dtype == torch.float32
