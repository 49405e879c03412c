"""Registries that turn the names written in config.json into Python objects.

One registry per kind. User code registers by being imported: every public class or function
defined in model/model.py, model/loss.py, model/metric.py and data_loader/data_loaders.py, and every
public BaseTrainer subclass of trainer/trainer.py, is registered by its package's __init__ (which
parse_config imports). Library objects (torch.optim, pytorch_optimizer, torch.nn
losses, torchmetrics metrics) come from providers that are only imported on first lookup, after the user's names.
"""
from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any, Callable, Iterable

from utils.errors import UserError, did_you_mean

Provider = Callable[[], dict]


class Registry:
    """Names to objects for one kind (models, losses, ...); a duplicate name raises."""

    def __init__(self, kind: str, providers: Iterable[Provider] = ()):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._later: list[tuple[str, Callable[[Any], bool]]] = []  # modules registered on first need
        self._providers = list(providers)
        self._loaded: list[dict] = []  # the providers called so far, in order

    def register(self, obj: Any = None, *, name: str | None = None):
        """Register obj under name (default: its __name__); usable as a decorator."""
        if obj is None:
            return lambda o: self.register(o, name=name)
        name = name or obj.__name__
        old = self._entries.get(name)
        if old is not None and old is not obj:
            raise ValueError(
                f"{self.kind} name {name!r} is registered twice: "
                f"{_where(old)} and {_where(obj)}; rename one of them"
            )
        self._entries[name] = obj
        return obj

    def register_module(self, module: ModuleType, predicate: Callable[[Any], bool] = callable,
                        keep: Iterable[str] = ()) -> None:
        """Register the names in module.__all__, else every public object defined in module (not imported
        into it), that pass predicate; the names in keep keep the object they are registered with."""
        names = getattr(module, "__all__", None)
        for name, obj in vars(module).items():
            if names is not None:
                if name not in names:
                    continue
            elif name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if predicate(obj) and name not in keep:
                self.register(obj, name=name)

    def register_module_later(self, module_name: str, predicate: Callable[[Any], bool] = callable) -> None:
        """Register module_name's names as register_module does, importing it only when a lookup is not answered
        by the names registered before it, or when the names are listed: a run that names none of them does
        not import it. Names registered before it win over its own; it comes before every provider."""
        self._later.append((module_name, predicate))

    def _register_the_later_modules(self) -> None:
        if not self._later:  # every lookup a name of the user's does not answer comes here
            return
        registered = set(self._entries)  # they win; a name two later modules share is registered twice
        while self._later:
            module_name, predicate = self._later.pop(0)
            self.register_module(importlib.import_module(module_name), predicate, keep=registered)

    def add_provider(self, provider: Provider) -> None:
        """Add a lazily called source of names; earlier providers win on a shared name."""
        self._providers.append(provider)

    def _sources(self):
        """Each provider's names, calling (importing) a provider only when the ones before it did not answer."""
        for i, provider in enumerate(self._providers):
            if i == len(self._loaded):
                self._loaded.append(provider())
            yield self._loaded[i]

    def _library(self) -> dict[str, Any]:
        """Every library name (calls every provider); earlier providers win."""
        provided: dict[str, Any] = {}
        for source in self._sources():
            for name, obj in source.items():
                provided.setdefault(name, obj)
        return provided

    def names(self) -> list[str]:
        """All names: the user's first, then the libraries'."""
        self._register_the_later_modules()
        return list(self._entries) + sorted(n for n in self._library() if n not in self._entries)

    def find(self, name: str) -> Any | None:
        """The object for name (exact, else a unique case-insensitive match), or None."""
        if name not in self._entries:
            self._register_the_later_modules()
        if name in self._entries:
            return self._entries[name]
        for source in self._sources():
            if name in source:
                return source[name]
        folded = [n for n in self.names() if n.lower() == name.lower()]
        if len(folded) == 1:
            return self._entries.get(folded[0], self._library().get(folded[0]))
        return None

    def from_library(self, obj: Any) -> bool:
        """Whether obj comes from a library provider rather than from a registration of the user's."""
        return (all(obj is not o for o in self._entries.values())
                and any(obj is o for source in self._loaded for o in source.values()))

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None

    def get(self, name: str, path: str) -> Any:
        """The object for name; an unknown name raises a UserError naming the config path."""
        obj = self.find(name)
        if obj is None:
            raise UserError(self.unknown(name, path))
        return obj

    def unknown(self, name: Any, path: str) -> str:
        """The message for a name that is not registered."""
        return (
            f"{path}: unknown {self.kind} {name!r}.{did_you_mean(str(name), self.names())} "
            f"List them all with: python train.py --list {self.kind}"
        )


def _where(obj: Any) -> str:
    try:
        return f"{obj.__module__}.{obj.__qualname__} ({inspect.getsourcefile(obj)})"
    except (TypeError, AttributeError):
        return repr(obj)


# ---- library providers (imported on first lookup, so --help and config errors stay fast) ----

def _torch_optimizers() -> dict:
    import torch.optim

    return {
        name: obj for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer
    }


def _pytorch_optimizer_optimizers() -> dict:
    import pytorch_optimizer

    found = {}
    for key in pytorch_optimizer.get_supported_optimizers():
        try:
            cls = pytorch_optimizer.load_optimizer(key)
        except (NotImplementedError, ImportError, ValueError):  # optional backends not installed
            continue
        found.setdefault(cls.__name__, cls)
    return found


# Schedulers whose required arguments are Python objects a JSON config cannot hold: a function
# (lr_lambda) or other schedulers (and ChainedScheduler takes those first, so the optimizer the
# builder passes would land in the wrong place). Register a factory of your own to use them.
_NEEDS_PYTHON_OBJECTS = {"LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"}


def _torch_schedulers() -> dict:
    from torch.optim import lr_scheduler

    return {
        name: obj for name, obj in vars(lr_scheduler).items()
        if inspect.isclass(obj) and issubclass(obj, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))
        and not name.startswith("_") and obj is not lr_scheduler.LRScheduler and name not in _NEEDS_PYTHON_OBJECTS
    }


def _pytorch_optimizer_schedulers() -> dict:
    import pytorch_optimizer
    from torch.optim.lr_scheduler import LRScheduler

    found = {}
    for key in pytorch_optimizer.get_supported_lr_schedulers():
        obj = pytorch_optimizer.load_lr_scheduler(key)
        if obj.__name__ in _NEEDS_PYTHON_OBJECTS:  # torch's, offered again under another key
            continue
        # Only schedulers with the torch protocol (step/state_dict) can be checkpointed and resumed.
        if inspect.isclass(obj) and issubclass(obj, LRScheduler):
            found.setdefault(obj.__name__, obj)
        elif inspect.isfunction(obj):  # factories returning a torch LambdaLR, e.g. get_wsd_schedule
            found.setdefault(obj.__name__, obj)
    return found


def _torch_losses() -> dict:
    import torch.nn

    return {
        name: obj for name, obj in vars(torch.nn).items()
        if inspect.isclass(obj) and name.endswith("Loss") and issubclass(obj, torch.nn.Module)
    }


def _pytorch_optimizer_losses() -> dict:
    import pytorch_optimizer
    from pytorch_optimizer.loss import LOSS_FUNCTIONS

    # get_supported_loss_functions() gives lower-case keys; LOSS_FUNCTIONS maps them to the classes.
    found = {}
    for key in pytorch_optimizer.get_supported_loss_functions():
        cls = LOSS_FUNCTIONS.get(key)
        if inspect.isclass(cls):
            found.setdefault(cls.__name__, cls)
    return found


# torchmetrics packages whose metrics are not updated with (output, target): wrappers take other metrics (Python
# objects), aggregations a single value.
_NOT_OUTPUT_TARGET = ("torchmetrics.wrappers", "torchmetrics.aggregation")


def _torchmetrics_metrics() -> dict:
    """The public torchmetrics.Metric classes of torchmetrics and its classification, regression and image
    packages (F1Score, MulticlassF1Score, AUROC, ConfusionMatrix, MeanAbsoluteError, ...)."""
    import torchmetrics
    from torchmetrics import classification, image, regression

    found = {}
    for module in (torchmetrics, classification, regression, image):
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if (inspect.isclass(obj) and issubclass(obj, torchmetrics.Metric) and obj is not torchmetrics.Metric
                    and not name.startswith("_") and not obj.__module__.startswith(_NOT_OUTPUT_TARGET)):
                found.setdefault(name, obj)
    return found


ARCHS = Registry("arch")
DATA_LOADERS = Registry("data_loader")
OPTIMIZERS = Registry("optimizer", [_torch_optimizers, _pytorch_optimizer_optimizers])
LR_SCHEDULERS = Registry("lr_scheduler", [_torch_schedulers, _pytorch_optimizer_schedulers])
LOSSES = Registry("loss", [_torch_losses, _pytorch_optimizer_losses])  # torch.nn wins a shared name (BCELoss)
METRICS = Registry("metric", [_torchmetrics_metrics])
TRAINERS = Registry("trainer")
LOGGERS = Registry("logger")  # where logged rows go (the config's "loggers"): logger/loggers.py registers them

REGISTRIES = {r.kind: r for r in (ARCHS, DATA_LOADERS, OPTIMIZERS, LR_SCHEDULERS, LOSSES, METRICS, TRAINERS,
                                   LOGGERS)}
