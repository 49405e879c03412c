"""A trainer assembled from a config in dependency order: data, model on its device, loss and metrics,
optimizer, schedule, then the trainer.type class. train.py trains with it; test.py and --fast-dev-run evaluate
with it (training=False), so evaluation cannot drift from validation."""
from __future__ import annotations

import dataclasses

import torch

from base import BaseTrainer
from parse_config import ConfigParser
from run.data import build_data
from run.model import build_model, load_trained_weights, place_model
from utils.checkpoint import unwrap
from utils.distributed import SINGLE, Dist
from utils.params import parameter_groups
from utils.registry import LR_SCHEDULERS, OPTIMIZERS, TRAINERS
from utils.schedule import LRSchedule


def build_trainer(config: ConfigParser, device: torch.device, device_ids: list[int] = (), dist: Dist = SINGLE, *,
                  training: bool = True) -> BaseTrainer:
    """The configured trainer over the training and validation data; with training=False over the test split,
    with nothing to monitor and no console output but its results."""
    settings = config.settings()
    if not training:
        settings = dataclasses.replace(settings, monitor="off", verbosity=0, strategy="ddp")  # one process, whole
    data_loader, valid_data_loader = build_data(config, training, dist)
    for loader in (data_loader, valid_data_loader):
        if hasattr(loader, "set_device"):  # in-memory images are converted there, after the copy
            loader.set_device(device)
    model = build_model(config, initial_weights=training and config.resume is None)  # a resumed run has its own
    model = place_model(model, device, list(device_ids), settings, dist)
    criterion, metrics = config.build_loss(), config.build_metrics()
    optimizer = config.init_obj("optimizer", OPTIMIZERS, param_groups(model, config["optimizer"]["no_decay_bias_norm"],
                                                                      config["optimizer"]["param_groups"]))
    scheduler = config["lr_scheduler"]
    schedule = LRSchedule(config.init_obj("lr_scheduler", LR_SCHEDULERS, optimizer) if scheduler else None,
                          scheduler["interval"] if scheduler else "epoch")
    trainer_class = TRAINERS.get(settings.type, "trainer.type")
    return trainer_class(model, criterion, metrics, optimizer, settings, data_loader=data_loader,
                         valid_data_loader=valid_data_loader, lr_scheduler=schedule, device=device,
                         config=config.config, dist=dist)


def build_evaluator(checkpoint: dict, device: torch.device) -> tuple[ConfigParser, BaseTrainer]:
    """(the checkpoint's config, its trainer over the test split holding the weights to predict with): what
    test.py evaluates, using only what the checkpoint holds."""
    config = ConfigParser(checkpoint["config"])
    evaluator = build_trainer(config, device, training=False)
    load_trained_weights(evaluator.model, checkpoint)
    return config, evaluator


def param_groups(model: torch.nn.Module, no_decay_bias_norm: bool, groups: list[dict] = ()) -> list:
    """The trainable parameters; with no_decay_bias_norm, 1-D ones (biases, norm weights) in a group without
    weight decay; with optimizer.param_groups entries (groups), named groups with their own options after the
    default one (utils/params.py). Parameters trainer.freeze names are in: the trainer freezes them later."""
    if groups:
        plain = unwrap(model)
        return parameter_groups(list(plain.named_parameters()), groups, no_decay_bias_norm, type(plain).__name__)
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bias_norm:
        return params
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
