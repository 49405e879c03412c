"""Registers models, losses and metrics by name.

The user's files register every public class or function they define: model.py (archs), loss.py,
metric.py. The model zoo modules register what their __all__ lists: cnn.py and builders.py (archs),
zoo_losses.py (losses). torchvision's classification models (torchvision_models.py) come last, from a provider
that imports torchvision.models on the first lookup the names above do not answer.
"""
import inspect

from torch import nn

from model import builders, cnn, loss, metric, model, torchvision_models, zoo_losses
from utils.registry import ARCHS, LOSSES, METRICS


def _is_module_class(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


for module in (model, cnn, builders):
    ARCHS.register_module(module, _is_module_class)
ARCHS.add_provider(torchvision_models.provider)
LOSSES.register_module(loss)
LOSSES.register_module(zoo_losses)
METRICS.register_module(metric)
