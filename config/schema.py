"""Every config key: its type, default and a one-line meaning, and the rules across a section's keys.

The sections no settings class declares are written here; the trainer section comes from TrainerSettings
(config/settings.py). docs/config.md is generated from SCHEMA (python -m config.reference), and a test keeps
it equal. A key marked REQUIRED has no default. `args` objects are checked against the signature of the class
or function they are passed to (config/arguments.py), not here.
"""
from __future__ import annotations

from config.fields import REQUIRED, Section, schema_rows
from config.settings import TrainerSettings
from utils.json_types import NONE

__all__ = ["ARG_MINIMUMS", "REQUIRED", "SCHEMA", "SECTIONS", "SETTINGS", "Section", "flat_keys", "section_at"]


def arch_rules(arch: dict) -> list[str]:
    """arch.weights_key_map maps name prefixes to name prefixes."""
    key_map = arch.get("weights_key_map")
    if not isinstance(key_map, dict):
        return []  # mistyped: the schema check reports it
    return [f"arch.weights_key_map: {old!r} maps to {new!r}; both must be strings (name prefixes)"
            for old, new in key_map.items() if not isinstance(new, str)]


# The least value of arguments the template knows by name, whichever class of the section takes them.
ARG_MINIMUMS = {"data_loader": {"batch_size": 1, "num_workers": 0}, "optimizer": {"lr": 0}}


def _least(section: str) -> str:
    """ARG_MINIMUMS of a section in words: 'lr at least 0'."""
    return ", ".join(f"{key} at least {least}" for key, least in ARG_MINIMUMS[section].items())


INTERVALS = "'epoch' or 'step'"  # lr_scheduler.interval's values, in words


def lr_scheduler_rules(scheduler: dict) -> list[str]:
    """lr_scheduler.interval is 'epoch' or 'step'."""
    interval = scheduler.get("interval")
    if isinstance(interval, str) and interval not in ("epoch", "step"):
        return [f"lr_scheduler.interval must be {INTERVALS}, got {interval!r}"]
    return []


# key: (accepted types, default, meaning). A Section is a nested section.
SECTIONS = {
    "name": (str, REQUIRED, "run name: runs go to <save_dir>/models/<name>/ and <save_dir>/log/<name>/"),
    "n_gpu": (int, 1, "GPUs to use outside torchrun; 0 = CPU, more than one wraps the model in DataParallel"),
    "seed": ((int, NONE), 123, "seeds Python, NumPy and torch; null draws one, recorded in the run's config.json"),
    "arch": Section({
        "type": (str, REQUIRED, "model class: any nn.Module defined in model/model.py (or registered), else a "
                                "torchvision classification model by name (resnet18, efficientnet_b0, vit_b_16, ...)"),
        "args": (dict, {}, "keyword arguments of the model class"),
        "weights": ((str, NONE), None, "initial weights of a new run: a .pth/.pt/.safetensors file, a checkpoint "
                                       "or run directory, or a torchvision weights name (DEFAULT, IMAGENET1K_V1); "
                                       "null = none"),
        "weights_strict": (bool, False, "make any tensor of arch.weights that does not fit the model an error "
                                        "(default: skip it and report it)"),
        "weights_key_map": (dict, {}, "renames of name prefixes applied to arch.weights before loading, "
                                      "e.g. {\"backbone.\": \"features.\"}"),
    }, meaning="The model", rules=arch_rules),
    "data_loader": Section({
        "type": (str, REQUIRED, "data loader class defined in data_loader/data_loaders.py"),
        "args": (dict, {}, "its keyword arguments (data_dir, batch_size, shuffle, validation_split, num_workers, ...)"),
    }, meaning="The data", ranges={"args": _least("data_loader")}),
    "optimizer": Section({
        "type": (str, REQUIRED, "any torch.optim optimizer, else any pytorch_optimizer optimizer, by class name"),
        "args": (dict, {}, "its keyword arguments (lr, weight_decay, ...)"),
        "no_decay_bias_norm": (bool, False, "no weight decay on biases, norm weights and other 1-D parameters "
                                            "(a second parameter group)"),
        "param_groups": (list, [], "parameter groups with their own options: a list of {\"params\": a glob pattern of "
                                   "parameter names or a list of them, \"lr\", \"weight_decay\", ..., \"name\"}; the "
                                   "parameters none names form the first, default group"),
    }, meaning="The optimizer", ranges={"args": _least("optimizer")}),
    "loss": ((str, dict), REQUIRED, "a function in model/loss.py or a torch.nn loss class; a name or {type, args}"),
    "metrics": (list, [], "functions in model/metric.py, then torchmetrics metric classes (exact over the "
                          "epoch); each a name or {type, args, name}"),
    "lr_scheduler": Section({
        "type": (str, REQUIRED, "any torch.optim.lr_scheduler class, else a pytorch_optimizer scheduler; "
                                "omit the section for none"),
        "args": (dict, {}, "its keyword arguments (step_size, gamma, ...)"),
        "interval": (str, "epoch", "'epoch' steps the scheduler after each epoch, 'step' after each optimizer step"),
    }, optional=True, meaning="The learning-rate scheduler", rules=lr_scheduler_rules,
        ranges={"interval": INTERVALS}),
    "loggers": (list, ["tensorboard"], "where each logged row goes besides the console and metrics.jsonl: "
                                       "\"tensorboard\", \"csv\" (metrics.csv), \"mlflow\" or your own, each a "
                                       "name or {type, args}"),
    "extra": (dict, {}, "free-form settings for your own code; never validated"),
}

# Sections whose keys a settings class declares (type, default, range and meaning in one place).
SETTINGS = {"trainer": TrainerSettings}
SCHEMA: dict = {**SECTIONS, **{section: schema_rows(cls) for section, cls in SETTINGS.items()}}


def flat_keys(schema: dict, prefix: str = "") -> dict[str, tuple]:
    """'trainer.epochs' -> (types, default, meaning) for every key, sections flattened."""
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out.update(flat_keys(spec, f"{prefix}{key}."))
        else:
            out[prefix + key] = spec
    return out


def section_at(keys: list[str], schema: dict = SCHEMA) -> Section | None:
    """The Section at a config path (['trainer', 'ema']), or None where the schema has none."""
    node = schema
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, Section) else None
