"""The data of a run: the training and validation loaders, or the test split, each rank's share under torchrun."""
from __future__ import annotations

import inspect
import os
from typing import Any

from parse_config import ConfigParser
from utils.distributed import SINGLE, Dist
from utils.errors import UserError
from utils.registry import DATA_LOADERS


def build_data(config: ConfigParser, training: bool = True, dist: Dist = SINGLE) -> tuple[Any, Any]:
    """(training loader, validation loader or None), or with training=False (test.py) (test-split loader, None)."""
    if training:
        data_loader = config.init_obj("data_loader", DATA_LOADERS)
        record_classes(config, data_loader)
        loaders = (data_loader, data_loader.split_validation())
        overfit = config["trainer"]["overfit_batches"]
        if overfit:
            if not hasattr(data_loader, "first_batches"):
                raise UserError(f"trainer.overfit_batches: {type(data_loader).__name__} cannot serve its first batches "
                                f"alone; derive it from base.BaseDataLoader, or set trainer.overfit_batches to 0")
            loaders = data_loader.first_batches(overfit)
    else:
        loaders = (build_test_split(config), None)
    if dist.enabled:
        shard(loaders, dist)
    return loaders


TEST_PATH_KEYS = ("_dir", "_file", "_path", "_root", "_folder")  # data_loader.args test_<...><one of these>: a path


def test_split_problems(args: dict) -> list[str]:
    """One line for each file or folder of the test split named in data_loader.args (test_dir, test_file,
    test_annotations_file, ...: keys test_*_dir/_file/_path/_root/_folder) that does not exist. A training run
    checks them at its start: test.py reads them only after the run. No test split at all is fine."""
    return [f"data_loader.args.{key}: no file or folder {value} (relative paths are from the working directory); "
            f"test.py evaluates the run on it: fix the path, or leave {key} out (or null) for a run without a test "
            f"split"
            for key, value in args.items()
            if key.startswith("test_") and key.endswith(TEST_PATH_KEYS) and isinstance(value, str) and value
            and not os.path.exists(value)]


def build_test_split(config: ConfigParser, **kwargs: Any) -> Any:
    """The data loader's test split, whole and in a fixed order (kwargs: more arguments, e.g. download=False)."""
    loader_class = DATA_LOADERS.get(config["data_loader"]["type"], "data_loader.type")
    return config.init_obj("data_loader", DATA_LOADERS, **whole_split_args(loader_class), **kwargs)


def whole_split_args(loader_class: type) -> dict:
    """Arguments that make a data loader serve its whole test split in a fixed order."""
    params = inspect.signature(loader_class).parameters
    if "training" not in params:
        raise UserError(f"data_loader.type {loader_class.__name__} has no 'training' argument, so test.py cannot "
                        f"ask it for the test split; add training=True to its __init__ (False = test split)")
    wanted = {"training": False, "shuffle": False, "validation_split": 0.0}
    return {k: v for k, v in wanted.items() if k in params}


def record_classes(config: ConfigParser, data_loader: Any) -> None:
    """Keep the loader's class names (label i = classes[i]) in the run's config when it takes them back as
    data_loader.args.classes, so that test.py and resume map labels exactly as this run does."""
    classes = getattr(data_loader, "classes", None)
    if classes is not None and "classes" in inspect.signature(type(data_loader)).parameters:
        config["data_loader"]["args"]["classes"] = list(classes)


def shard(loaders: tuple, dist: Dist) -> None:
    """Give each rank its share of every batch, for training and validation."""
    for loader in loaders:
        if loader is None:
            continue
        if not hasattr(loader, "shard"):
            raise UserError(f"data_loader.type: {type(loader).__name__} cannot be split between torchrun's "
                            f"processes; derive it from base.BaseDataLoader")
        loader.shard(dist.rank, dist.world_size)
