"""trainer.strategy fsdp2: torch's fully_shard (FSDP2) over the ranks of a torchrun job, and the few places where a
sharded model is handled otherwise than a plain one (gradient sync in accumulation, whole tensors for a histogram,
the full weights). The model's parameters become DTensors sharded on dim 0 over a 1-D device mesh; their names and
the module tree are unchanged, so trainer.freeze, optimizer.param_groups and activation checkpointing name them as
before."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from utils.checkpoint_format import unwrap
from utils.params import outermost, unmatched

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}


def fsdp2_problems(model: nn.Module, args: Any, settings: Any, device: torch.device) -> list[str]:
    """What in the config FSDP2 cannot honour for this model and device (args: the FSDP2Settings; settings: the
    TrainerSettings): checked in every process, so that --dry-run finds it without torchrun."""
    names = [name for name, _ in model.named_modules() if name]
    problems = [f"{p} (--dry-run prints the model's layers)"
                for p in unmatched(names, args.shard, "trainer.strategy.args.shard", type(model).__name__, "module")]
    if settings.ema is not None:
        problems.append("trainer.ema does not work with trainer.strategy fsdp2 (its average would be a whole copy of "
                        "the model on every rank); set trainer.ema to null, or use strategy ddp")
    if settings.sync_batchnorm:
        problems.append("trainer.sync_batchnorm works with trainer.strategy ddp only; set it to false")
    norms = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if args.param_dtype not in (None, "fp32") and norms:
        problems.append(f"trainer.strategy.args.param_dtype {args.param_dtype!r}: the batch norm layers "
                        f"{', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''} would compute in it while their "
                        f"running statistics stay float32, which torch's batch_norm refuses; leave param_dtype null "
                        f"and set trainer.amp \"{args.param_dtype}\" (autocast keeps norm layers in float32)")
    if device.type == "cuda" and settings.dist_backend not in (None, "nccl"):
        problems.append(f"trainer.strategy fsdp2 on GPUs needs the nccl backend (trainer.dist_backend is "
                        f"{settings.dist_backend!r}, whose collectives FSDP2 cannot use there); set it to null")
    if args.cpu_offload and device.type != "cuda":
        problems.append("trainer.strategy.args.cpu_offload moves the shards off the GPUs, but this run is on the "
                        "CPU; set it to false")
    return problems


def shard_model(model: nn.Module, args: Any, device: torch.device, world_size: int) -> nn.Module:
    """fully_shard over all ranks of the job: each module args.shard names (the outermost matches that hold parameters,
    the last first), then the model itself. The mesh is made explicitly on the run's device type (gloo's CPU mesh on the CPU, also
    on a machine with GPUs), so that FSDP2 never guesses it. Returns the model, sharded in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    options = {"mesh": mesh, "reshard_after_forward": args.reshard_after_forward,
               "mp_policy": MixedPrecisionPolicy(param_dtype=DTYPES[args.param_dtype],
                                                 reduce_dtype=DTYPES[args.reduce_dtype]),
               "offload_policy": CPUOffloadPolicy() if args.cpu_offload else OffloadPolicy()}
    # the outermost modules named that hold parameters (a ReLU's unit would only cost hooks)
    units = [name for name in outermost([name for name, _ in model.named_modules() if name], args.shard)
             if next(model.get_submodule(name).parameters(), None) is not None]
    arch = type(model).__name__
    for name in reversed(units):
        fully_shard(model.get_submodule(name), **options)
    fully_shard(model, **options)
    if torch.distributed.get_rank() == 0:
        logging.getLogger("train").info("FSDP2: %s sharded over %d ranks in %d unit%s (%s).", arch, world_size,
                                        len(units) + 1, "s" if units else "", ", ".join([*units, "the model itself"]))
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether model (or the module a compile wrapper holds) was sharded by fully_shard: it has FSDPModule's methods
    (asked each micro-step, so without importing torch.distributed.fsdp into runs that never use it)."""
    return hasattr(getattr(model, "_orig_mod", model), "set_requires_gradient_sync")


@contextlib.contextmanager
def gradients_unsynced(model: nn.Module) -> Iterator[None]:
    """The backward passes inside keep their gradients on this rank (accumulation's inner micro-steps): DDP's
    no_sync, FSDP2's set_requires_gradient_sync(False); a plain model has nothing to sync."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif is_sharded(model):
        inner = getattr(model, "_orig_mod", model)
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (an all-gather: every rank calls it), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on every rank (a collective when it is sharded), unwrapped names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    plain = unwrap(model)
    if not is_sharded(plain):
        return plain.state_dict()
    return get_model_state_dict(plain, options=StateDictOptions(full_state_dict=True))
