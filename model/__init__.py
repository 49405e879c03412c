"""Registers the public classes and functions of model.py, loss.py and metric.py by name."""
import inspect

from torch import nn

from model import loss, metric, model
from utils.registry import ARCHS, LOSSES, METRICS

ARCHS.register_module(model, lambda obj: inspect.isclass(obj) and issubclass(obj, nn.Module))
LOSSES.register_module(loss)
METRICS.register_module(metric)
