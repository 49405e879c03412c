"""Tests for base/base_data_loader.py: EpochSampler and BaseDataLoader (the split, the order of each epoch,
sharding across ranks, in-memory batching, the workers' seeds)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from base.base_data_loader import BaseDataLoader, EpochDataLoader, EpochSampler
from utils.errors import UserError


def _values(loader):
    """Everything a loader over _numbered(n) yields, as one flat list of sample numbers."""
    return [int(v) for x, _ in loader for v in x]


def _numbered(n):
    """A dataset whose sample i is the number i (and label i % 10)."""
    return TensorDataset(torch.arange(n), torch.arange(n) % 10)


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


# ---- sharding across ranks ----

def test_every_sample_is_seen_once_per_epoch_across_ranks():
    for n, world, batch in ((103, 2, 8), (96, 3, 4), (17, 2, 8)):
        loaders = [BaseDataLoader(TensorDataset(torch.arange(n)), batch, True, 0, 0, seed=1) for _ in range(world)]
        for rank, loader in enumerate(loaders):
            loader.shard(rank, world)
            loader.set_epoch(3)
        parts = [torch.cat([b[0] for b in loader]) for loader in loaders]
        assert len({len(list(loader)) for loader in loaders}) == 1  # the same number of steps on every rank
        seen = torch.cat(parts)
        assert len(seen) == len(set(seen.tolist())) >= n - (world - 1)  # no sample twice; < world dropped


# ---- in-memory batching ----

class PerSample(Dataset):
    """The same tensors behind per-sample __getitem__ (the standard DataLoader path), counting calls."""

    def __init__(self, *tensors):
        self.tensors, self.calls = tensors, 0

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        self.calls += 1
        return tuple(t[i] for t in self.tensors)


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [[t.clone() for t in batch] for batch in loader]


@pytest.mark.parametrize("shuffle", [True, False])
def test_in_memory_slicing_gives_exactly_the_standard_loaders_batches(shuffle):
    x, y = torch.randn(103, 3, 4, 4), torch.randint(0, 5, (103,))
    fast = BaseDataLoader(TensorDataset(x, y), 16, shuffle, 0.2, 0, seed=3)
    per_sample = PerSample(x, y)
    slow = BaseDataLoader(per_sample, 16, shuffle, 0.2, 0, seed=3)
    assert fast.in_memory and not slow.in_memory
    for epoch in (1, 2):
        a, b = batches(fast, epoch), batches(slow, epoch)
        assert len(a) == len(b) == len(fast) == 6
        assert all(torch.equal(p, q) for pa, pb in zip(a, b) for p, q in zip(pa, pb))
    fast.sampler.set_epoch(2), slow.sampler.set_epoch(2)
    fast.sampler.skip(32), slow.sampler.skip(32)
    assert all(torch.equal(p, q) for pa, pb in zip(fast, slow) for p, q in zip(pa, pb))
    va, vb = fast.split_validation(), slow.split_validation()
    assert all(torch.equal(p, q) for pa, pb in zip(va, vb) for p, q in zip(pa, pb))


def test_in_memory_batches_never_call_getitem():
    x, y = torch.randn(50, 2), torch.zeros(50)
    dataset = TensorDataset(x, y)
    dataset.__class__ = type("Counting", (TensorDataset,), {"__getitem__": lambda self, i: 1 / 0})
    loader = BaseDataLoader(dataset, 8, True, 0.1, 0)
    assert sum(len(b[0]) for b in loader) == loader.n_samples


# ---- a sample's random draws: a function of (seed, epoch, index) ----

class RandomDataset(torch.utils.data.Dataset):
    """Sample i: i, a fixed image of it through random crop, flip and erasing (torchvision v2), and a draw each from
    torch, random and numpy."""

    def __init__(self, n: int = 24):
        from data_loader.transforms import image_pipeline

        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 10, 10), dtype=torch.uint8, generator=generator)
        self.transform = image_pipeline([{"type": "RandomCrop", "args": {"size": 6}}, "RandomHorizontalFlip",
                                         {"type": "RandomErasing", "args": {"p": 0.5}}], [0.5], [0.2], "transforms")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return index, self.transform(self.images[index]), torch.rand(()), random.random(), float(np.random.rand())


def by_index(loader, epoch: int, skip: int = 0) -> dict[int, tuple]:
    """{index: what the loader served for it} over one pass of epoch, after skipping `skip` samples."""
    loader.set_epoch(epoch)
    loader.sampler.skip(skip)
    return {int(i): (image, float(t), float(r), float(n)) for batch in loader for i, image, t, r, n in zip(*batch)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[i][0], b[i][0]) and a[i][1:] == b[i][1:] for i in a)


def test_a_samples_random_draws_depend_only_on_seed_epoch_and_index():
    """Workers or none, persistent or not, from an epoch's start or after a skip (a mid-epoch resume), on a rank of
    two: each sample gets the same augmented image and the same draws."""
    def loader(workers=0, seed=7, **kwargs):
        return BaseDataLoader(RandomDataset(), 4, True, 0, workers, seed=seed, **kwargs)

    plain = loader()
    reference = {epoch: by_index(plain, epoch) for epoch in (1, 2)}
    assert len(reference[1]) == 24
    for workers, persistent in ((2, False), (2, True)):
        served = loader(workers, persistent_workers=persistent)
        assert same(by_index(served, 1), reference[1])
        assert same(by_index(served, 2, skip=8), {i: v for i, v in reference[2].items()
                                                   if i in list(served.sampler.epoch_order().tolist())[8:]})
    resumed = loader()
    assert same(by_index(resumed, 2, skip=12), {i: v for i, v in reference[2].items() if i in by_index(resumed, 2, 12)})
    rank = loader(2)
    rank.shard(1, 2)  # under torchrun a sample gets what it gets in one process
    half = by_index(rank, 1)
    assert len(half) == 12 and same(half, {i: reference[1][i] for i in half})
    assert not any(torch.equal(reference[1][i][0], reference[2][i][0]) and reference[1][i][1] == reference[2][i][1]
                   for i in reference[1])  # epochs differ
    other_seed = by_index(loader(seed=8), 1)
    assert not any(other_seed[i][1:] == reference[1][i][1:] for i in other_seed)  # seeds differ
    assert len({v[1] for v in reference[1].values()}) == 24  # samples differ


def test_loading_in_this_process_leaves_the_global_random_states_as_they_were():
    """num_workers 0: the model's random numbers (dropout) do not depend on what the samples drew."""
    loader = BaseDataLoader(RandomDataset(), 4, True, 0, 0, seed=7)
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    by_index(loader, 1)
    after = torch.rand(()), random.random(), np.random.rand()
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    assert after == (torch.rand(()), random.random(), np.random.rand())


def test_an_epoch_data_loader_without_batches_keys_each_sample_alike():
    """batch_size None (no collation, a sampler of its own): each sample gets what it gets in batches."""
    sampler = EpochSampler(range(6), shuffle=True, seed=7)
    single = EpochDataLoader(RandomDataset(6), seed=7, batch_size=None, sampler=sampler)
    single.set_epoch(1)
    served = {int(s[0]): s[2].item() for s in single}
    assert served == {i: v[1] for i, v in by_index(BaseDataLoader(RandomDataset(6), 2, True, 0, 0, seed=7), 1).items()}
