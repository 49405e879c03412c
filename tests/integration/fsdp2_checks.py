"""Checks of the trainer's pieces under 2 ranks (gloo, CPU), run by test_fsdp2.py in one torchrun launch:
torchrun --nproc_per_node=2 fsdp2_checks.py OUT.json. Each check compares against the same computation in one
process on the whole batch (or without the feature), and rank 0 writes {check: [problems]} to OUT.json (an empty list
passes). The model is the zoo CNN with batch norm and an uneven 33-wide layer, so shards are uneven."""
from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run.model import checkpoint_activations  # noqa: E402
from trainer.step import Stepper  # noqa: E402
from utils.distributed import shutdown  # noqa: E402
from utils.fsdp import full_weights, shard_model, whole  # noqa: E402
from utils.sharded import ShardedOptimizer, ShardedStore, ShardedWeights  # noqa: E402

FSDP2 = types.SimpleNamespace(shard=["features", "head.*"], reshard_after_forward=True, param_dtype=None,
                              reduce_dtype=None, cpu_offload=False)


class Net(nn.Module):
    def __init__(self, norm: bool = True):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6) if norm else nn.Identity(),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 16, 33), nn.ReLU(), nn.Linear(33, 10))

    def forward(self, x):
        return self.head(self.features(x))


def net(norm: bool = True) -> Net:
    torch.manual_seed(0)
    return Net(norm)


def batches(n: int, rank: int | None, world: int):
    """n global batches of 8 samples; rank's share (None: the whole batch)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        out.append((x, y) if rank is None else (x[rank::world], y[rank::world]))
    return out


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def grads(model) -> dict:
    return {name: whole(p.grad) for name, p in model.named_parameters() if p.grad is not None}


def differing(a: dict, b: dict, exact: bool, what: str) -> list[str]:
    if a.keys() != b.keys():
        return [f"{what}: names differ: {sorted(a.keys() ^ b.keys())}"]
    bad = [k for k in a if not (torch.equal(a[k], b[k]) if exact else torch.allclose(a[k], b[k], rtol=1e-5,
                                                                                      atol=1e-6))]
    return [f"{what}: {k} differs by {(a[k] - b[k]).abs().max().item():.3g}" for k in bad]


def activation_checkpointing(rank, world, strategy) -> list[str]:
    """The same gradients with and without activation checkpointing, under DDP or FSDP2."""
    results = []
    for patterns in ([], ["features", "head.1"]):
        model = net()
        if patterns:
            checkpoint_activations(model, patterns)
        model = shard_model(model, FSDP2, torch.device("cpu"), world) if strategy == "fsdp2" \
            else nn.parallel.DistributedDataParallel(model)
        x, y = batches(1, rank, world)[0]
        loss_of(model, x, y).backward()
        results.append(grads(model.module if strategy == "ddp" else model))
    return differing(results[0], results[1], exact=True, what=f"{strategy} grads with and without checkpointing")


def accumulation_and_clipping(rank, world) -> list[str]:
    """Stepper under FSDP2 with 4 micro-steps and clipping by the global norm: no gradient reaches the shards before
    the group's last backward (no reduce-scatter on the inner steps), and the weights after 2 optimizer steps equal
    one process's on the whole batches (a model without batch norm, whose statistics would be the share's)."""
    problems = []
    reference = net(norm=False)  # batch norm's statistics over a rank's share are not the whole batch's
    sharded = shard_model(net(norm=False), FSDP2, torch.device("cpu"), world)
    for model, share in ((reference, None), (sharded, rank)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        stepper = Stepper(model, optimizer, torch.device("cpu"), accumulate_steps=4, clip_grad_norm=0.05)
        for i, (x, y) in enumerate(batches(8, share, world)):
            stepper.step(lambda: (loss_of(model, x, y), None), i % 4, 4)
            if model is sharded and i % 4 < 3 and any(p.grad is not None for p in model.parameters()):
                problems.append(f"micro-step {i}: the shards hold gradients before the group's last backward")
    problems += differing(reference.state_dict(), full_weights(sharded), exact=False,
                          what="weights after accumulation and clipping")
    return problems


def mixed_precision(rank, world) -> list[str]:
    """param_dtype bf16 (a model without batch norm: with it, a clear error at start): the units compute in bf16,
    the shards stay float32, and the gradients reach them in float32."""
    args = types.SimpleNamespace(**{**vars(FSDP2), "param_dtype": "bf16", "reduce_dtype": "fp32"})
    model = shard_model(net(norm=False), args, torch.device("cpu"), world)
    x, y = batches(1, rank, world)[0]
    out = model(x)
    problems = [] if out.dtype == torch.bfloat16 else [f"the output is {out.dtype}, not bfloat16"]
    nn.functional.cross_entropy(out.float(), y).backward()
    problems += [f"{n} is {p.dtype}, its gradient {None if p.grad is None else p.grad.dtype}"
                 for n, p in model.named_parameters() if p.dtype != torch.float32 or p.grad.dtype != torch.float32]
    return problems


def mixed_precision_by_autocast(rank, world) -> list[str]:
    """trainer.amp under FSDP2 through the Stepper: bf16 autocast trains as one process does (within bf16's
    precision); fp16 with its GradScaler skips a step on every rank when one rank's gradient shard is not finite
    (the ranks agree on the skip and on the new scale), and steps on every rank otherwise."""
    problems = []
    reference, sharded = net(norm=False), shard_model(net(norm=False), FSDP2, torch.device("cpu"), world)
    for model, share in ((reference, None), (sharded, rank)):
        stepper = Stepper(model, torch.optim.AdamW(model.parameters(), lr=0.01), torch.device("cpu"), amp="bf16")
        for x, y in batches(2, share, world):
            stepper.step(lambda: (loss_of(model, x, y), None), 0, 1)
    whole_weights = full_weights(sharded)
    problems += [f"bf16: {k} differs by {(v - whole_weights[k]).abs().max().item():.3g}"
                 for k, v in reference.state_dict().items() if not torch.allclose(v, whole_weights[k], atol=2e-2)]
    model = shard_model(net(norm=False), FSDP2, torch.device("cpu"), world)
    stepper = Stepper(model, torch.optim.AdamW(model.parameters(), lr=0.01), torch.device("cpu"), amp="fp16")
    x, y = batches(1, rank, world)[0]
    before = {k: v.clone() for k, v in full_weights(model).items()}

    step = stepper.scaler.step

    def poisoned_step(optimizer):  # an infinite gradient in rank 1's shard alone, found when the scaler unscales
        if rank == 1:
            model.head[3].weight.grad.to_local().view(-1)[0] = float("inf")
        return step(optimizer)

    stepper.scaler.step = poisoned_step
    stepper.step(lambda: (loss_of(model, x, y), None), 0, 1)
    after = full_weights(model)
    if any(not torch.equal(before[k], after[k]) for k in before):
        problems.append("fp16: a step with an infinite gradient on one rank changed the weights")
    scales = [None] * world
    dist.all_gather_object(scales, stepper.scaler.get_scale())
    if len(set(scales)) != 1 or scales[0] >= 65536.0:
        problems.append(f"fp16: the ranks' scales after the skipped step are {scales}")
    stepper.scaler.step = step
    stepper.step(lambda: (loss_of(model, x, y), None), 0, 1)
    if all(torch.equal(after[k], v) for k, v in full_weights(model).items()):
        problems.append("fp16: the next step, with finite gradients, did not train")
    return problems


def background_equals_synchronous(rank, world, folder: Path) -> list[str]:
    """A sharded folder written in the background (the Checkpointer's writer thread) holds what the synchronous
    write holds, shard for shard, rank file for rank file."""
    from utils.background import BackgroundWriter

    model = shard_model(net(), FSDP2, torch.device("cpu"), world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = batches(1, rank, world)[0]
    loss_of(model, x, y).backward()
    optimizer.step()
    state = {"state_dict": ShardedWeights(model).state_dict(), "optimizer": ShardedOptimizer(model, optimizer)
             .state_dict(), "rng": {"torch": torch.get_rng_state()}, "epoch": 1, "config": {}}
    store = ShardedStore(rank, world, rank == 0)
    store.write(state, folder / "sync")
    writer = BackgroundWriter()
    writer.submit(store.write, state, folder / "background")
    for p in model.parameters():  # the state was copied at submit: changing the weights now changes nothing written
        p.data.add_(1.0)
    writer.close()
    dist.barrier()
    if rank:
        return []
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    problems = []
    for name in ("sync", "background"):
        dcp_to_torch_save(folder / name, folder / f"{name}.pth")
    a, b = (torch.load(folder / f"{name}.pth", weights_only=True) for name in ("sync", "background"))
    problems += differing(a["state_dict"], b["state_dict"], exact=True, what="background shards")
    for r in range(world):
        ra, rb = (torch.load(folder / name / f"rank-{r}.pth", weights_only=True) for name in ("sync", "background"))
        if not torch.equal(ra["rng"]["torch"], rb["rng"]["torch"]):
            problems.append(f"rank-{r}.pth differs")
    return problems


def each_rank_gets_its_own_state_back(rank, world, folder: Path) -> list[str]:
    """Each rank's random states and batch norm statistics (FSDP2 does not sync buffers: they differ between ranks)
    come back to that rank from the rank files; the shards come back through DCP."""
    from utils.checkpoint import RandomState
    from utils.sharded import RANK_BUFFERS, RankBuffers, load_shards, read_plain, this_ranks_state

    model = shard_model(net(), FSDP2, torch.device("cpu"), world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = batches(1, rank, world)[0]
    loss_of(model, x, y).backward()  # the ranks' statistics now differ
    optimizer.step()
    torch.manual_seed(100 + rank)
    parts = {"state_dict": ShardedWeights(model), RANK_BUFFERS: RankBuffers(model),
             "optimizer": ShardedOptimizer(model, optimizer), "rng": RandomState()}
    saved = {name: copy.deepcopy(part.state_dict()) for name, part in parts.items()}
    ShardedStore(rank, world, rank == 0).write({**saved, "epoch": 1, "config": {}}, folder / "own")
    torch.manual_seed(7)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    checkpoint, note = this_ranks_state(read_plain(folder / "own", "resume from", ""), rank, world, 0)
    load_shards(parts, checkpoint)
    RankBuffers(model).load_state_dict(checkpoint[RANK_BUFFERS])
    RandomState().load_state_dict(checkpoint["rng"])
    problems = [f"a note at the same world size: {note}"] if note else []
    problems += differing({k: whole(v) for k, v in saved["state_dict"].items()},
                          {k: whole(v) for k, v in ShardedWeights(model).state_dict().items()}, exact=True,
                          what="weights and this rank's buffers loaded back")
    if not torch.equal(torch.get_rng_state(), saved["rng"]["torch"]):
        problems.append("this rank's random state did not come back")
    return problems


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = Path(out).parent / "fsdp2_checks"
    checks = {
        "activation checkpointing under DDP": lambda: activation_checkpointing(rank, world, "ddp"),
        "activation checkpointing under FSDP2": lambda: activation_checkpointing(rank, world, "fsdp2"),
        "accumulation and clipping under FSDP2": lambda: accumulation_and_clipping(rank, world),
        "mixed precision under FSDP2": lambda: mixed_precision(rank, world),
        "trainer.amp under FSDP2": lambda: mixed_precision_by_autocast(rank, world),
        "background sharded checkpoint": lambda: background_equals_synchronous(rank, world, folder),
        "each rank's own state back": lambda: each_rank_gets_its_own_state_back(rank, world, folder),
    }
    results = {name: check() for name, check in checks.items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {name: [f"rank {r}: {p}" for r, res in enumerate(gathered) for p in res[name]] for name in checks}
        Path(out).write_text(json.dumps(merged, indent=1))
    shutdown()  # the checkpoint group too


if __name__ == "__main__":
    main(sys.argv[1])
