"""Settings declared once (utils/settings.py): the trainer section's schema rows, defaults and ranges all come
from TrainerSettings, and the CNN's block options from BlockOptions."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from base.settings import TrainerSettings
from parse_config import SCHEMA, validate, with_defaults
from utils.config_schema import NONE, REQUIRED
from utils.settings import from_section, range_problems, schema_rows, setting


@dataclass(frozen=True, kw_only=True)
class Example:
    count: int = setting(meaning="how many", minimum=1)
    ratio: float | None = setting(None, "a share", positive=True)
    mode: str = setting("a", "the mode", choices=("a", "b"))
    level: int = setting(0, "a level", choices=(0, 1, 2))
    words: str = setting("off", "off or two words", check=lambda v: v == "off" or len(v.split()) == 2,
                         rule="'off' or two words")
    table: dict = setting({"k": 1}, "a table")


def test_schema_rows_carry_type_default_and_meaning_and_mark_the_required():
    rows = schema_rows(Example, REQUIRED)
    assert rows["count"] == ((int,), REQUIRED, "how many")
    assert rows["ratio"] == ((float, NONE), None, "a share")
    assert rows["table"] == ((dict,), {"k": 1}, "a table")
    assert Example(count=1).table is not Example(count=1).table  # a mutable default is fresh each time


def test_range_problems_name_the_key_the_range_and_the_value():
    values = {"count": 0, "ratio": 0.0, "mode": "c", "level": 3, "words": "x", "table": {}}
    assert range_problems(Example, values, "sec.") == [
        "sec.count must be at least 1, got 0",
        "sec.ratio must be positive or null, got 0.0",
        "sec.mode must be 'a' or 'b', got 'c'",
        "sec.level must be 0, 1 or 2, got 3",
        "sec.words must be 'off' or two words, got 'x'",
    ]
    assert range_problems(Example, {"count": 2, "ratio": None, "words": "min loss"}, "sec.") == []
    assert range_problems(Example, {"count": "many", "level": True}, "sec.") == []  # wrong types: the schema's


def test_from_section_builds_the_settings_and_ignores_keys_it_does_not_declare():
    assert from_section(Example, {"count": 3, "other": 1}) == Example(count=3)


def test_the_trainer_section_of_the_schema_is_trainer_settings():
    assert SCHEMA["trainer"] == schema_rows(TrainerSettings, REQUIRED)
    assert all(meaning for _, _, meaning in SCHEMA["trainer"].values())
    assert SCHEMA["trainer"]["epochs"][1] is REQUIRED and SCHEMA["trainer"]["type"][1] == "Trainer"


def test_a_config_with_only_epochs_gets_every_trainer_default_from_the_settings():
    filled = with_defaults({"trainer": {"epochs": 4}})["trainer"]
    assert filled == dataclasses.asdict(TrainerSettings(epochs=4))


@pytest.mark.parametrize("key, value, problem", [
    ("epochs", 0, "trainer.epochs must be at least 1, got 0"),
    ("save_period", 0, "trainer.save_period must be at least 1, got 0"),
    ("len_epoch", 0, "trainer.len_epoch must be at least 1 or null, got 0"),
    ("keep_last", -1, "trainer.keep_last must be at least 1 or null, got -1"),
    ("accumulate_steps", 0, "trainer.accumulate_steps must be at least 1, got 0"),
    ("dist_timeout", 0, "trainer.dist_timeout must be at least 1, got 0"),
    ("clip_grad_norm", -1.0, "trainer.clip_grad_norm must be positive or null, got -1.0"),
    ("amp", "fp8", "trainer.amp must be 'bf16', 'fp16' or null, got 'fp8'"),
    ("nonfinite_loss", "ignore", "trainer.nonfinite_loss must be 'stop' or 'skip', got 'ignore'"),
    ("monitor", "max", "trainer.monitor must be 'min <key>', 'max <key>' or 'off', got 'max'"),
    ("early_stop", -2, "trainer.early_stop must be 0 (off) or a positive patience, got -2"),
    ("freeze", ["features.*", 3], "trainer.freeze must be a list of glob patterns (strings), got ['features.*', 3]"),
    ("unfreeze_at_epoch", 0, "trainer.unfreeze_at_epoch must be at least 1 or null, got 0"),
])
def test_every_ranged_trainer_setting_is_checked(tiny, key, value, problem):
    tiny["trainer"][key] = value
    assert validate(with_defaults(tiny)) == [problem]


@pytest.fixture
def tiny(tmp_path):
    from conftest import tiny_config

    return tiny_config(tmp_path)
