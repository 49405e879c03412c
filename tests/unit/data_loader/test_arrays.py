"""Tests for data_loader/arrays.py: ArrayDataLoader over .npy/.npz/.blosc2 files, and save_blosc2/load_blosc2."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from data_loader.arrays import ArrayDataLoader, load_blosc2, save_blosc2
from utils.errors import UserError


def _data(n=20, features=3, seed=0):
    """Inputs whose first feature is the sample number (to follow samples through the loader), and labels."""
    x = np.random.RandomState(seed).randn(n, features)
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % 4


def _loader(**kwargs):
    return ArrayDataLoader(**{"batch_size": 8, "shuffle": False, "validation_split": 0.0, **kwargs})


def _sample_numbers(loader):
    return [int(v) for x, _ in loader for v in x[:, 0]]


# ---- the supported layouts ----

def test_npy_inputs_with_a_targets_file(tmp_path):
    x, y = _data()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.int32))
    loader = _loader(data_file=str(tmp_path / "x.npy"), targets_file=str(tmp_path / "y.npy"))
    inputs, targets = loader.dataset.tensors
    assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
    assert torch.allclose(inputs, torch.as_tensor(x, dtype=torch.float32)) and targets.tolist() == y.tolist()
    batch_x, batch_y = next(iter(loader))
    assert batch_x.shape == (8, 3) and batch_y.tolist() == y[:8].tolist()
    assert loader.n_samples == 20


@pytest.mark.parametrize("keys", [{}, {"inputs_key": "features", "targets_key": "labels"}])
def test_npz_with_default_and_custom_keys(tmp_path, keys):
    x, y = _data()
    names = (keys.get("inputs_key", "x"), keys.get("targets_key", "y"))
    np.savez(tmp_path / "d.npz", **{names[0]: x, names[1]: y, "other": np.zeros(3)})
    inputs, targets = _loader(data_file=str(tmp_path / "d.npz"), **keys).dataset.tensors
    assert torch.allclose(inputs, torch.as_tensor(x, dtype=torch.float32))
    assert targets.dtype == torch.int64 and targets.tolist() == y.tolist()


def test_npz_inputs_with_a_targets_file_ignore_targets_key(tmp_path):
    x, y = _data()
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(20))
    np.save(tmp_path / "t.npy", y)
    targets = _loader(data_file=str(tmp_path / "d.npz"), targets_file=str(tmp_path / "t.npy")).dataset.tensors[1]
    assert targets.tolist() == y.tolist()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_targets_key_null_makes_the_inputs_the_targets(tmp_path, suffix):
    x, _ = _data()
    path = tmp_path / f"x{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, x=x)
    inputs, targets = _loader(data_file=str(path), targets_key=None).dataset.tensors
    assert targets.dtype == torch.float32 and torch.equal(inputs, targets)
    assert torch.allclose(inputs, torch.as_tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("inputs, targets, target_dtype", [
    (np.arange(12, dtype=np.uint8).reshape(4, 3), np.array([0.5, 1.5, 2.5, 3.5]), torch.float32),
    (np.array([[True, False], [False, True]] * 2), np.array([True, False, True, True]), torch.float32),
    (np.arange(8, dtype=">i4").reshape(4, 2), np.arange(4, dtype=">i8"), torch.int64),  # big-endian
    (np.ones((4, 2), dtype=np.float16), np.arange(4, dtype=np.uint8), torch.int64),
])
def test_dtypes_inputs_float32_and_integer_targets_int64(tmp_path, inputs, targets, target_dtype):
    np.savez(tmp_path / "d.npz", x=inputs, y=targets)
    loader = _loader(data_file=str(tmp_path / "d.npz"))
    y = loader.dataset.tensors[1]
    x = torch.stack([loader.dataset[i][0] for i in range(len(loader.dataset))])  # integers: converted when served
    assert x.dtype == torch.float32 and y.dtype == target_dtype
    assert x.tolist() == inputs.astype(np.float64).tolist() and y.tolist() == targets.astype(np.float64).tolist()


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    np.random.RandomState(0).rand(5, 7).astype(np.float16),
    np.array([True, False, True]),
    np.arange(6, dtype=">f8").reshape(3, 2),
    np.zeros((0, 4), dtype=np.uint8),
])
def test_blosc2_round_trip_keeps_dtype_shape_and_values(tmp_path, array):
    path = tmp_path / "a.blosc2"
    save_blosc2(path, np.ones(3))
    save_blosc2(str(path), array)  # replaces the earlier content
    back = load_blosc2(path)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert [p.name for p in tmp_path.iterdir()] == ["a.blosc2"]  # no temporary file left


def test_blosc2_inputs_and_targets_load(tmp_path):
    x, y = _data()
    save_blosc2(tmp_path / "x.blosc2", x.astype(np.float32))
    save_blosc2(tmp_path / "y.blosc2", y)
    inputs, targets = _loader(data_file=str(tmp_path / "x.blosc2"),
                              targets_file=str(tmp_path / "y.blosc2")).dataset.tensors
    assert inputs.dtype == torch.float32 and torch.equal(inputs, torch.as_tensor(x, dtype=torch.float32))
    assert targets.dtype == torch.int64 and targets.tolist() == y.tolist()


def test_save_blosc2_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="holds Python objects"):
        save_blosc2(tmp_path / "o.blosc2", np.array([1, "a"], dtype=object))
    assert not list(tmp_path.iterdir())


def test_training_false_reads_the_test_files(tmp_path):
    x, y = _data(n=20)
    np.save(tmp_path / "test_x.npy", x[:7])
    np.save(tmp_path / "test_y.npy", y[:7])
    loader = _loader(data_file=str(tmp_path / "absent.npy"), training=False,  # data_file is not read
                     test_file=str(tmp_path / "test_x.npy"), test_targets_file=str(tmp_path / "test_y.npy"))
    assert loader.n_samples == 7 and loader.split_validation() is None
    assert _sample_numbers(loader) == list(range(7))
    assert loader.dataset.tensors[1].tolist() == y[:7].tolist()


@pytest.mark.parametrize("split, n_valid", [(0.25, 10), (7, 7)])
def test_validation_split_gives_disjoint_parts_that_cover_every_sample(tmp_path, split, n_valid):
    x, y = _data(n=40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    loader = ArrayDataLoader(str(tmp_path / "d.npz"), batch_size=6, shuffle=True, validation_split=split)
    train, valid = _sample_numbers(loader), _sample_numbers(loader.split_validation())
    assert len(valid) == n_valid and len(train) == loader.n_samples == 40 - n_valid
    assert not set(train) & set(valid)
    assert sorted(train + valid) == list(range(40))


# ---- mistakes: one line naming the key or the path, and the fix ----

def _renamed(save, path, suffix):
    """Save under the suffix save adds, then rename to path: a file whose content is not what its suffix says."""
    save(path.with_suffix(suffix), np.zeros(2))
    path.with_suffix(suffix).rename(path)


def _truncated(save, path):
    """A file cut in the middle of writing."""
    save(path, np.zeros((100, 3)))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


_GARBAGE = b"not an array at all" * 10
# How each file of the error cases is written (absent: not written).
_WRITE = {
    "inputs.npy": lambda p: np.save(p, np.zeros((3, 2))),
    "inputs.blosc2": lambda p: save_blosc2(p, np.zeros((3, 2))),
    "mismatch.npz": lambda p: np.savez(p, x=np.zeros((5, 2)), y=np.arange(4)),
    "garbage.npy": lambda p: p.write_bytes(_GARBAGE),
    "garbage.npz": lambda p: p.write_bytes(_GARBAGE),
    "garbage.blosc2": lambda p: p.write_bytes(_GARBAGE),
    "truncated.npy": lambda p: _truncated(np.save, p),
    "truncated.npz": lambda p: _truncated(lambda q, a: np.savez(q, x=a, y=np.arange(100)), p),
    "objects.npy": lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
    "objects.npz": lambda p: np.savez(p, x=np.array([1, "a"], dtype=object), y=np.arange(2)),
    "strings.npz": lambda p: np.savez(p, x=np.array(["a", "b"]), y=np.arange(2)),
    "scalar.npz": lambda p: np.savez(p, x=np.array(3.0), y=np.array(1)),
    "archive.npy": lambda p: _renamed(lambda q, a: np.savez(q, x=a), p, ".npz"),
    "array.npz": lambda p: _renamed(np.save, p, ".npy"),
}


@pytest.mark.parametrize("name, kwargs, match", [
    ("d.csv", {}, r"data_loader\.args\.data_file: .*d\.csv has the suffix '\.csv'; supported: \.npy, \.npz, \.blosc2"),
    ("mismatch.npz", {"targets_file": "t.npz"},
     r"data_loader\.args\.targets_file: .*t\.npz has the suffix '\.npz'; supported: \.npy, \.blosc2"),
    ("missing.npz", {}, (r"data_loader\.args\.data_file: no file .*missing\.npz \(relative paths are from the "
                         r"working directory")),
    ("mismatch.npz", {"targets_file": "absent.npy"}, r"data_loader\.args\.targets_file: no file .*absent\.npy"),
    ("inputs.npy", {}, (r"data_loader\.args\.data_file: .*inputs\.npy holds one array \(the inputs\); give the "
                        r"targets with data_loader\.args\.targets_file, or set data_loader\.args\.targets_key=null "
                        r"to use the inputs as targets")),
    ("inputs.blosc2", {}, r"data_loader\.args\.data_file: .*inputs\.blosc2 holds one array"),
    ("mismatch.npz", {"inputs_key": "images"},
     (r"data_loader\.args\.inputs_key: no array 'images' in .*mismatch\.npz, which holds 'x', 'y'; "
      r"set data_loader\.args\.inputs_key to one of them")),
    ("mismatch.npz", {"targets_key": "labels"},
     r"data_loader\.args\.targets_key: no array 'labels' in .*mismatch\.npz, which holds 'x', 'y'"),
    ("mismatch.npz", {}, (r"data_loader\.args\.data_file: .*mismatch\.npz has 5 input samples but the targets "
                          r"have 4; give as many targets as inputs")),
    ("garbage.npy", {"targets_key": None}, (r"data_loader\.args\.data_file: .*garbage\.npy: cannot read it: "
                                            r"it is not a NumPy \.npy/\.npz file \(corrupt, or another format\)$")),
    ("garbage.npz", {}, r"data_loader\.args\.data_file: .*garbage\.npz: cannot read it: it is not a NumPy"),
    ("garbage.blosc2", {"targets_key": None}, r"data_loader\.args\.data_file: .*garbage\.blosc2: cannot read it: \w"),
    ("truncated.npy", {"targets_key": None}, r"truncated\.npy: cannot read it: Failed to read all data for array"),
    ("truncated.npz", {}, r"truncated\.npz: cannot read it: File is not a zip file"),
    ("missing.npy", {}, r"data_loader\.args\.data_file: no file .*missing\.npy"),  # before "holds one array"
    ("objects.npy", {"targets_key": None}, r"objects\.npy: cannot read it: it holds Python objects \(dtype object\)"),
    ("objects.npz", {}, r"objects\.npz: cannot read it: it holds Python objects \(dtype object\)"),
    ("strings.npz", {}, r"data_loader\.args\.data_file: .*strings\.npz holds <U1 values; save numbers or booleans"),
    ("scalar.npz", {}, r"scalar\.npz holds a single value, not an array of samples"),
    ("archive.npy", {"targets_key": None}, r"archive\.npy: cannot read it: it is a \.npz file; rename it$"),
    ("array.npz", {}, r"array\.npz: cannot read it: it is a \.npy file; rename it$"),
])
def test_mistakes_raise_one_line_user_errors(tmp_path, name, kwargs, match):
    path = tmp_path / name
    if name in _WRITE:
        _WRITE[name](path)
    kwargs = {k: str(tmp_path / v) if k.endswith("_file") else v for k, v in kwargs.items()}
    with pytest.raises(UserError, match=match) as info:
        _loader(data_file=str(path), **kwargs)
    assert "\n" not in str(info.value)


def test_targets_file_mismatch_names_both_lengths(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((6, 2)))
    np.save(tmp_path / "y.npy", np.zeros(9))
    with pytest.raises(UserError, match=r"has 6 input samples but the targets have 9"):
        _loader(data_file=str(tmp_path / "x.npy"), targets_file=str(tmp_path / "y.npy"))


def test_training_false_without_a_test_file_says_how_to_set_it(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.arange(4))
    with pytest.raises(UserError, match=r"^data_loader\.args\.test_file is not set: test\.py evaluates on a test "
                                        r"split; set it to a \.npy/\.npz/\.blosc2 file of test samples$"):
        _loader(data_file=str(tmp_path / "d.npz"), training=False)


def test_a_missing_test_targets_file_names_its_key(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((4, 2)))
    with pytest.raises(UserError, match=r"data_loader\.args\.test_file: .*t\.npy holds one array \(the inputs\); "
                                        r"give the targets with data_loader\.args\.test_targets_file"):
        _loader(data_file="unused.npz", training=False, test_file=str(tmp_path / "t.npy"))


def test_blosc2_file_without_blosc2_installed_says_pip_install(tmp_path, monkeypatch):
    save_blosc2(tmp_path / "x.blosc2", np.zeros((4, 2)))
    monkeypatch.setitem(sys.modules, "blosc2", None)  # import blosc2 now raises ImportError
    with pytest.raises(UserError, match=r"data_loader\.args\.data_file: .*x\.blosc2: \.blosc2 files need the "
                                        r"blosc2 package, which is not installed: pip install blosc2$"):
        _loader(data_file=str(tmp_path / "x.blosc2"), targets_key=None)
    with pytest.raises(UserError, match="pip install blosc2"):
        load_blosc2(tmp_path / "x.blosc2")
    with pytest.raises(UserError, match="pip install blosc2"):
        save_blosc2(tmp_path / "y.blosc2", np.zeros(3))
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))  # .npy and .npz files do not need blosc2
    assert _loader(data_file=str(tmp_path / "x.npy"), targets_key=None).n_samples == 4
