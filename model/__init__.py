"""Registers models, losses and metrics by name.

The user's files register every public class or function they define: model.py (archs), loss.py,
metric.py. The model zoo modules register what their __all__ lists: cnn.py and builders.py (archs),
zoo_losses.py (losses); they are imported only when a name is not the user's (or when the names are listed),
and a name the user defines wins over the zoo's. torchvision's classification models (torchvision_models.py)
come last, from a provider that imports torchvision.models on the first lookup the names above do not answer.
"""
import inspect

from torch import nn

from model import loss, metric, model
from utils.registry import ARCHS, LOSSES, METRICS


def _is_module_class(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _torchvision_models() -> dict:
    from model import torchvision_models

    return torchvision_models.provider()


ARCHS.register_module(model, _is_module_class)
for _zoo in ("model.cnn", "model.builders"):
    ARCHS.register_module_later(_zoo, _is_module_class)
ARCHS.add_provider(_torchvision_models)
LOSSES.register_module(loss)
LOSSES.register_module_later("model.zoo_losses")
METRICS.register_module(metric)
