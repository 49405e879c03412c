"""Registers the trainers by name: every public BaseTrainer subclass defined in a module of this package
that is imported here (trainer/trainer.py; import your own modules below to add theirs)."""
import inspect
import sys

from base import BaseTrainer
from trainer import trainer  # noqa: F401
from trainer.trainer import Trainer, evaluate
from utils.registry import TRAINERS

__all__ = ["Trainer", "evaluate"]


def _is_trainer(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseTrainer)


for _name, _module in list(sys.modules.items()):
    if _name.startswith(f"{__name__}.") and _module is not None:
        TRAINERS.register_module(_module, _is_trainer)
