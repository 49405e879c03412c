"""The model of a run: built from the config (from weights when arch.weights says), placed on its device and
wrapped for several GPUs; or rebuilt from a checkpoint with the weights to predict with."""
from __future__ import annotations

import logging

import torch

from parse_config import ConfigParser
from utils.checkpoint import ModelWeights, inference_weights
from utils.distributed import Dist
from utils.errors import UserError
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
    """The model on its device (channels_last, compiled if the trainer settings ask), in DDP under torchrun, in
    DataParallel on several GPUs otherwise."""
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    if settings.compile is not False:
        model = torch.compile(model, **(settings.compile if isinstance(settings.compile, dict) else {}))
    if dist.enabled:
        if settings.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the CPU); "
                                "set it to false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)
    return torch.nn.DataParallel(model, device_ids=device_ids) if len(device_ids) > 1 else model


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
