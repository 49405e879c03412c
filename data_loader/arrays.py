"""ArrayDataLoader: samples from .npy, .npz or .blosc2 files; save_blosc2/load_blosc2 write and read the last."""
from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import TensorDataset

from base.base_data_loader import BaseDataLoader, InferenceSource, InputBatch
from data_loader.datasets import IMAGE_SUFFIXES, test_source
from utils.errors import UserError

SUFFIXES = (".npy", ".npz", ".blosc2")
ONE_ARRAY = (".npy", ".blosc2")
# What numpy and blosc2 raise for a file they cannot decode (a missing npz key is checked before).
# What inference_source does to an array file's samples, for export.py's files (BaseDataLoader.preprocessing): none
# but the conversion to float32; each sample is one model input, as the model takes it.
ARRAY_INPUTS = {"input": "array", "dtype": "float32"}
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, RuntimeError, zipfile.BadZipFile)


def _blosc2(where: str = ""):
    """The blosc2 module; an optional dependency, so its absence is a UserError with the fix."""
    try:
        import blosc2
    except ImportError:
        raise UserError(f"{where}.blosc2 files need the blosc2 package, which is not installed: "
                        "pip install blosc2") from None
    return blosc2


def save_blosc2(path: str | Path, array: np.ndarray) -> None:
    """Write array to path as one compressed blosc2 frame (dtype and shape kept), atomically."""
    array = np.asarray(array)
    if array.dtype.hasobject:  # pack_array2 would store the objects' memory addresses
        raise ValueError(f"save_blosc2({str(path)!r}): dtype {array.dtype} holds Python objects; save a numeric array")
    data = _blosc2().pack_array2(array)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # same directory, so that os.replace is a rename
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_blosc2(path: str | Path) -> np.ndarray:
    """The array that save_blosc2 wrote to path."""
    blosc2 = _blosc2()
    data = Path(path).read_bytes()
    # Refuse object arrays before unpacking: their bytes would be taken as pointers (what allow_pickle=False guards).
    schunk = blosc2.schunk_from_cframe(data, False)
    if "__pack_tensor__" not in schunk.vlmeta:
        raise ValueError("not an array written by save_blosc2 (blosc2.pack_array2)")
    if np.lib.format.descr_to_dtype(schunk.vlmeta["__pack_tensor__"][2]).hasobject:
        raise ValueError("it holds Python objects (dtype object), which are not loaded; save a numeric array")
    return blosc2.unpack_array2(data)


class ArrayDataLoader(BaseDataLoader):
    """Samples (inputs, targets) held in array files, served from memory."""

    def __init__(
        self,
        data_file: str,
        batch_size: int = 64,
        shuffle: bool = True,
        validation_split: float | int = 0.1,  # noqa: PYI041  (a float is a fraction, an int a count)
        num_workers: int = 0,
        training: bool = True,
        targets_file: str | None = None,
        inputs_key: str = "x",
        targets_key: str | None = "y",
        test_file: str | None = None,
        test_targets_file: str | None = None,
        pin_memory: bool = False,
    ):
        """data_file: a .npy or .blosc2 file (one array: the inputs) or a .npz file (the arrays named
        inputs_key and targets_key). The targets come from targets_file (.npy/.blosc2) if given, else from
        the .npz; targets_key=None makes the inputs the targets (autoencoders). training=False (test.py)
        reads test_file and test_targets_file instead. Inputs become float32 (integer and boolean ones are kept as
        stored and converted a batch at a time, on the device); integer targets int64 (class indices), other
        targets float32."""
        if training:
            x_arg, y_arg, x_file, y_file = "data_file", "targets_file", data_file, targets_file
        else:
            x_file = test_source(test_file, "test_file", "a .npy/.npz/.blosc2 file of test samples")
            x_arg, y_arg, y_file = "test_file", "test_targets_file", test_targets_file
        npz_targets = y_file is None and targets_key is not None  # the targets are in the inputs' file
        one_array = Path(x_file).suffix.lower() in ONE_ARRAY
        names = {"inputs_key": inputs_key}
        if npz_targets and not one_array:
            names["targets_key"] = targets_key
        arrays = _read(x_file, x_arg, SUFFIXES, names)
        if npz_targets and one_array:
            raise UserError(
                f"data_loader.args.{x_arg}: {x_file} holds one array (the inputs); give the targets with "
                f"data_loader.args.{y_arg}, or set data_loader.args.targets_key=null to use the inputs as targets")
        if y_file is not None:
            arrays += _read(y_file, y_arg, ONE_ARRAY, {})
        inputs, targets = arrays if len(arrays) == 2 else arrays * 2
        if len(inputs) != len(targets):
            raise UserError(f"data_loader.args.{x_arg}: {x_file} has {len(inputs)} input samples but the targets "
                            f"have {len(targets)}; give as many targets as inputs (the first dimension)")
        targets = _tensor(targets, target=True)
        stored = inputs.dtype in STORED
        self.dataset = StoredArrays(_stored(inputs), targets) if stored else TensorDataset(_tensor(inputs), targets)
        super().__init__(self.dataset, batch_size, shuffle, validation_split, num_workers, pin_memory=pin_memory)

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        """A .npy/.npz/.blosc2 file read as this loader reads data_file (a .npz's array inputs_key, its targets_key
        array as the labels), its samples float32 as the loader serves them; other files are refused."""
        return arrays_only(cls, path, args.get("inputs_key") or "x", args.get("targets_key", "y"))

    @classmethod
    def preprocessing(cls, args: dict) -> dict:
        return dict(ARRAY_INPUTS)


# ---- arrays as new inputs (predict.py, export.py) ----

def arrays_only(loader_class: type, path: str, inputs_key: str = "x", targets_key: str | None = "y") -> InferenceSource:
    """array_source for a loader that takes arrays only; a folder or another kind of file is refused, saying what to
    give."""
    suffix = Path(path).suffix.lower()
    if os.path.isfile(path) and suffix in SUFFIXES:
        return array_source(path, inputs_key, targets_key)
    give = f"give a {'/'.join(SUFFIXES)} file of samples shaped and scaled as the loader serves them, or --input test"
    if os.path.isdir(path) or suffix in (".csv", *IMAGE_SUFFIXES):
        raise UserError(f"--input {path}: data_loader.type {loader_class.__name__} takes arrays, not image files: "
                        f"{give}")
    raise UserError(f"--input {path}: unknown kind of file {suffix or '(no suffix)'!r}; {give}")


def array_source(path: str, inputs_key: str = "x", targets_key: str | None = "y",
                 classes: list[str] | None = None) -> InferenceSource:
    """The samples of a .npy/.npz/.blosc2 file as model inputs (read_arrays), float32 a batch at a time; labels from
    its targets_key array when it holds one integer per sample."""
    samples, labels = read_arrays(path, inputs_key, targets_key)
    return InferenceSource("index", range(len(samples)), functools.partial(array_batches, samples), labels, classes)


_ARG = "__input__"  # _read names the config key data_loader.args.<arg>; its messages are rewritten to --input


def read_arrays(path: str, inputs_key: str = "x",
                targets_key: str | None = "y") -> tuple[np.ndarray, np.ndarray | None]:
    """(the samples, their labels or None) of a .npy/.npz/.blosc2 file, read as ArrayDataLoader reads its files:
    a .npz gives its only array, else the one named inputs_key; labels when it also holds targets_key with one
    integer per sample."""
    names: dict[str, str] = {}
    if Path(path).suffix.lower() == ".npz":
        _read_arrays(path, {})  # the checks on the file itself
        with np.load(path, allow_pickle=False) as npz:
            held = list(npz.files)
        key = held[0] if len(held) == 1 else inputs_key
        if key not in held:
            raise UserError(f"--input {path}: no array {inputs_key!r} among {held or 'none'}; save the inputs as "
                            f"{inputs_key!r} (np.savez(path, {inputs_key}=inputs)) or give a .npy file")
        names = {"inputs_key": key}
        if targets_key in held and targets_key != key:
            names["targets_key"] = targets_key
    arrays = _read_arrays(path, names)
    inputs = arrays[0]
    targets = arrays[1] if len(arrays) == 2 else None
    labelled = targets is not None and targets.ndim == 1 and targets.dtype.kind in "iu" and len(targets) == len(inputs)
    return inputs, targets if labelled else None


def _read_arrays(path: str, names: dict[str, str]) -> list[np.ndarray]:
    try:
        return _read(path, _ARG, SUFFIXES, names)
    except UserError as e:
        raise UserError([p.replace(f"data_loader.args.{_ARG}: ", "--input ") for p in e.problems]) from None


def array_batches(inputs: np.ndarray, batch_size: int, num_workers: int = 0) -> Iterator[InputBatch]:
    """The samples of an array in batches, float32 as ArrayDataLoader serves inputs (converted a batch at a time,
    in this process: slicing needs no workers)."""
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        yield InputBatch(list(range(start, start + len(chunk))), _tensor(chunk), [])


def _read(path: str, arg: str, suffixes: tuple[str, ...], names: dict[str, str]) -> list[np.ndarray]:
    """The arrays in path: the one array of a .npy/.blosc2 file, or those of a .npz file named by
    names ({key arg: array name}); a mistake raises UserError naming data_loader.args.<arg>."""
    where = f"data_loader.args.{arg}: {path}"
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"{where} has the suffix {suffix or '(none)'!r}; supported: {', '.join(suffixes)}")
    if not os.path.isfile(path):
        raise UserError(f"data_loader.args.{arg}: no file {path} "
                        f"(relative paths are from the working directory, {os.getcwd()})")
    if suffix == ".blosc2":
        _blosc2(f"{where}: ")
    try:
        if suffix != ".blosc2":  # np.load goes by the content, and takes what is not .npy/.npz for a pickle
            with open(path, "rb") as f:
                magic = f.read(6)
            kind = ".npy" if magic == b"\x93NUMPY" else ".npz" if magic.startswith(b"PK") else None
            if kind != suffix:
                raise ValueError(f"it is a {kind} file; rename it" if kind else
                                 "it is not a NumPy .npy/.npz file (corrupt, or another format)")
        loaded = load_blosc2(path) if suffix == ".blosc2" else np.load(path, allow_pickle=False)
        if suffix != ".npz":
            arrays = [loaded]
        else:
            with loaded as npz:
                for key, name in names.items():
                    if name not in npz.files:
                        held = ", ".join(map(repr, npz.files)) or "no arrays"
                        raise UserError(f"data_loader.args.{key}: no array {name!r} in {path}, which holds {held}; "
                                        f"set data_loader.args.{key} to one of them")
                arrays = [npz[name] for name in names.values()]
    except _READ_ERRORS as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if "allow_pickle" in reason:  # what numpy says of an object array in a .npy/.npz file
            reason = "it holds Python objects (dtype object), which are not loaded; save a numeric array"
        raise UserError(f"{where}: cannot read it: {reason}") from None
    for a in arrays:
        if a.ndim == 0:
            raise UserError(f"{where} holds a single value, not an array of samples (first dimension)")
        if a.dtype.kind not in "biuf":
            raise UserError(f"{where} holds {a.dtype} values; save numbers or booleans (e.g. x.astype(np.float32))")
    return arrays


STORED = tuple(np.dtype(t) for t in ("bool", "uint8", "int8", "int16", "int32", "int64"))  # kept as they are


class StoredArrays(TensorDataset):
    """Integer or boolean inputs held in their stored dtype (uint8 images: a quarter of float32's memory); a batch
    becomes float32 where it is used, after its copy to the device (prepare): the values float32 would hold."""

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.to(torch.float32)

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return self.prepare(x), y


def _stored(array: np.ndarray) -> torch.Tensor:
    """The array as it is stored (a native-byte-order copy where needed)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))


def _tensor(array: np.ndarray, target: bool = False) -> torch.Tensor:
    """float32, except integer targets: int64 class indices (a native-byte-order copy where needed)."""
    dtype = np.int64 if target and array.dtype.kind in "iu" else np.float32
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
