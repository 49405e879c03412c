"""Sharded checkpoints (trainer.strategy fsdp2): one folder per saved state, written by every rank together through
torch.distributed.checkpoint (DCP), so that no rank ever holds the whole model or optimizer state.

    checkpoint-epoch3/                 (or checkpoint-step40/, model_best/)
        .metadata, __<rank>_0.distcp   DCP: the model's and the optimizer's shards, by parameter name
        train_state.pth                the main rank's plain values: config, epoch and step, monitor, scheduler,
                                       scaler, the epoch's partial sums; what a .pth checkpoint holds but the shards
        rank-<r>.pth                   each rank's random states and where its data stood
        consolidated.pth               written once by the first test.py, predict.py, export.py or --init-from:
                                       the whole weights in a regular checkpoint (torch.load weights_only reads it)

A folder is written under a temporary name (.checkpoint-epoch3.tmp) and renamed by the main rank once every rank's
files are in it, so a folder that exists is complete. Resuming at the same world size gives each rank its own files
back (bit-exact); at another one DCP reshards the model and optimizer, and the random states and the position in
the epoch are derived anew (said in the log). Writing and reading go over a gloo group of their own, which the
background writer may use while training runs collectives on the default one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from utils.checkpoint_format import FORMAT, FORMAT_VERSION, MODEL, OPTIMIZER, RNG, atomic_save, read_torch_file, unwrap
from utils.distributed import gloo_group
from utils.errors import UserError
from utils.util import seed_everything

PLAIN = "train_state.pth"
CONSOLIDATED = "consolidated.pth"
SHARDED = "sharded"  # the plain file's record of the shards: {"world_size": ranks that wrote them, "parts": [names]}
SOURCE = "sharded_folder"  # put into a checkpoint read from a folder (not saved): the folder, for the ranks to load
CONSOLIDATED_FROM = "consolidated_from"  # a consolidated.pth's: the folder whose weights it holds
SHARDED_PARTS = (MODEL, OPTIMIZER)
RANK_BUFFERS = "rank_buffers"  # each rank's own buffers (a norm layer's running statistics differ between ranks)
RANK_LOCAL = (RNG, RANK_BUFFERS)  # the parts each rank keeps in its rank file
_log = logging.getLogger("trainer")


def rank_file(rank: int) -> str:
    return f"rank-{rank}.pth"


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether path is a sharded checkpoint folder."""
    return path.is_dir() and (path / PLAIN).is_file() and (path / ".metadata").is_file()


def checkpoint_group() -> Any:
    """The gloo group sharded checkpoints are written and read over (utils/distributed.py gloo_group; None in a
    process without a process group: DCP then reads and writes alone)."""
    return gloo_group("checkpoints")


class ShardedWeights:
    """A model's weights as a checkpoint part of a sharded run: DTensor shards by parameter name (torch's
    get_model_state_dict), loaded back through set_model_state_dict; a plain model's whole tensors alike."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(unwrap(self.model))

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(unwrap(self.model), state)


class RankBuffers:
    """The model's buffers on this rank, as a checkpoint part of a sharded run, kept in the rank's own file: FSDP2
    does not sync buffers (DDP broadcasts rank 0's), so a norm layer's running statistics differ between ranks, and
    DCP keeps one copy of them."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return {name: buffer for name, buffer in unwrap(self.model).named_buffers()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, buffer in unwrap(self.model).named_buffers():
            if name in state:
                buffer.copy_(state[name])


class ShardedOptimizer:
    """The optimizer's state as a checkpoint part of a sharded run: keyed by parameter name, so that DCP can load it
    at another world size (torch's get/set_optimizer_state_dict)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(self.model), self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(self.model), self.optimizer, state)


class ShardedStore:
    """Writes a checkpoint state as a sharded folder; every rank writes with it, in the same order. main: the rank
    that writes the plain values and renames the folder into place (the others write their shards and rank file)."""

    suffix = ""  # folders: checkpoint-epoch3, model_best

    def __init__(self, rank: int, world_size: int, main: bool):
        self.rank, self.world_size, self.main = rank, world_size, main
        self.group = checkpoint_group()

    def write(self, state: dict, path: Path) -> None:
        """Write state as the folder path, through a temporary folder beside it; returns on every rank once the
        folder is in place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        tmp = path.with_name(f".{path.name}.tmp")
        problem = None  # a failed write on any rank fails the save on every rank, which all reach each collective
        parts = [name for name in SHARDED_PARTS if state.get(name) is not None]
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            position = {k: state[k] for k in ("epoch", "global_step", "batch_in_epoch") if k in state}
            own = {name: state.get(name) for name in RANK_LOCAL}
            _save(tmp / rank_file(self.rank), {**own, "rank": self.rank, "world_size": self.world_size, **position})
            if self.main:
                plain = {k: v for k, v in state.items() if k not in (*SHARDED_PARTS, RANK_BUFFERS)}
                _save(tmp / PLAIN, {**plain, SHARDED: {"world_size": self.world_size, "parts": parts}})
        except OSError as e:
            problem = e.strerror or str(e)
        try:
            with _alone(self.group):
                dcp.save({name: state[name] for name in parts},
                         storage_writer=dcp.FileSystemWriter(tmp), process_group=self.group,
                         no_dist=self.group is None)
        except (CheckpointException, OSError) as e:
            problem = problem or str(e).splitlines()[0]
        if _on_any_rank(problem is not None, self.group):
            raise UserError(f"cannot write sharded checkpoint {path}: {problem or 'another rank failed to write'}; "
                            f"free space or fix permissions of {path.parent} (earlier checkpoints are untouched)")
        if self.main:  # every rank's files are in: DCP's last step, on this rank, follows every rank's writes
            replace_folder(tmp, path)
        if self.group is not None:
            dist.barrier(group=self.group)  # the folder is in place before any rank starts the next one


def _on_any_rank(flag: bool, group: Any) -> bool:
    """True on every rank of group when it is on any (flag itself without a group)."""
    if group is None:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


@contextlib.contextmanager
def _alone(group: Any) -> Iterator[None]:
    """Around DCP in one process (no group): without its warning that it assumes one process, which it is told."""
    with warnings.catch_warnings():
        if group is None:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _save(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def replace_folder(tmp: Path, path: Path) -> None:
    """Rename the complete folder tmp to path; a folder already there (model_best) goes only after."""
    old = path.with_name(f".{path.name}.old.tmp")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)


def read_plain(folder: Path, use: str, fix: str) -> dict:
    """The plain values of a sharded checkpoint folder, with the folder (SOURCE) for the ranks to load shards from."""
    plain = read_torch_file(folder / PLAIN, "checkpoint", fix)
    if not isinstance(plain, dict) or SHARDED not in plain:
        raise UserError(f"{folder / PLAIN} is not the plain part of a sharded checkpoint; {use} another checkpoint")
    return {**plain, SOURCE: str(folder)}


def load_shards(parts: dict, checkpoint: dict, skip: tuple = ()) -> None:
    """Load the model's and optimizer's shards of checkpoint's folder into parts (ShardedWeights, ShardedOptimizer):
    every rank reads the pieces of its own shards (DCP reshards from another world size)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(checkpoint[SOURCE])
    names = [n for n in checkpoint[SHARDED]["parts"] if n in parts and n not in skip]
    group = checkpoint_group()
    state = {name: parts[name].state_dict() for name in names}
    try:
        with _alone(group):
            dcp.load(state, checkpoint_id=folder, process_group=group, no_dist=group is None)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"the sharded checkpoint {folder} cannot be loaded ({message}); every rank must see the "
                        f"folder at this path (a shared disk), with the arch it was trained with") from None
    for name in names:
        parts[name].load_state_dict(state[name])


def this_ranks_state(checkpoint: dict, rank: int, world_size: int, seed: int | None) -> tuple[dict, str | None]:
    """(checkpoint with this rank's random states and buffers, a note): at the world size that wrote it, each rank's
    own; at another, seeded anew from (seed, step, rank), rank 0's buffers (in the shards), the position in the epoch
    moved to as many samples done, and the note says so (None at the same world size)."""
    saved = checkpoint[SHARDED]["world_size"]
    folder = Path(checkpoint[SOURCE])
    if saved == world_size:
        own = read_torch_file(folder / rank_file(rank), "checkpoint", "resume from an earlier checkpoint")
        return {**checkpoint, **{name: own.get(name) for name in RANK_LOCAL}}, None
    step = checkpoint.get("global_step", 0)
    seed_everything(hash((seed or 0, step, rank)) % 2**63)
    done = checkpoint.get("batch_in_epoch", 0)
    moved = done * saved // world_size
    note = (f"the checkpoint was written by {saved} ranks and is resumed on {world_size}: torch.distributed."
            f"checkpoint resharded the model and optimizer; the random states were seeded anew from the seed, "
            f"step and rank" + (f", and the epoch goes on after batch {moved} (as many samples as {done} batches "
                                f"on {saved} ranks)" if done else "") + "; not bit-exact with an unbroken run")
    return {**checkpoint, RNG: None, RANK_BUFFERS: None, "batch_in_epoch": moved}, note


def consolidated(folder: Path) -> dict:
    """A sharded checkpoint as a regular one (plain values and the whole weights, no optimizer state), for test.py,
    predict.py, export.py and --init-from: made once with torch's dcp_to_torch_save and kept as
    folder/consolidated.pth (read from there afterwards; where the folder is read-only, made in memory each time; in a
    torchrun job, where every rank may join them, written by rank 0)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = folder / CONSOLIDATED
    if target.is_file() and target.stat().st_mtime_ns >= (folder / PLAIN).stat().st_mtime_ns:
        return read_torch_file(target, "checkpoint", f"delete {target}: it is made again from the shards")
    plain = read_plain(folder, "use", "use another checkpoint")
    whole = folder.parent / f".{folder.name}.{os.getpid()}.whole.tmp"  # the shards, joined by torch
    try:
        dcp_to_torch_save(folder, whole)
        shards = torch.load(whole, map_location="cpu", weights_only=True, mmap=True)
        checkpoint = {k: v for k, v in plain.items() if k not in (SHARDED, SOURCE)}
        checkpoint.update({MODEL: {k: v.clone() for k, v in shards[MODEL].items()}, OPTIMIZER: None,
                           CONSOLIDATED_FROM: folder.name})
    except OSError as e:
        raise UserError(f"cannot join the shards of {folder} ({e.strerror or e}); free space in {folder.parent}") \
            from None
    finally:
        whole.unlink(missing_ok=True)
    checkpoint.setdefault(FORMAT, FORMAT_VERSION)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return checkpoint  # every rank of a job joins them (--init-from); rank 0 alone keeps the file
    try:
        atomic_save(checkpoint, target)
        logging.getLogger("train").info("Consolidated the sharded checkpoint %s into %s.", folder, target)
    except UserError as e:
        logging.getLogger("train").warning("Joined the shards of %s in memory (not kept: %s)", folder, e)
    return checkpoint
