"""The config machinery's face, where the original template had it: `from parse_config import ConfigParser`.

The machinery is the package config/ (reading, merging, overrides, the schema, validation, ConfigParser).
Importing this module also imports the model, data_loader and trainer packages, whose __init__ registers the
user's classes by name, so that a config can name them.
"""
import data_loader  # noqa: F401  (registers the data loaders)
import model  # noqa: F401  (registers models, losses and metrics)
import trainer  # noqa: F401  (registers the trainers)
from config import (SCHEMA, ConfigParser, EMASettings, TrainerSettings, apply_override, coerce, deep_merge,
                    differing_keys, merge_changes, parse_overrides, read_config, read_json, split_path, validate,
                    with_defaults)

__all__ = ["SCHEMA", "ConfigParser", "EMASettings", "TrainerSettings", "apply_override", "coerce", "deep_merge",
           "differing_keys", "merge_changes", "parse_overrides", "read_config", "read_json", "split_path", "validate",
           "with_defaults"]
