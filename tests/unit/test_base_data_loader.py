"""Tests for base/base_data_loader.py and data_loader/data_loaders.py."""

import pytest
import torch
from torch.utils.data import TensorDataset

from base.base_data_loader import BaseDataLoader, EpochSampler
from data_loader.data_loaders import DigitsDataLoader, MnistDataLoader
from utils.errors import UserError

from fake_data import write_mnist


def _values(loader):
    """Everything a loader over _numbered(n) yields, as one flat list of sample numbers."""
    return [int(v) for x, _ in loader for v in x]


def _numbered(n):
    """A dataset whose sample i is the number i (and label i % 10)."""
    return TensorDataset(torch.arange(n), torch.arange(n) % 10)


def _rows(x):
    return {tuple(row) for row in x.reshape(len(x), -1).tolist()}


# ---- digits ----

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


# ---- EpochSampler and BaseDataLoader ----

def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    indices = list(range(10, 60))
    a, b = EpochSampler(indices, shuffle=True, seed=5), EpochSampler(indices, shuffle=True, seed=5)
    list(a)  # iterating does not advance the order
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) == list(a)
    epoch3 = list(a)
    a.set_epoch(4)
    assert list(a) != epoch3
    assert sorted(list(a)) == sorted(epoch3) == indices
    assert list(EpochSampler(indices, shuffle=True, seed=6)) != list(EpochSampler(indices, shuffle=True, seed=5))
    assert list(EpochSampler(indices, shuffle=False, seed=5)) == indices


def test_epoch_sampler_accepts_the_largest_unseeded_initial_seed():
    sampler = EpochSampler(range(5), shuffle=True, seed=2**64 - 1)
    sampler.set_epoch(2)
    assert sorted(sampler) == list(range(5))


def test_training_order_is_reproducible_per_epoch_and_covers_each_index_once():
    torch.manual_seed(7)
    loader = BaseDataLoader(_numbered(100), batch_size=8, shuffle=True, validation_split=0.2, num_workers=0)
    torch.manual_seed(7)
    again = BaseDataLoader(_numbered(100), batch_size=8, shuffle=True, validation_split=0.2, num_workers=0)
    valid = _values(loader.split_validation())
    orders = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        orders.append(_values(loader))
        assert sorted(orders[-1]) == sorted(set(orders[-1]))  # each index once
        assert len(orders[-1]) == loader.n_samples == 80
        assert not set(orders[-1]) & set(valid)
        assert sorted(orders[-1] + valid) == list(range(100))
    assert orders[0] != orders[1]
    again.set_epoch(2)  # a resumed run that starts at epoch 2 sees the same order
    assert _values(again) == orders[1]


def test_validation_order_is_fixed_and_independent_of_the_seed():
    torch.manual_seed(1)
    loader = BaseDataLoader(_numbered(50), batch_size=4, shuffle=True, validation_split=10, num_workers=0)
    first = _values(loader.split_validation())
    loader.set_epoch(5)
    assert _values(loader.split_validation()) == first == sorted(first)
    torch.manual_seed(2)
    other = BaseDataLoader(_numbered(50), batch_size=4, shuffle=True, validation_split=10, num_workers=0)
    assert _values(other.split_validation()) == first and len(first) == 10


def test_shuffle_false_is_sequential_and_no_split_uses_all_indices():
    loader = BaseDataLoader(_numbered(30), batch_size=7, shuffle=False, validation_split=0.0, num_workers=0)
    loader.set_epoch(3)
    assert _values(loader) == list(range(30))
    assert loader.split_validation() is None and loader.n_samples == 30
    shuffled = BaseDataLoader(_numbered(30), batch_size=7, shuffle=True, validation_split=0, num_workers=0)
    assert isinstance(shuffled.sampler, EpochSampler)
    assert sorted(_values(shuffled)) == list(range(30)) and _values(shuffled) != list(range(30))


@pytest.mark.parametrize(
    "split, match",
    [
        (20, r"validation_split: 20 leaves no training sample: the dataset has 20 samples"),
        (25, r"validation_split: 25 .*20 samples"),
        (1.0, r"validation_split: 1.0 is a fraction >= 1; the dataset has 20 samples"),
        (-0.1, r"validation_split: -0.1 is negative.*20 samples"),
        (-3, r"validation_split: -3 is negative"),
        (0.01, r"validation_split: 0.01 gives no validation sample"),
        ("0.1", r"data_loader\.args\.validation_split: '0\.1' is neither a fraction nor a count.*20 samples"),
        (None, r"validation_split: None is neither"),
        (True, r"validation_split: True is neither"),
    ],
)
def test_bad_validation_split_raises_user_error(split, match):
    with pytest.raises(UserError, match=match) as info:
        BaseDataLoader(_numbered(20), batch_size=4, shuffle=True, validation_split=split, num_workers=0)
    assert "\n" not in str(info.value) and "use a fraction in [0, 1) or a sample count below 20" in str(info.value)


def test_user_subclass_in_the_original_templates_style():
    class MyDataLoader(BaseDataLoader):
        """Written as for victoresque/pytorch-template."""

        def __init__(self, data_dir, batch_size, shuffle=True, validation_split=0.0, num_workers=1, training=True):
            self.data_dir = data_dir
            self.dataset = _numbered(40 if training else 10)
            super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers)

    loader = MyDataLoader("data/", 5, shuffle=True, validation_split=0.25, num_workers=1)
    valid_loader = loader.split_validation()
    assert loader.n_samples == 30 and len(loader) == 6
    train, valid = _values(loader), _values(valid_loader)
    assert len(valid) == 10 and valid_loader.batch_size == 5 and valid_loader.num_workers == 1
    assert sorted(train + valid) == list(range(40))
    assert MyDataLoader("data/", 5, training=False).split_validation() is None


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


def test_digits_image_target_for_autoencoders():
    loader = DigitsDataLoader(batch_size=8, target="image", validation_split=0.0)
    data, target = next(iter(loader))
    assert torch.equal(data, target) and data.shape == (8, 1, 8, 8)
    with pytest.raises(UserError, match="target must be 'label' or 'image'"):
        DigitsDataLoader(target="pixels")
