"""The config machinery: read a config file, merge it, apply overrides, fill the defaults, validate everything at
once, and build what it names. One module per concern:

    files.py       reading a config file: JSON, or YAML (1.2), with the line of each value
    merge.py       merge_layer (_delete_), merge_changes (-c files onto a checkpoint's config), with_defaults
    compose.py     compose: _base_ files and several -c files merged in order, each value's source kept
    sources.py     where each value came from: problems located, --print-config, config_sources.json
    overrides.py   key.path=value overrides, typed and strict
    fields.py      the declaration machinery: setting(), Section, schema_rows, range_problems, from_section
    settings.py    the settings classes (TrainerSettings, EMASettings, CheckpointEvery)
    schema.py      every key: the sections no settings class declares, plus those that one does (SCHEMA)
    arguments.py   config args checked against the signature they are passed to
    validation.py  validate: every problem at once
    parser.py      ConfigParser
    reference.py   docs/config.md, generated from the schema

parse_config.py at the repository root is its face: importing it registers the user's classes too.
"""
from config.arguments import check_args
from config.compose import compose, read_config
from config.fields import REQUIRED, Section, from_section, range_problems, schema_rows, setting
from config.files import read_config_file, read_json
from config.merge import deep_merge, merge_changes, merge_layer, with_defaults
from config.overrides import apply_override, coerce, differing_keys, parse_overrides, split_path
from config.parser import ConfigParser
from config.schema import SCHEMA, SETTINGS, flat_keys
from config.settings import CheckpointEvery, EMASettings, TrainerSettings
from config.validation import metric_name, validate

__all__ = ["REQUIRED", "SCHEMA", "SETTINGS", "CheckpointEvery", "ConfigParser", "EMASettings", "Section",
           "TrainerSettings", "apply_override", "check_args", "coerce", "compose", "deep_merge", "differing_keys",
           "flat_keys", "from_section", "merge_changes", "merge_layer", "metric_name", "parse_overrides",
           "range_problems", "read_config", "read_config_file", "read_json", "schema_rows", "setting", "split_path",
           "validate", "with_defaults"]
