"""What FSDP2 saves per rank against DDP, and what activation checkpointing saves: the project's own placement
(utils/fsdp.py shard_model, run/model.py checkpoint_activations) on an MLP, in N processes.

    python benchmarks/sharding.py [--ranks 2] [--width 1024] [--layers 8] [--batch 32] [--steps 20]

Each rank measures, for DDP and for FSDP2 (trainer.strategy fsdp2, a unit per block): the bytes of the parameters,
gradients and AdamW state it holds (the local shards), the peak memory of the device during the steps (GPUs:
torch.cuda.max_memory_allocated; the CPU: not measured) and the median step time; and the bytes one forward saves
for the backward pass with and without activation checkpointing of every block. gloo on the CPU, nccl with one GPU
per rank. With --ranks 1 it runs in this process (a 1-rank group: what the smoke test runs). The last line is the
ratio of FSDP2's per-rank state to DDP's.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run.model import checkpoint_activations  # noqa: E402
from utils.fsdp import shard_model  # noqa: E402


def mlp(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = nn.Sequential(*(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(layers)))
    return nn.Sequential(blocks, nn.Linear(width, 10))


def local_bytes(tensors) -> int:
    """Bytes of the tensors this rank holds (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int, int]:
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    return local_bytes(params), local_bytes(grads), local_bytes(states)


def saved_for_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors one forward keeps for the backward pass, the parameters aside (kept anyway)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return sum(seen.values())


def measure(strategy: str, args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    model = mlp(args.width, args.layers).to(device)
    if strategy == "fsdp2":
        settings = types.SimpleNamespace(shard=["0.*"], reshard_after_forward=True, param_dtype=None,
                                         reduce_dtype=None, cpu_offload=False)
        model = shard_model(model, settings, device, world)
    else:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(rank)
    x = torch.randn(args.batch, args.width, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    def step():
        optimizer.zero_grad(set_to_none=False)  # the gradients stay allocated: they are counted
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    params, grads, states = state_bytes(model, optimizer)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"params": params, "grads": grads, "optimizer": states, "peak": peak,
            "step_ms": statistics.median(times) * 1000}


def activations(args: argparse.Namespace, device: torch.device) -> tuple[int, int]:
    x = torch.randn(args.batch, args.width, device=device)
    plain = mlp(args.width, args.layers).to(device)
    checkpointed = mlp(args.width, args.layers).to(device)
    checkpoint_activations(checkpointed, ["0.*"])
    return saved_for_backward(plain, x), saved_for_backward(checkpointed, x)


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    cuda = torch.cuda.device_count() >= world and not args.cpu
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    results = {strategy: measure(strategy, args, rank, world, device) for strategy in ("ddp", "fsdp2")}
    saved = activations(args, device)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        report(gathered, saved, args, world, torch.cuda.get_device_name(device) if cuda else "CPU (gloo)")
    dist.destroy_process_group()


def mib(n: int | None) -> str:
    return "not measured" if n is None else f"{n / 2**20:.1f} MiB"


def report(gathered: list[dict], saved: tuple[int, int], args: argparse.Namespace, world: int, where: str) -> None:
    params = sum(p.numel() for p in mlp(args.width, args.layers).parameters())
    print(f"{where}, {world} rank(s), torch {torch.__version__}: an MLP of {args.layers} blocks {args.width} wide "
          f"({params / 1e6:.1f} M parameters), AdamW, batch {args.batch} per rank, median of {args.steps} steps")
    totals = {}
    for strategy in ("ddp", "fsdp2"):
        rank0 = gathered[0][strategy]
        worst = max(r[strategy]["params"] + r[strategy]["grads"] + r[strategy]["optimizer"] for r in gathered)
        totals[strategy] = worst
        print(f"{strategy:6s} per rank (the largest): parameters {mib(rank0['params'])}, gradients "
              f"{mib(rank0['grads'])}, AdamW state {mib(rank0['optimizer'])}: {mib(worst)} in all; peak device "
              f"memory {mib(max(r[strategy]['peak'] or 0 for r in gathered) or None)}; step "
              f"{statistics.median(r[strategy]['step_ms'] for r in gathered):.2f} ms")
    plain, checkpointed = saved
    print(f"activation checkpointing of every block: one forward keeps {mib(checkpointed)} for the backward pass "
          f"against {mib(plain)} without (ratio {checkpointed / plain:.2f})")
    print(f"ratio fsdp2/ddp per-rank parameters, gradients and optimizer state: {totals['fsdp2'] / totals['ddp']:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU even where there are GPUs")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if args.ranks == 1:
        worker(0, 1, port, args)
    else:
        torch.multiprocessing.spawn(worker, args=(args.ranks, port, args), nprocs=args.ranks)


if __name__ == "__main__":
    main()
