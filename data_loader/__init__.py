"""Registers the public classes of data_loaders.py by name."""
import inspect

from data_loader import data_loaders
from utils.registry import DATA_LOADERS

DATA_LOADERS.register_module(data_loaders, inspect.isclass)
