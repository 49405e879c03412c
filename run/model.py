"""The model of a run: built from the config (from weights when arch.weights says), placed on its device and
wrapped for several GPUs; or rebuilt from a checkpoint with the weights to predict with."""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from torch.nn.modules.batchnorm import _NormBase

from parse_config import ConfigParser
from utils.checkpoint import ModelWeights, inference_weights
from utils.distributed import Dist
from utils.errors import UserError
from utils.fsdp import fsdp2_problems, shard_model
from utils.params import outermost, unmatched
from utils.registry import ARCHS


def build_model(config: ConfigParser, *, initial_weights: bool = False) -> torch.nn.Module:
    """The model arch describes, on the CPU; initial_weights: load arch.weights into it (a new run's start)."""
    model = config.init_obj("arch", ARCHS)
    if initial_weights and config["arch"]["weights"]:
        load_initial_weights(model, config["arch"])
    return model


def load_initial_weights(model: torch.nn.Module, arch: dict) -> None:
    """arch.weights into the new model, non-strict unless arch.weights_strict; the report goes to the log."""
    from utils.weights import load_weights, read_weights  # a run without arch.weights does not import it

    state, source = read_weights(arch["weights"], arch["type"])
    report = load_weights(model, state, source, strict=arch["weights_strict"], key_map=arch["weights_key_map"])
    logging.getLogger("train").info(report.block())


def place_model(model: torch.nn.Module, device: torch.device, device_ids: list[int], settings,
                dist: Dist) -> torch.nn.Module:
    """The model on its device (channels_last, activation checkpointing and compiled if the trainer settings ask),
    under torchrun sharded by FSDP2 (trainer.strategy fsdp2) or in DDP, in DataParallel on several GPUs otherwise."""
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    if settings.activation_checkpointing:
        checkpoint_activations(model, settings.activation_checkpointing)
    fsdp2 = settings.fsdp2
    if fsdp2 is not None:  # checked in one process too, so that --dry-run finds what FSDP2 cannot do
        problems = fsdp2_problems(model, fsdp2, settings, device)
        if problems:
            raise UserError(problems)
        if dist.enabled:
            model = shard_model(model, fsdp2, device, dist.world_size)
        else:
            logging.getLogger("train").info("trainer.strategy fsdp2 in one process: nothing to shard over, the model "
                                            "trains whole%s; checkpoints are sharded ones all the same.",
                                            " (args.param_dtype and reduce_dtype apply with 2+ ranks)"
                                            if fsdp2.param_dtype or fsdp2.reduce_dtype else "")
    if settings.compile is not False:
        model = torch.compile(model, **(settings.compile if isinstance(settings.compile, dict) else {}))
    if fsdp2 is not None:
        return model
    if dist.enabled:
        if settings.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the CPU); "
                                "set it to false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)
    return torch.nn.DataParallel(model, device_ids=device_ids) if len(device_ids) > 1 else model


def checkpoint_activations(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Run the forward of the modules the patterns name (the outermost ones) under torch's non-reentrant activation
    checkpointing, in place: their activations are recomputed in the backward pass. The module tree is untouched,
    so state_dict and parameter names are as without it (torch's checkpoint_wrapper would add a prefix to the
    model's named_parameters(), which trainer.freeze and optimizer.param_groups match). Returns their names."""
    names = [name for name, _ in model.named_modules() if name]  # the model itself: checkpointing all saves nothing
    problems = unmatched(names, patterns, "trainer.activation_checkpointing", type(model).__name__, "module")
    if problems:
        raise UserError([f"{p} (--dry-run prints the model's layers)" for p in problems])
    chosen = outermost(names, patterns)
    for name in chosen:
        module = model.get_submodule(name)
        module.forward = partial(checkpointed_forward, module.forward)  # an instance attribute: deepcopy rebinds it
    return chosen


def checkpointed_forward(forward: Callable, *args: Any, **kwargs: Any) -> Any:
    """forward(*args, **kwargs) under non-reentrant activation checkpointing when a gradient is recorded. Its
    recomputation leaves the norm layers' running statistics as the first pass left them (torch's checkpoint would
    update them twice)."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    module = getattr(forward, "__self__", None)
    norms = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats] \
        if module is not None and module.training else []
    passes = []

    def run(*args: Any, **kwargs: Any) -> Any:
        if not passes or not norms:
            passes.append(1)
            return forward(*args, **kwargs)
        stats = [[b.clone() for b in m.buffers(recurse=False)] for m in norms]  # a few small tensors
        try:
            return forward(*args, **kwargs)
        finally:
            with torch.no_grad():
                for m, saved in zip(norms, stats):
                    for buffer, value in zip(m.buffers(recurse=False), saved):
                        buffer.copy_(value)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


def load_trained_weights(model: torch.nn.Module, checkpoint: dict) -> None:
    """The checkpoint's weights to predict with into model: the EMA average when the run kept one."""
    ModelWeights(model).load_state_dict(inference_weights(checkpoint))


def trained_model(checkpoint: dict, device: torch.device) -> tuple[ConfigParser, torch.nn.Module]:
    """(the run's config, its model) from a checkpoint alone, for inference (predict.py, export.py): the model its
    config describes with the weights to predict with, on device, in eval mode; not compiled and not wrapped."""
    config = ConfigParser(checkpoint["config"])
    model = build_model(config)
    load_trained_weights(model, checkpoint)
    return config, model.to(device).eval()
