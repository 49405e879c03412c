"""utils/manifest.py: run.json's facts (packages, environment variables, git state and its patch, data fingerprints),
how a start ended, and the file's starts."""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import signal
import subprocess

import pytest
import torch

import utils.manifest as manifest
from utils.errors import UserError
from utils.interrupt import StopTraining
from utils.manifest import (FAILED, FINISHED, RUNNING, STOPPED, TIME_LIMIT, RunManifest, ending, environment,
                            fingerprint_path, fingerprint_tensors, git_state, packages, read_manifest)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git checkout with one commit: a.txt and b.bin."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    (path / "a.txt").write_text("one\n")
    (path / "b.bin").write_bytes(b"\0\1\2")
    git(path, "add", ".")
    git(path, "commit", "-qm", "first")
    return path


# ---- packages and the environment

def test_packages_match_importlib_metadata():
    def normal(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    expected = {}
    for dist in importlib.metadata.distributions():  # the first on sys.path of a name wins, as for imports
        expected.setdefault(normal(dist.metadata["Name"]), dist.version)
    found = packages()
    assert found["torch"] == importlib.metadata.version("torch")
    assert found == expected


def test_packages_read_folder_names_the_first_of_a_name_winning(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in ("Foo_Bar-1.2.dist-info", "old_tool-0.3-py3.11.egg-info", "develop.egg-info"):
        (first / folder).mkdir(parents=True)
    (first / "develop.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: develop\nVersion: 4.5\n")
    (second / "foo_bar-9.9.dist-info").mkdir(parents=True)
    assert packages([str(first), str(second), str(tmp_path / "missing")]) == {
        "develop": "4.5", "foo-bar": "1.2", "old-tool": "0.3"}


def test_environment_records_allowed_variables_only(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    facts = environment()
    assert {"OMP_NUM_THREADS": "3", "SLURM_JOB_ID": "77"}.items() <= facts["variables"].items()
    assert "WANDB_API_KEY" not in json.dumps(facts) and "CUDA_VISIBLE_DEVICES" not in facts["variables"]
    assert facts["torch"] == torch.__version__ and facts["python"].count(".") == 2


# ---- git

@needs_git
def test_git_state_of_a_clean_checkout(repo):
    facts, patch = git_state(repo)
    assert facts == {"commit": git(repo, "rev-parse", "HEAD"), "branch": git(repo, "branch", "--show-current"),
                     "dirty": False}
    assert patch == b""


@needs_git
def test_git_patch_restores_a_dirty_tree_on_its_commit(repo, tmp_path):
    (repo / "a.txt").write_text("one\ntwo\n")
    (repo / "b.bin").write_bytes(b"\0\1\2\3")
    (repo / "new dir").mkdir()
    (repo / "new dir" / "model.py").write_text("x = 1")  # untracked, no final newline
    (repo / "empty.txt").write_text("")
    (repo / "data.npy").write_bytes(b"\x93NUMPY\0")  # untracked binary: named, not in the patch
    facts, patch = git_state(repo)
    assert facts["dirty"] and facts["commit"] == git(repo, "rev-parse", "HEAD")
    assert sorted(facts["untracked"]) == ["data.npy", "empty.txt", "new dir/model.py"]
    assert facts["untracked_not_in_patch"] == ["data.npy"]

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (tmp_path / "run.patch").write_bytes(patch)
    git(clone, "apply", str(tmp_path / "run.patch"))
    for name in ("a.txt", "b.bin", "new dir/model.py", "empty.txt"):
        assert (clone / name).read_bytes() == (repo / name).read_bytes(), name


@needs_git
def test_git_state_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    facts, patch = git_state(tmp_path)
    assert set(facts) == {"error"} and patch == b""  # git's own words: not a git repository
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert git_state(tmp_path) == ({"error": "git is not installed"}, b"")


# ---- data fingerprints

def test_a_folder_fingerprint_changes_with_a_file(tmp_path):
    for i in range(5):
        (tmp_path / "cat").mkdir(exist_ok=True)
        (tmp_path / "cat" / f"{i}.jpg").write_bytes(bytes([i]) * 100)
    first = fingerprint_path(tmp_path)
    assert first == fingerprint_path(tmp_path)
    assert (first["files"], first["bytes"], first["sampled"]) == (5, 500, False)
    (tmp_path / "cat" / "3.jpg").write_bytes(b"\7" * 100)  # same size, other content
    assert fingerprint_path(tmp_path)["sha256"] != first["sha256"]
    (tmp_path / "cat" / "3.jpg").rename(tmp_path / "cat" / "3b.jpg")
    assert fingerprint_path(tmp_path)["sha256"] != first["sha256"]


def test_large_folders_and_files_are_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "SAMPLED_FILES", 4)
    monkeypatch.setattr(manifest, "SIZED_FILES", 6)
    monkeypatch.setattr(manifest, "MAX_FILES", 8)
    for i in range(10):
        (tmp_path / f"{i:02d}.txt").write_text("x" * i)
    folder = fingerprint_path(tmp_path)
    assert folder["files"] is None and folder["bytes"] is None and folder["sampled"]  # cut at 8 names, 4 read

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 1024)  # 256 kB: its start, middle and end are read
    file = fingerprint_path(big)
    assert (file["files"], file["bytes"], file["sampled"]) == (1, 256 * 1024, True)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 1  # the middle chunk
    big.write_bytes(bytes(data))
    assert fingerprint_path(big)["sha256"] != file["sha256"]


def test_tensor_fingerprint_shapes_dtypes_and_sampling(monkeypatch):
    x, y = torch.arange(24, dtype=torch.float32).reshape(6, 4), torch.arange(6)
    first = fingerprint_tensors([x, y])
    assert first["tensors"] == [{"shape": [6, 4], "dtype": "float32"}, {"shape": [6], "dtype": "int64"}]
    assert fingerprint_tensors([x.clone(), y.clone()])["sha256"] == first["sha256"]
    assert fingerprint_tensors([x + 1, y])["sha256"] != first["sha256"]
    assert fingerprint_tensors([x.bfloat16(), y.bool()])["sha256"] != first["sha256"]  # any dtype hashes
    monkeypatch.setattr(manifest, "TENSOR_BYTES", 16)
    monkeypatch.setattr(manifest, "SAMPLED_ROWS", 2)
    assert fingerprint_tensors([x])["sampled"]


# ---- endings and the file

@pytest.mark.parametrize("error, expected", [
    (None, {"outcome": FINISHED, "exit_code": 0}),
    (StopTraining.by_signal(signal.SIGTERM), {"outcome": STOPPED, "exit_code": 143, "reason": "SIGTERM"}),
    (StopTraining(StopTraining.TIME_LIMIT, seconds=60), {"outcome": TIME_LIMIT, "exit_code": 0,
                                                         "reason": "trainer.max_time (60 s) reached"}),
    (KeyboardInterrupt(), {"outcome": STOPPED, "exit_code": 130, "reason": "SIGINT"}),
    (UserError("data_loader.args.data_dir: no such folder"),
     {"outcome": FAILED, "exit_code": 2, "reason": "UserError: data_loader.args.data_dir: no such folder"}),
    (ValueError("bad\nvalue"), {"outcome": FAILED, "exit_code": 1, "reason": "ValueError: bad"}),
], ids=["finished", "signal", "time-limit", "interrupt", "user-error", "bug"])
def test_ending_says_how_and_the_exit_status(error, expected):
    assert ending(error) == expected


def test_each_start_is_an_entry_and_other_writers_keys_stay(tmp_path):
    first = RunManifest(tmp_path, {"command": "python train.py -c c.json"}, patch=b"diff --git a/x b/x\n")
    first.start(0, 0)
    assert read_manifest(tmp_path)["status"] == RUNNING and (tmp_path / "run.patch").is_file()
    first.end(StopTraining.by_signal(signal.SIGINT), 1, 12)
    on_disk = json.loads((tmp_path / "run.json").read_text())
    on_disk["mlflow_run_id"] = "abc"  # another writer's key
    (tmp_path / "run.json").write_text(json.dumps(on_disk))

    second = RunManifest(tmp_path, {"command": "python train.py -r RUN"})
    second.start(1, 12)
    second.end(None, 2, 24)
    second.end(ValueError("later"), 2, 24)  # the first end stands
    written = read_manifest(tmp_path)
    assert written["mlflow_run_id"] == "abc"
    assert [(s["command"], s["from_epoch"], s["outcome"], s["exit_code"], s["epoch"]) for s in written["starts"]] == [
        ("python train.py -c c.json", 0, STOPPED, 130, 1), ("python train.py -r RUN", 1, FINISHED, 0, 2)]
    assert written["starts"][0]["git"]["patch"] == "run.patch" and "git" not in written["starts"][1]
    assert (written["status"], written["exit_code"], written["started"]) == (FINISHED, 0,
                                                                              written["starts"][0]["started"])


def test_a_second_dirty_start_keeps_the_first_patch(tmp_path):
    for n, patch in enumerate((b"first\n", b"second\n")):
        start = RunManifest(tmp_path, {}, patch)
        start.start(n, n)
        start.end(None, n + 1, n + 1)
    assert (tmp_path / "run.patch").read_bytes() == b"first\n" and (tmp_path / "run-2.patch").read_bytes() == b"second\n"
    assert read_manifest(tmp_path)["starts"][1]["git"]["patch"] == "run-2.patch"


def test_no_directory_or_a_removed_one_writes_nothing(tmp_path):
    silent = RunManifest(None, {"command": "x"}, b"patch")
    silent.start(0, 0)
    silent.end(None, 1, 1)
    assert silent.index is None
    removed = tmp_path / "run"
    removed.mkdir()
    started = RunManifest(removed, {})
    started.start(0, 0)
    shutil.rmtree(removed)  # a failed start's directory, removed
    started.end(ValueError("boom"), 0, 1)
    assert not removed.exists()


def test_an_unreadable_run_json_begins_a_new_one(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    assert read_manifest(tmp_path) is None
    RunManifest(tmp_path, {}).start(0, 0)
    assert len(read_manifest(tmp_path)["starts"]) == 1
