"""Configs mutated the way typos and confusion mutate them: every outcome of train.py --dry-run is a valid build or
exit status 2 with 'error:' lines, never a traceback (hypothesis, in-process)."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import train
from conftest import ROOT
from parse_config import read_config
from utils.errors import run_cli

pytestmark = pytest.mark.slow

# Every shipped config but those whose loaders download (MNIST, CIFAR, ...): the test must stay offline and fast.
DOWNLOADS = {"mnist.json", "fashion_mnist.json", "kmnist.json", "cifar10.json", "cifar100.json"}
CONFIGS = [ROOT / "config.json"] + sorted(p for p in (ROOT / "configs").glob("*.json") if p.name not in DOWNLOADS)
VALUES = [None, 0, -1, 1, 2.5, -3.7, 10**12, 1e300, "", "x", "Adam", "relu", True, False, [], [1, "a"], {},
          {"type": "Nope"}, "min val_loss"]
MUTATION = st.tuples(st.sampled_from(["delete", "set", "rename", "swap", "add"]), st.integers(0, 10**6),
                     st.integers(0, 10**6), st.sampled_from(VALUES), st.sampled_from(["s", "_", "x", "Args", ""]))


def paths(node, prefix=()):
    """Every key path in a config, sections first."""
    found = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found += paths(value, prefix + (key,))
    return found


def at(config, path):
    for key in path[:-1]:
        config = config[key]
    return config


@contextlib.contextmanager
def _inside(directory: str):
    """Run in directory (the configs' relative data paths point there: nothing to find)."""
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def mutate(config: dict, mutations) -> dict:
    config = copy.deepcopy(config)
    for op, i, j, value, suffix in mutations:
        every = paths(config)
        if not every:
            break
        path, other = every[i % len(every)], every[j % len(every)]
        parent, key = at(config, path), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "set":
            parent[key] = copy.deepcopy(value)
        elif op == "rename" and isinstance(parent, dict):
            parent[f"{key}{suffix or 's'}"] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[f"{key}{suffix}x"] = copy.deepcopy(value)
        elif op == "swap" and not (path[:len(other)] == other or other[:len(path)] == path):
            other_parent = at(config, other)
            parent[key], other_parent[other[-1]] = other_parent[other[-1]], parent[key]
    return config


# Mistakes of meaning rather than of form (issue 26): a metric counting other classes than the model gives, the loss
# swapped for one that takes another kind of output, a test split's path that does not exist, another channel count.
MISTAKE = st.one_of(
    st.tuples(st.just("metric_classes"), st.sampled_from([1, 2, 3, 5, 10, 11, 1000])),
    st.tuples(st.just("loss"), st.sampled_from(["nll_loss", "cross_entropy", "NLLLoss", "CrossEntropyLoss",
                                                "focal_loss", "mse_loss"])),
    st.tuples(st.just("test_path"), st.sampled_from(["test_dir", "test_file", "test_annotations_file"])),
    st.tuples(st.just("channels"), st.sampled_from([1, 2, 3, 4])),
)


def make_mistake(config: dict, mistake: tuple) -> dict:
    config = copy.deepcopy(config)
    kind, value = mistake
    if kind == "metric_classes":
        config.setdefault("metrics", []).append({"type": "MulticlassAccuracy", "args": {"num_classes": value}})
    elif kind == "loss":
        config["loss"] = value
    elif kind == "test_path":
        config["data_loader"]["args"][value] = "no/such/test/split"
    else:  # the argument of the model's input channels, under the names models use
        args = config["arch"]["args"]
        key = next((k for k in ("input", "in_channels") if k in args), "in_channels" if "resnet" in
                   config["arch"]["type"].lower() else "input")
        args[key] = value
    return config


def check_dry_run(config: dict) -> None:
    """train.py --dry-run on config in a temporary directory: it builds (0) or prints error lines (2), no traceback,
    and writes nothing."""
    with tempfile.TemporaryDirectory() as tmp, _inside(tmp):
        if isinstance(config.get("trainer"), dict):
            config["trainer"]["save_dir"] = os.path.join(tmp, "saved")  # never the project's own saved/
        with open("config.json", "w") as f:
            json.dump(config, f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = run_cli(train.main, ["-c", "config.json", "--dry-run"])  # anything else propagates: a failure
        assert not os.path.exists("saved") and not os.path.exists(os.path.join(tmp, "saved"))
    lines = err.getvalue().strip().splitlines()
    assert status in (0, 2), (status, lines)
    assert status == 0 or any(line.startswith("error: ") for line in lines), lines
    assert "Traceback" not in err.getvalue()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(MUTATION, min_size=1, max_size=3))
def test_a_mutated_shipped_config_builds_or_is_error_lines_never_a_traceback(source, mutations):
    check_dry_run(mutate(read_config(source), mutations))


DIGITS = ROOT / "config.json"  # its data ships with scikit-learn: the mistakes reach the first batch


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(MISTAKE, min_size=1, max_size=2))
@example(DIGITS, [("metric_classes", 3)])
@example(DIGITS, [("loss", "cross_entropy"), ("metric_classes", 10)])
@example(ROOT / "configs" / "cnn_blocks.json", [("loss", "nll_loss")])
@example(ROOT / "configs" / "image_folder.json", [("test_path", "test_dir")])
@example(ROOT / "configs" / "resnet_digits.json", [("channels", 3)])
def test_a_shipped_config_with_a_mistake_of_meaning_builds_or_is_error_lines_never_a_traceback(source, mistakes):
    config = read_config(source)
    for mistake in mistakes:
        config = make_mistake(config, mistake)
    check_dry_run(config)
