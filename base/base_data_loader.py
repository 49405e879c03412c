"""BaseDataLoader: a DataLoader with a fixed train/validation split and a reproducible epoch order."""
from __future__ import annotations

import hashlib
import numbers
import os
import random
import signal
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset, get_worker_info
from torch.utils.data.dataloader import default_collate

from utils.errors import UserError
from utils.interrupt import SignalStop, signal_when_parent_dies


class EpochSampler(Sampler[int]):
    """Yields indices in an order that depends only on (seed, epoch), like DistributedSampler."""

    def __init__(self, indices: Sequence[int], shuffle: bool, seed: int = 0):
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.rank, self.world_size, self.batch_size = 0, 1, 1

    def shard(self, rank: int, world_size: int, batch_size: int) -> None:
        """Serve only this rank's part of each global batch of world_size * batch_size samples."""
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the order of the next iteration (and start it from the beginning)."""
        self.epoch = epoch
        self.start = 0

    def skip(self, n: int) -> None:
        """Start the next iteration (only) after the first n indices of the epoch's order: a mid-epoch resume."""
        self.start = n

    def epoch_order(self) -> torch.Tensor:
        """The indices of the next iteration, as a tensor (after any skip, which it uses up)."""
        order = self.indices
        if self.shuffle:
            # An unseeded torch.initial_seed() can be close to 2**64, the largest seed a Generator takes.
            generator = torch.Generator().manual_seed((self.seed + self.epoch) % 2**64)
            order = order[torch.randperm(len(order), generator=generator)]
        if self.world_size > 1:
            order = self._rank_part(order)
        start, self.start = self.start, 0
        return order[start:]

    def _rank_part(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of every global batch: all ranks take the same number of steps and no sample
        is repeated; fewer than world_size samples left at the end of an epoch are dropped."""
        size = self.batch_size * self.world_size
        keep = len(order) if len(order) % size >= self.world_size else len(order) // size * size
        return torch.cat([c.tensor_split(self.world_size)[self.rank] for c in order[:keep].split(size)]
                         or [order[:0]])

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order().tolist())

    def __len__(self) -> int:
        if self.world_size > 1:
            return len(self._rank_part(self.indices)) - self.start
        return len(self.indices) - self.start


class WorkerStart:
    """What a loader's worker process does first (then the user's worker_init_fn): the stop signals (SIGINT, SIGTERM,
    SIGUSR1) are the main process's to handle, which finishes its step and saves with its workers still serving; but
    a signal sent to the whole job reaches the workers too: Ctrl-C in a terminal, torchrun stopping its ranks' process
    groups, a scheduler signalling every process of a job. Left to themselves, SIGTERM and SIGUSR1 would kill a
    worker, and the main process would fail without saving. So a worker ignores SIGINT and SIGUSR1, and takes a
    SIGTERM only from its main process (which ends its workers so, at its exit among others): on Linux a thread waits
    for it and reads who sent it; elsewhere SIGTERM keeps torch's handling. A worker whose main process died is killed
    at once on Linux (PR_SET_PDEATHSIG: else torch's watchdog notices within seconds, while the worker still holds
    the dead process's connections, which under torchrun keeps the other ranks waiting for a peer that is gone)."""

    def __init__(self, user_init: Callable[[int], None] | None):
        self.user_init = user_init
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        for signum in SignalStop.SIGNALS:
            if signum != signal.SIGTERM:
                signal.signal(signum, signal.SIG_IGN)
        if hasattr(signal, "sigwaitinfo"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # kept for the thread below
            threading.Thread(target=_exit_on_sigterm_from, args=(self.parent,), daemon=True).start()
        signal_when_parent_dies(signal.SIGKILL, self.parent)
        if self.user_init is not None:
            self.user_init(worker_id)


def _exit_on_sigterm_from(parent: int) -> None:
    """In a worker: exit on a SIGTERM that its main process sent (as torch's worker does); ignore any other."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class EpochDataLoader(DataLoader):
    """A DataLoader whose order depends only on (seed, epoch), and whose samples' random draws (augmentation) only on
    (seed, epoch, index): call set_epoch each epoch.

    A sample's transforms draw from torch, random and numpy seeded from (seed, epoch, its index) alone (sample_seed),
    in a worker or in this process, whichever worker serves it, and whether the epoch started at its beginning or
    after a skip (a mid-epoch resume); the rank does not enter, so under torchrun a sample is augmented as in one
    process. In this process (num_workers 0) the global random states are put back after each batch's samples, so the
    model's random numbers (dropout) do not depend on the data. The loader has its own generator, so iterating never
    draws from the global torch RNG either; it seeds the workers (DataLoader gives worker w a base seed drawn from it,
    plus w), which only code outside a sample's loading (a collate_fn) sees.

    Per-sample loading goes through a DataLoader over KeyedSamples(dataset) whose batches are (epoch, index) keys; this
    object keeps the user's dataset, sampler and settings as DataLoader's attributes.
    """

    def __init__(self, dataset: Dataset, *, seed: int, **kwargs: Any):
        super().__init__(dataset, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.rank = 0
        self.device = torch.device("cpu")  # where in-memory batches are prepared (set_device)
        self.set_epoch(0)
        # Tensors in memory are served a batch at a time by index slicing, not per sample + collate.
        self.in_memory = (isinstance(dataset, TensorDataset) and isinstance(self.sampler, EpochSampler)
                          and self.collate_fn is default_collate)
        self._keyed: DataLoader | None = None  # the loader that serves the samples, kept while its workers persist

    def set_device(self, device: torch.device) -> None:
        """The device the model runs on: in-memory images kept as stored (uint8) are copied there, then converted
        and normalised there, a batch at a time."""
        self.device = torch.device(device)

    def __iter__(self) -> Iterator:
        return self._slices() if self.in_memory else iter(self._keyed_loader())

    def _keyed_loader(self) -> DataLoader:
        """A DataLoader with this one's settings over KeyedSamples(dataset), its batches this epoch's keys (made anew
        each pass, unless its workers persist)."""
        if self._keyed is not None:
            return self._keyed
        order = ({"batch_sampler": KeyedBatches(self)} if self.batch_sampler is not None
                 else {"sampler": KeyedBatches(self), "batch_size": None})
        loader = DataLoader(KeyedSamples(self.dataset, self.seed), **order, num_workers=self.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory, timeout=self.timeout,
                            worker_init_fn=WorkerStart(self.worker_init_fn),
                            multiprocessing_context=self.multiprocessing_context,
                            generator=self.generator, prefetch_factor=self.prefetch_factor,
                            persistent_workers=self.persistent_workers, pin_memory_device=self.pin_memory_device,
                            **({"in_order": self.in_order} if hasattr(self, "in_order") else {}))  # torch >= 2.6
        if self.persistent_workers:
            self._keyed = loader
        return loader

    def close(self) -> None:
        """End the persistent workers now (a later pass starts new ones): at the end of training, rather than at a
        garbage collection, which waits seconds for each."""
        self._keyed = None

    def _slices(self) -> Iterator[list[torch.Tensor]]:
        """Batches gathered from the dataset's tensors, in the sampler's order (what collate would give); nothing
        random is drawn."""
        order = self.sampler.epoch_order()
        pin = self.pin_memory and torch.cuda.is_available()
        prepare = getattr(self.dataset, "prepare", None)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                return
            batch = [t[index] for t in self.dataset.tensors]
            if pin:
                batch = [b.pin_memory() for b in batch]
            if prepare is not None:  # stored images: copied as they are, converted on the device
                batch[0] = prepare(batch[0].to(self.device, non_blocking=True))
            yield batch

    def shard(self, rank: int, world_size: int) -> None:
        """Serve this rank's share of every global batch (DistributedDataParallel)."""
        self.sampler.shard(rank, world_size, self.batch_size)
        self.rank = rank
        self.set_epoch(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the order, the samples' random draws and the workers' seeds of epoch."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.generator.manual_seed(worker_base_seed(self.seed, self.rank, epoch))


class KeyedBatches(Sampler[list]):
    """A loader's batches of indices (its sampler's indices, when it has no batch_sampler) as (epoch, index) keys, the
    epoch read as each pass starts (persistent workers are handed the keys of every epoch). It holds the loader weakly:
    the loader holds it (through its persistent workers' DataLoader), and a cycle would keep the workers alive until
    a garbage collection."""

    def __init__(self, loader: EpochDataLoader):
        self.loader = weakref.ref(loader)

    def __iter__(self) -> Iterator:
        loader = self.loader()
        epoch, batches = loader.epoch, loader.batch_sampler
        if batches is None:
            return ((epoch, index) for index in loader.sampler)
        return ([(epoch, index) for index in batch] for batch in batches)

    def __len__(self) -> int:
        loader = self.loader()
        return len(loader.batch_sampler if loader.batch_sampler is not None else loader.sampler)


class KeyedSamples(Dataset):
    """dataset's samples by (epoch, index) key: each sample is loaded with torch's CPU generator, random and numpy
    seeded from sample_seed(seed, epoch, index). In the main process (no workers) their states are saved before a
    batch's samples and put back after them."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        saved = _host_rng_state() if get_worker_info() is None else None
        try:
            samples = []
            for epoch, index in keys:
                seed_sample(sample_seed(self.seed, epoch, index))
                samples.append(self.dataset[index])
            return samples
        finally:
            if saved is not None:
                _set_host_rng_state(saved)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of a sample's random draws: (seed, epoch, index) hashed to 64 bits (blake2b: about 1 us, a tenth of
    numpy's SeedSequence, with as good a spread)."""
    key = struct.pack("<3Q", seed % 2**64, epoch % 2**64, index % 2**64)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def seed_sample(seed: int) -> None:
    """Seed torch's CPU generator, random and numpy (about 9 us in all)."""
    torch.default_generator.manual_seed(seed)  # torch.manual_seed would also queue every device's: ~150 us
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _host_rng_state() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_host_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])


def worker_base_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of the generator that gives an epoch's workers their seeds: (seed, rank, epoch) mixed, so
    that no two ranks or epochs share workers' random streams."""
    return int(np.random.SeedSequence([seed % 2**64, rank, epoch]).generate_state(1, np.uint64)[0])


class BaseDataLoader(EpochDataLoader):
    """A training DataLoader that holds back a fixed validation part (see split_validation)."""

    classes: list[str] | None = None  # the class names by index, where the data has them (per-class reports)

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        validation_split: float | int,
        num_workers: int,
        collate_fn: Callable = default_collate,
        pin_memory: bool = False,
        seed: int | None = None,
        persistent_workers: bool = False,
        eval_dataset: Dataset | None = None,
    ):
        """eval_dataset: the same samples as dataset with the evaluation transforms (no augmentation), for
        the validation part; by default dataset itself."""
        self.validation_split = validation_split
        self.shuffle = shuffle
        n = len(dataset)
        len_valid = _validation_size(validation_split, n)
        # The split is fixed (seed 0) so that it does not move when the training seed changes.
        permutation = np.random.RandomState(0).permutation(n)
        train_idx, valid_idx = np.sort(permutation[len_valid:]), np.sort(permutation[:len_valid])
        self.n_samples = len(train_idx)
        self.valid_sampler = EpochSampler(valid_idx, shuffle=False) if len_valid else None
        self.init_kwargs = {
            "dataset": dataset,
            "batch_size": batch_size,
            "collate_fn": collate_fn,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.eval_dataset = dataset if eval_dataset is None else eval_dataset
        if len(self.eval_dataset) != n:
            raise ValueError(f"eval_dataset has {len(self.eval_dataset)} samples, dataset {n}: they must be the same")
        seed = torch.initial_seed() if seed is None else seed
        super().__init__(sampler=EpochSampler(train_idx, shuffle, seed), seed=seed, **self.init_kwargs)

    def first_batches(self, n: int) -> tuple[DataLoader, DataLoader]:
        """(training, validation) loaders over the same first n training batches, in a fixed order: for
        trainer.overfit_batches. Validation takes eval_dataset's samples (no augmentation)."""
        indices = self.sampler.indices[:n * self.batch_size]
        return tuple(EpochDataLoader(sampler=EpochSampler(indices, shuffle=False, seed=self.seed), seed=self.seed,
                                     **{**self.init_kwargs, "dataset": dataset})
                     for dataset in (self.dataset, self.eval_dataset))

    def split_validation(self) -> DataLoader | None:
        """A DataLoader over the validation part in a fixed order (eval_dataset's samples), or None."""
        if self.valid_sampler is None:
            return None
        loader = EpochDataLoader(sampler=self.valid_sampler, seed=self.seed,
                                 **{**self.init_kwargs, "dataset": self.eval_dataset})
        loader.set_device(self.device)
        return loader

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        """New inputs at path (a file or folder the user gives predict.py or export.py as --input) as model inputs,
        made the way this loader makes its test samples, for a run whose data_loader.args are args (the checkpoint's
        config: only the keys written there). It builds no loader and reads no training or test data: a serving
        machine has only the checkpoint and the new files. data_loader/inputs.py has the helpers that make it a few
        lines (image_files_source: a folder of images, a CSV list of files, labels, unreadable files skipped;
        array_source: .npy/.npz/.blosc2 samples); this default says what to do instead."""
        raise UserError(no_inference_source(cls, path))

    @classmethod
    def preprocessing(cls, args: dict) -> dict | None:
        """What inference_source does to a file to make a model input, as JSON values (for images: mode, resize,
        center_crop, scale, mean, std, ...; docs/export.md#what-an-exported-file-carries), for a run whose
        data_loader.args are args. export.py writes it into the exported files, so that a serving script prepares
        inputs without this project. None (this default): the loader does not say; ValueError: the run's settings
        make steps a description cannot hold (the message says which)."""
        return None


def no_inference_source(loader_class: type, path: str) -> str:
    """What a data loader without its own inference_source says when given --input path."""
    name = loader_class.__name__
    return (f"--input {path}: data_loader.type {name} does not say how to turn files into model inputs; give --input "
            f"test (its test split), or write {name}.inference_source (see docs/predictions.md)")


class InputBatch(NamedTuple):
    """indices: the batch's inputs (their positions in the source); inputs: their model inputs stacked, None when
    none could be read; skipped: (index, reason) of those that could not be read."""

    indices: list[int]
    inputs: Any
    skipped: list[tuple[int, str]]


@dataclass(frozen=True)
class InferenceSource:
    """New inputs as a data loader turns them into model inputs: what BaseDataLoader.inference_source returns."""

    key: str  # "file" or "index": the column of predict.py's rows that names each input
    names: Sequence  # names[i]: the i-th input, as that column writes it
    batches: Callable[[int, int], Iterable[InputBatch]]  # (batch size, worker processes) -> every input once, in order
    labels: Sequence[int] | None = None  # each input's class index, when the files say (a CSV's label column, ...)
    classes: Sequence[str] | None = None  # the run's class names by index, when it has them

    def __len__(self) -> int:
        return len(self.names)


def _validation_size(split: Any, n: int) -> int:
    """The number of validation samples that split asks for out of n; a bad value raises UserError."""
    where = f"data_loader.args.validation_split: {split!r}"
    fix = f"use a fraction in [0, 1) or a sample count below {n}, e.g. 0.1 (0 for no validation)"
    if isinstance(split, bool) or not isinstance(split, numbers.Real):
        raise UserError(f"{where} is neither a fraction nor a count; the dataset has {n} samples; {fix}")
    if split < 0:
        raise UserError(f"{where} is negative; the dataset has {n} samples; {fix}")
    if isinstance(split, numbers.Integral):
        len_valid = int(split)
    elif split < 1:
        len_valid = int(n * split)
    else:
        raise UserError(f"{where} is a fraction >= 1; the dataset has {n} samples; {fix}")
    if len_valid >= n:
        raise UserError(f"{where} leaves no training sample: the dataset has {n} samples; {fix}")
    if split and not len_valid:
        raise UserError(f"{where} gives no validation sample: the dataset has {n} samples; {fix}")
    return len_valid
