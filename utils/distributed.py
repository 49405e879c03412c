"""torch.distributed under torchrun: who this process is, and the few collectives the trainer needs.

Launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process joins the group;
otherwise everything here is a single-process no-op, so the trainer has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(backend: str | None, timeout_s: int) -> Dist:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU unless backend says otherwise)."""
    if not launched_by_torchrun():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise UserError(f"trainer.dist_backend {backend!r} could not start the process group: {e}") from None
    return Dist(rank, world, local)


def device_of(ctx: Dist, n_gpu: int) -> torch.device:
    """Each rank on its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() and n_gpu > 0 else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (nothing to do in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (one host sync; use at sync points only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast(obj: Any) -> Any:
    """rank 0's obj on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
