"""torch.distributed under torchrun: who this process is, and the few collectives the trainer needs.

Launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process joins the group;
otherwise everything here is a single-process no-op, so the trainer has one code path.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError
from utils.interrupt import signal_when_parent_dies


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `main` is the rank that writes the run directory: rank 0, or on resume
    the lowest rank whose machine holds the run (see read_on_one_rank)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    main: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == self.main


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


DEFAULT_TIMEOUT_S = 1800
_started: list[tuple[str, int]] = []  # the backend and timeout of each process group this process joined


def init(backend: str | None, timeout_s: int, main: int = 0) -> Dist:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU unless backend says otherwise). Called
    again with another backend or timeout, the group is restarted with them: train.py joins with the defaults
    before it reads -r's checkpoint, whose config may name others."""
    if not launched_by_torchrun():
        return SINGLE
    if not _started:
        stop_when_the_launcher_dies()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized() and _started[-1:] != [(backend, timeout_s)]:
        shutdown()
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # each group under its own prefix of torchrun's store, which outlives the processes: a group restarted with
        # another backend must not meet the keys of the one before, nor a job torchrun restarted (--max-restarts)
        # those of its earlier attempt (its ranks would read the dead ranks' addresses and fail to connect)
        prefix = f"attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/group-{len(_started)}"
        try:
            dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=rank, world_size=world,
                                    timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"trainer.dist_backend {backend!r} could not start the process group: {e}") from None
        _started.append((backend, timeout_s))
    return Dist(rank, world, local, main)


def stop_when_the_launcher_dies() -> None:
    """Have this process sent SIGTERM (a stop that saves) when its parent, torchrun's agent, dies (Linux). Killed with
    kill -9, the agent cannot pass a stop on, and it starts the ranks in sessions of their own: they would train on
    unwatched, into the run directory that the job's next start then waits for."""
    signal_when_parent_dies(signal.SIGTERM)


def joined_a_process_group() -> bool:
    """Whether this process has joined a process group (and holds its threads, even after shutdown)."""
    return bool(_started)


def read_on_one_rank(path: str | Path, read: Callable[[Path], Any], ctx: Dist,
                     holds: Callable[[Path], bool] = Path.exists, required: bool = True) -> tuple[Dist, Any]:
    """read(path) done once, on the lowest rank whose machine holds path (holds(path): it exists, by default), and
    sent to every rank; that rank becomes ctx.main, the one that writes beside it. So -r RUN_DIR works when only one
    machine holds the run (machines without a shared disk). A UserError raised there is raised on every rank. When
    no machine holds it: a UserError, or (ctx, None) on every rank unless required (--resume auto's first start)."""
    path = Path(path)
    if not ctx.enabled:
        return (ctx, read(path)) if required or holds(path) else (ctx, None)
    holder = lowest_rank_with(holds(path))
    if holder is None:
        if not required:
            return ctx, None
        raise UserError(f"{path}: no such file or directory on any machine of this torchrun job; give the path "
                        f"as the machine that holds it sees it")
    answer = None
    if ctx.rank == holder:
        try:
            answer = (True, read(path))
        except UserError as e:
            answer = (False, e.problems)
    ok, value = broadcast(answer, src=holder)
    if not ok:
        raise UserError(value)
    return replace(ctx, main=holder), value


def lowest_rank_with(flag: bool) -> int | None:
    """The lowest rank whose flag is true, the same on every rank; None when no rank's is."""
    return next((rank for rank, has in enumerate(all_gather(flag)) if has), None)


def all_gather(obj: Any) -> list:
    """Every rank's obj, in rank order ([obj] in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def device_of(ctx: Dist, n_gpu: int) -> torch.device:
    """Each rank on its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() and n_gpu > 0 else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (nothing to do in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_stack(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, stacked in rank order (tensor[None] in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor[None]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (one host sync; use at sync points only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank src's obj on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rewrap(model: torch.nn.Module) -> torch.nn.Module:
    """A DistributedDataParallel model wrapped anew around the same module, with the same options (any other
    model as it is). DDP syncs the gradients of the parameters that required one when it was built, so a change
    of which parameters train (trainer.freeze) needs a new wrapper; every rank calls it at the same point."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model.module, device_ids=model.device_ids, output_device=model.output_device, dim=model.dim,
        process_group=model.process_group, find_unused_parameters=model.find_unused_parameters,
        gradient_as_bucket_view=model.gradient_as_bucket_view)


_side_groups: dict[str, Any] = {}  # gloo_group's, by name: dropped before the process group is destroyed


def gloo_group(name: str) -> Any:
    """A gloo group of every rank for one purpose (name), made once per process group, by every rank at the same
    point: sharded checkpoints are written over one from a background thread, apart from training's collectives.
    None in a process without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if name not in _side_groups:
        _side_groups[name] = dist.new_group(backend="gloo")
    return _side_groups[name]


def shutdown() -> None:
    """Leave the process group (and the groups gloo_group made: one still referenced when the process exits makes
    gloo abort it, 'terminate called without an active exception')."""
    _side_groups.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
