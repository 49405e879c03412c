"""The config machinery: read a config file, merge it, apply overrides, fill the defaults, validate everything at
once, and build what it names. One module per concern:

    files.py       reading a JSON config file
    merge.py       deep_merge, merge_changes (a -c file onto a checkpoint's config), with_defaults
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
from config.fields import REQUIRED, Section, from_section, range_problems, schema_rows, setting
from config.files import read_json
from config.merge import deep_merge, merge_changes, with_defaults
from config.overrides import apply_override, coerce, differing_keys, parse_overrides, split_path
from config.parser import ConfigParser
from config.schema import SCHEMA, SETTINGS, flat_keys
from config.settings import CheckpointEvery, EMASettings, TrainerSettings
from config.validation import metric_name, validate

__all__ = ["REQUIRED", "SCHEMA", "SETTINGS", "CheckpointEvery", "ConfigParser", "EMASettings", "Section",
           "TrainerSettings", "apply_override", "check_args", "coerce", "deep_merge", "differing_keys", "flat_keys",
           "from_section", "merge_changes", "metric_name", "parse_overrides", "range_problems", "read_json",
           "schema_rows", "setting", "split_path", "validate", "with_defaults"]
