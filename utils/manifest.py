"""run.json, a run directory's manifest: for each start of the run (the first, then each resume) the command, the code
(git commit and a patch of uncommitted changes), the software (Python, torch, CUDA, GPUs, packages), allowed environment
variables, a fingerprint of the data, and how it ended. Gathering it costs about 10 ms: at most two git processes,
the installed packages read from their folders' names, and data hashed in bounded samples.

It imports nothing heavy (runs.py reads run directories without torch); torch is imported where a fact needs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from utils.errors import UserError, first_line
from utils.interrupt import StopTraining, Terminated
from utils.util import write_text_atomic

MANIFEST = "run.json"
FORMAT = 1
# How a start ended (a start without an end is running, or died without a word: kill -9, a power cut).
FINISHED, STOPPED, TIME_LIMIT, FAILED, RUNNING = "finished", "stopped", "time-limit", "failed", "running"
# Recorded when set: devices, threads, the process group and the scheduler's job. Never a credential.
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG",
            "CUDA_LAUNCH_BLOCKING", "PYTHONHASHSEED", "TORCH_DISTRIBUTED_DEBUG", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME",
            "NCCL_IB_DISABLE", "NCCL_P2P_DISABLE", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID",
            "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_NODELIST",
            "SLURM_NTASKS", "SLURM_PROCID", "PBS_JOBID", "LSB_JOBID")
GIT_TIMEOUT_S = 10
UNTRACKED_MAX_BYTES = 256 * 1024  # an untracked text file up to this size goes into the patch; larger ones are named
UNTRACKED_MAX_FILES = 100
CHUNK = 64 * 1024  # bytes hashed from a file's start, middle and end (the whole file when it has no more than 3)
SAMPLED_FILES = 64  # files of a folder whose content is hashed, evenly spaced in name order
SIZED_FILES = 20_000  # a folder with more files has only its sampled files' sizes read
MAX_FILES = 200_000  # names read from a folder: a larger one is fingerprinted by its first ones in name order
TENSOR_BYTES = 64 * 1024 * 1024  # a larger tensor is hashed by 4,096 rows evenly spaced
SAMPLED_ROWS = 4096


def now() -> str:
    """The local time with its offset, to the second: 2026-05-09T07:35:25+02:00."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ---- the facts of a start

def environment() -> dict:
    """Host, platform, Python, torch, CUDA/cuDNN and GPU names (the GPUs' names only where CUDA has started: asking
    would start it), and the set variables of ENV_VARS."""
    import torch

    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_initialized() else [])
    cuda = torch.cuda.is_available()
    return {"host": socket.gethostname(), "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
            "gpus": gpus, "gpu_count": torch.cuda.device_count() if cuda else 0,
            "variables": {name: os.environ[name] for name in ENV_VARS if name in os.environ}}


def packages(paths: Sequence[str] | None = None) -> dict[str, str]:
    """Installed distributions and their versions, {normalized name: version}, as importlib.metadata would find them
    on sys.path (the first of a name wins), read from the names of their .dist-info/.egg-info folders: reading each
    one's metadata, as importlib.metadata.distributions() does, takes 100 ms for 200 packages."""
    found: dict[str, str] = {}
    for entry in sys.path if paths is None else paths:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a folder (a zip), or gone
            continue
        for folder in names:
            stem, dot, kind = folder.rpartition(".")
            if not dot or kind not in ("dist-info", "egg-info"):
                continue
            name, _, version = stem.partition("-")
            version = version.split("-py")[0] or _version_in(Path(entry or ".") / folder)
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), version)
    return dict(sorted(found.items()))


def _version_in(folder: Path) -> str:
    """The Version line of a metadata folder whose name does not hold it (an egg-info of a develop install)."""
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(folder / name, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return "?"


def git_state(root: Path) -> tuple[dict, bytes]:
    """(facts, patch) of the git checkout holding root: facts {"commit", "branch", "dirty", "untracked"} (or {"error"}
    when git is missing or root is not in a checkout), patch the uncommitted changes as `git diff HEAD --binary` gives
    them followed by the untracked text files as new files (empty when clean): `git apply` on the commit restores the
    tree. Two git processes at most (status, then diff when something changed); optional locks off, so that the index
    is not rewritten under a git command the user runs meanwhile."""
    status = _git(root, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all")
    if isinstance(status, str):
        return {"error": status}, b""
    commit, branch, changed, untracked = None, None, False, []
    for entry in status.split(b"\0"):
        text = entry.decode("utf-8", "surrogateescape")
        if text.startswith("# branch.oid ") and text[13:] != "(initial)":
            commit = text[13:]
        elif text.startswith("# branch.head ") and text[14:] != "(detached)":
            branch = text[14:]
        elif text.startswith("? "):
            untracked.append(text[2:])
        elif text[:2] in ("1 ", "2 ", "u "):
            changed = True
    patch = b""
    if changed and commit is not None:
        diff = _git(root, "diff", "HEAD", "--binary")
        patch = diff if isinstance(diff, bytes) else b""
    included, skipped = _untracked_patch(_top_level(root), untracked) if untracked else (b"", [])
    facts = {"commit": commit, "branch": branch, "dirty": bool(changed or untracked)}
    if untracked:
        facts["untracked"] = untracked[:UNTRACKED_MAX_FILES]
        if skipped:
            facts["untracked_not_in_patch"] = skipped[:UNTRACKED_MAX_FILES]
    return facts, patch + included


def git_commit(root: Path) -> str | None:
    """The commit the checkout holding root is at; None outside a git checkout (or without git)."""
    head = _git(root, "rev-parse", "HEAD")
    return head.decode().strip() if isinstance(head, bytes) else None


def _git(root: Path, *args: str) -> bytes | str:
    """git's output, or why there is none (a string)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT_S,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except FileNotFoundError:
        return "git is not installed"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"git did not answer: {e}"
    if done.returncode != 0:
        return first_line(RuntimeError(done.stderr.decode(errors="replace"))) or f"git {args[0]} failed"
    return done.stdout


def _top_level(root: Path) -> Path:
    """The checkout's top folder, which git's paths are relative to: root or the nearest parent holding .git."""
    for folder in (root, *root.parents):
        if (folder / ".git").exists():
            return folder
    return root


def _untracked_patch(top: Path, paths: Iterable[str]) -> tuple[bytes, list[str]]:
    """(the untracked text files as a patch that creates them, the untracked files left out: binary or large)."""
    parts, skipped, total = [], [], 0
    for path in paths:
        try:
            data = (top / path).read_bytes() if (top / path).stat().st_size <= UNTRACKED_MAX_BYTES else None
        except OSError:
            data = None
        if data is None or b"\0" in data or total + len(data) > 4 * UNTRACKED_MAX_BYTES:
            skipped.append(path)
            continue
        total += len(data)
        pieces = data.split(b"\n")
        lines = pieces[:-1] if pieces[-1] == b"" else pieces  # the last piece is b"" after a final newline
        body = b"".join(b"+" + line + b"\n" for line in lines)
        if pieces[-1] != b"":
            body += b"\\ No newline at end of file\n"
        hunk = f"@@ -0,0 +1,{len(lines)} @@\n" if lines else ""
        name = path.encode("utf-8", "surrogateescape")
        parts.append(b"diff --git a/%s b/%s\nnew file mode 100644\n--- /dev/null\n+++ b/%s\n%s%s"
                     % (name, name, name, hunk.encode(), body))
    return b"".join(parts), skipped


# ---- the data's fingerprint

def fingerprint_path(path: str | Path) -> dict:
    """A file's or folder's fingerprint: file count, bytes (None when a folder has more than SIZED_FILES files) and a
    sha256 of every file name (up to MAX_FILES) with the size and content of a sample (all files up to SAMPLED_FILES;
    each file's start, middle and end CHUNK) -- a changed, added or removed file changes it, unless it is a file of a
    large folder outside the sample whose name and size stayed."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        size = path.stat().st_size
        _hash_file(digest, path, size)
        return {"path": str(path), "files": 1, "bytes": size, "sha256": digest.hexdigest(), "sampled": size > 3 * CHUNK}
    names, complete = _names(path)
    for name in names:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    step = max(1, len(names) / SAMPLED_FILES)
    sample = sorted({int(i * step) for i in range(min(len(names), SAMPLED_FILES))})
    sizes = {i: (path / names[i]).stat().st_size for i in (range(len(names)) if len(names) <= SIZED_FILES else sample)}
    for i in sample:
        digest.update(f"{names[i]}\0{sizes[i]}\0".encode("utf-8", "surrogateescape"))
        _hash_file(digest, path / names[i], sizes[i])
    every_size = complete and len(sizes) == len(names)
    return {"path": str(path), "files": len(names) if complete else None,
            "bytes": sum(sizes.values()) if every_size else None, "sha256": digest.hexdigest(),
            "sampled": len(sample) < len(names) or any(size > 3 * CHUNK for size in sizes.values())}


def _names(folder: Path) -> tuple[list[str], bool]:
    """The files under folder, relative and in name order (links to folders not followed), and whether that is all
    of them: a folder is read in a fixed order until MAX_FILES."""
    names, stack = [], [""]
    while stack:
        relative = stack.pop()
        try:
            with os.scandir(folder / relative) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            name = f"{relative}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(name + "/")
            elif entry.is_file():
                names.append(name)
                if len(names) >= MAX_FILES:
                    return sorted(names), False
        stack.extend(reversed(subfolders))
    return sorted(names), True


def _hash_file(digest: Any, path: Path, size: int) -> None:
    try:
        with open(path, "rb") as f:
            if size <= 3 * CHUNK:
                digest.update(f.read())
                return
            for offset in (0, (size - CHUNK) // 2, size - CHUNK):
                f.seek(offset)
                digest.update(f.read(CHUNK))
    except OSError as e:
        digest.update(f"unreadable: {e.strerror}".encode())


def fingerprint_tensors(tensors: Sequence[Any]) -> dict:
    """In-memory data's fingerprint: each tensor's shape and dtype, and a sha256 of their bytes (of SAMPLED_ROWS rows
    evenly spaced along the first dimension for a tensor over TENSOR_BYTES)."""
    import torch

    digest, described, sampled = hashlib.sha256(), [], False
    for tensor in tensors:
        tensor = tensor.detach()
        shape, dtype = list(tensor.shape), str(tensor.dtype).removeprefix("torch.")
        described.append({"shape": shape, "dtype": dtype})
        digest.update(f"{shape}{dtype}".encode())
        rows = tensor.reshape(tensor.shape[0] if tensor.dim() else 1, -1)
        if tensor.numel() * tensor.element_size() > TENSOR_BYTES and len(rows) > SAMPLED_ROWS:
            rows, sampled = rows[torch.linspace(0, len(rows) - 1, SAMPLED_ROWS).long()], True
        digest.update(rows.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {"tensors": described, "sha256": digest.hexdigest(), "sampled": sampled}


# ---- how a start ended

def ending(error: BaseException | None) -> dict:
    """{"outcome", "exit_code"} (and "reason", the signal or the error) of a training that ended with error (None: it
    finished, every epoch or an early stop). exit_code is the command's status as the command line gives it."""
    if error is None:
        return {"outcome": FINISHED, "exit_code": 0}
    if isinstance(error, StopTraining) and error.reason == StopTraining.SIGNAL:
        return {"outcome": STOPPED, "exit_code": error.exit_code, "reason": signal.Signals(error.signum).name}
    if isinstance(error, StopTraining) and error.reason == StopTraining.TIME_LIMIT:
        return {"outcome": TIME_LIMIT, "exit_code": 0, "reason": str(error)}
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        signum = error.signum if isinstance(error, Terminated) else signal.SIGINT
        return {"outcome": STOPPED, "exit_code": 128 + signum, "reason": signal.Signals(signum).name}
    return {"outcome": FAILED, "exit_code": 2 if isinstance(error, UserError) else 1,
            "reason": f"{type(error).__name__}: {first_line(error)}"}


# ---- the file

class RunManifest:
    """run.json in a run directory, one entry per start: start() adds this process's (written at once, with its patch
    beside it), end() says how it ended. Each write reads the file first and changes only this start's entry and the
    summary, so keys another writer added stay. Without a directory (a rank other than 0, a run that writes no files)
    it writes nothing."""

    def __init__(self, directory: Path | None = None, facts: Mapping | None = None, patch: bytes = b""):
        """facts: the start's command, code, environment and data (its entry's first keys); patch: the uncommitted
        changes, written beside run.json when not empty."""
        self.directory = Path(directory) if directory is not None else None
        self.entry = dict(facts or {})
        self.patch = patch
        self.index: int | None = None  # this start's place in "starts", once written
        self._clock = time.monotonic()

    @property
    def path(self) -> Path | None:
        return self.directory / MANIFEST if self.directory is not None else None

    def start(self, epoch: int, step: int) -> None:
        """Training starts after epoch (0: from scratch) and global step `step`."""
        if self.directory is None or self.index is not None:
            return
        manifest = read_manifest(self.directory) or {}
        starts = manifest.setdefault("starts", [])
        self.index = len(starts)
        if self.patch:
            name = "run.patch" if self.index == 0 else f"run-{self.index + 1}.patch"
            write_text_atomic(self.directory / name, self.patch)
            self.entry["git"] = {**self.entry.get("git", {}), "patch": name,
                                 "patch_sha256": hashlib.sha256(self.patch).hexdigest()}
        self.entry.update(started=now(), from_epoch=epoch, from_step=step, outcome=RUNNING)
        self._clock = time.monotonic()
        starts.append(self.entry)
        self._write(manifest)

    def end(self, error: BaseException | None, epoch: int, step: int) -> None:
        """Training ended, after epoch and global step `step`; error: why, None when it finished."""
        if self.index is None or "ended" in self.entry or not self.directory.is_dir():  # removed: a failed start
            return
        self.entry.update(ended=now(), duration_s=round(time.monotonic() - self._clock, 3), epoch=epoch, step=step,
                          **ending(error))
        manifest = read_manifest(self.directory) or {}
        starts = manifest.setdefault("starts", [])
        if self.index < len(starts):
            starts[self.index] = self.entry
        else:  # the file went missing meanwhile
            self.index = len(starts)
            starts.append(self.entry)
        self._write(manifest)

    def _write(self, manifest: dict) -> None:
        starts = manifest["starts"]
        last = starts[-1]
        manifest.update(format=FORMAT, status=last.get("outcome", RUNNING), exit_code=last.get("exit_code"),
                        started=starts[0].get("started"), ended=last.get("ended"),
                        duration_s=round(sum(s.get("duration_s", 0) for s in starts), 3))
        ordered = {key: manifest.pop(key) for key in ("format", "status", "exit_code", "started", "ended",
                                                       "duration_s")}
        write_text_atomic(self.path, json.dumps({**ordered, **manifest}, indent=2) + "\n")


def read_manifest(directory: Path) -> dict | None:
    """A run directory's run.json; None without one, or when it is not a JSON object (then a new one is begun)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("starts", []), list) else None
