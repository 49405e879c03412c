"""Settings declared once (config/fields.py, config/settings.py): the trainer section's schema rows, defaults,
ranges and rules across keys all come from TrainerSettings, and trainer.ema's from EMASettings, nested in it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from config.fields import REQUIRED, Section, from_section, range_problems, schema_rows, setting
from config.settings import CheckpointEvery, EMASettings, FSDP2Settings, TrainerSettings, strategy_problems
from parse_config import SCHEMA, validate, with_defaults
from utils.json_types import NONE


@dataclass(frozen=True, kw_only=True)
class Inner:
    """An inner section."""

    size: int = setting(2, "a size", minimum=1)
    share: float = setting(0.5, "a share", minimum=0, maximum=1)


@dataclass(frozen=True, kw_only=True)
class Example:
    """An example section."""

    count: int = setting(meaning="how many", minimum=1)
    ratio: float | None = setting(None, "a share", positive=True)
    mode: str = setting("a", "the mode", choices=("a", "b"))
    level: int = setting(0, "a level", choices=(0, 1, 2))
    words: str = setting("off", "off or two words", check=lambda v: v == "off" or len(v.split()) == 2,
                         rule="'off' or two words")
    table: dict = setting({"k": 1}, "a table")
    inner: Inner | None = setting(None, "an inner section; null = off")


def test_schema_rows_carry_type_default_and_meaning_and_mark_the_required():
    rows = schema_rows(Example)
    assert rows["count"] == ((int,), REQUIRED, "how many")
    assert rows["ratio"] == ((float, NONE), None, "a share")
    assert rows["table"] == ((dict,), {"k": 1}, "a table")
    assert Example(count=1).table is not Example(count=1).table  # a mutable default is fresh each time
    assert rows.meaning == "An example section." and rows.ranges["count"] == "at least 1"


def test_a_nested_settings_field_is_an_optional_section_of_its_own_rows():
    inner = schema_rows(Example)["inner"]
    assert isinstance(inner, Section) and inner == schema_rows(Inner)
    assert inner.optional and inner.meaning == "an inner section; null = off"
    assert inner["share"] == ((float,), 0.5, "a share") and inner.ranges["share"] == "from 0 to 1"


def test_range_problems_name_the_key_the_range_and_the_value():
    values = {"count": 0, "ratio": 0.0, "mode": "c", "level": 3, "words": "x", "table": {},
              "inner": {"size": 0, "share": 1.5}}
    assert range_problems(Example, values, "sec.") == [
        "sec.count must be at least 1, got 0",
        "sec.ratio must be positive or null, got 0.0",
        "sec.mode must be 'a' or 'b', got 'c'",
        "sec.level must be 0, 1 or 2, got 3",
        "sec.words must be 'off' or two words, got 'x'",
        "sec.inner.size must be at least 1, got 0",
        "sec.inner.share must be from 0 to 1, got 1.5",
    ]
    assert range_problems(Example, {"count": 2, "ratio": None, "words": "min loss", "inner": None}, "sec.") == []
    assert range_problems(Example, {"count": "many", "level": True, "inner": 3}, "sec.") == []  # the schema's


def test_from_section_builds_the_settings_and_ignores_keys_it_does_not_declare():
    assert from_section(Example, {"count": 3, "other": 1}) == Example(count=3)
    built = from_section(Example, {"count": 3, "inner": {"size": 4}})
    assert built.inner == Inner(size=4) and built.inner.share == 0.5


def test_the_trainer_section_of_the_schema_is_trainer_settings():
    assert SCHEMA["trainer"] == schema_rows(TrainerSettings)
    assert all(meaning for _, _, meaning in (v for v in SCHEMA["trainer"].values() if isinstance(v, tuple)))
    assert SCHEMA["trainer"]["epochs"][1] is REQUIRED and SCHEMA["trainer"]["type"][1] == "Trainer"
    assert SCHEMA["trainer"]["ema"] == schema_rows(EMASettings) and SCHEMA["trainer"]["ema"].optional
    assert SCHEMA["trainer"].rules == TrainerSettings.rules


def test_a_config_with_only_epochs_gets_every_trainer_default_from_the_settings():
    filled = with_defaults({"trainer": {"epochs": 4}})["trainer"]
    assert filled == dataclasses.asdict(TrainerSettings(epochs=4))
    assert filled["ema"] is None  # off


@pytest.mark.parametrize("given, filled", [
    (None, None),
    ({}, {"decay": 0.999, "warmup_steps": 0, "every": 1}),
    ({"decay": 0.99}, {"decay": 0.99, "warmup_steps": 0, "every": 1}),
    ({"every": 4, "warmup_steps": 100}, {"decay": 0.999, "warmup_steps": 100, "every": 4}),
])
def test_an_ema_section_gets_the_defaults_it_does_not_name(given, filled):
    assert with_defaults({"trainer": {"epochs": 1, "ema": given}})["trainer"]["ema"] == filled
    settings = from_section(TrainerSettings, with_defaults({"trainer": {"epochs": 1, "ema": given}})["trainer"])
    assert settings.ema == (None if filled is None else EMASettings(**filled))


def test_the_ema_defaults_are_declared_once():
    assert dataclasses.asdict(EMASettings()) == {"decay": 0.999, "warmup_steps": 0, "every": 1}
    assert {k: v[1] for k, v in SCHEMA["trainer"]["ema"].items()} == dataclasses.asdict(EMASettings())


@pytest.mark.parametrize("ema, problems", [
    ({"decay": 1.5}, ["trainer.ema.decay must be from 0 to 1, got 1.5"]),
    ({"decay": -0.1, "every": 0, "warmup_steps": -1}, ["trainer.ema.decay must be from 0 to 1, got -0.1",
                                                       "trainer.ema.warmup_steps must be at least 0, got -1",
                                                       "trainer.ema.every must be at least 1, got 0"]),
    ({"decay": "high"}, ["config key 'trainer.ema.decay' must be a number, got 'high'"]),
    ({"every": 2.5}, ["config key 'trainer.ema.every' must be an integer, got 2.5"]),
    ({"decy": 0.9}, ["config key 'trainer.ema.decy' is not known. Did you mean 'trainer.ema.decay'?"]),
    (0.999, ["config key 'trainer.ema' must be an object {...}"]),
    ({"decay": 1, "warmup_steps": 0, "every": 1}, []),
])
def test_ema_mistakes_name_their_key(tiny, ema, problems):
    tiny["trainer"]["ema"] = ema
    assert validate(with_defaults(tiny)) == problems


@pytest.mark.parametrize("key, value, problem", [
    ("epochs", 0, "trainer.epochs must be at least 1, got 0"),
    ("save_period", 0, "trainer.save_period must be at least 1 or null, got 0"),
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


def test_the_trainer_rules_across_keys_are_declared_beside_its_fields():
    assert TrainerSettings.rules({"unfreeze_at_epoch": 2, "freeze": [], "save_top_k": 1, "monitor": "off"}) == [
        "trainer.unfreeze_at_epoch is set but trainer.freeze names nothing to freeze; add patterns to trainer.freeze "
        "or set trainer.unfreeze_at_epoch to null",
        "trainer.save_top_k is set but trainer.monitor is 'off': there is no value to rank checkpoints by; set "
        "trainer.monitor (e.g. 'min val_loss') or set trainer.save_top_k to null"]
    assert TrainerSettings.rules({"unfreeze_at_epoch": 2, "freeze": ["a.*"], "save_top_k": 1, "monitor": "min x"}) == []
    assert TrainerSettings.rules({"save_top_k": "2", "monitor": "off", "unfreeze_at_epoch": None}) == []  # mistyped


@pytest.mark.parametrize("max_time, seconds", [
    (None, None), (90, 90.0), (0.5, 0.5), (0, None), ("00:01:30", 90.0), ("1:00:00:00", 86400.0), ("soon", None),
])
def test_max_time_in_seconds_is_a_property_of_the_settings(max_time, seconds):
    assert TrainerSettings(epochs=1, max_time=max_time).max_time_seconds == seconds


@pytest.mark.parametrize("trainer, problems", [
    ({"checkpoint_every": {"steps": 500}}, []),
    ({"checkpoint_every": {"minutes": 0.5}}, []),
    ({"checkpoint_every": {}}, ['trainer.checkpoint_every takes one of steps and minutes, e.g. {"steps": 500} or '
                                '{"minutes": 30}; it has neither']),
    ({"checkpoint_every": {"steps": 5, "minutes": 1}}, ["trainer.checkpoint_every takes one of steps and minutes, "
                                                        'e.g. {"steps": 500} or {"minutes": 30}; it has steps and '
                                                        "minutes"]),
    ({"checkpoint_every": {"minutes": 0}}, ["trainer.checkpoint_every.minutes must be positive or null, got 0"]),
    ({"checkpoint_every": {"steps": 0}}, ["trainer.checkpoint_every.steps must be at least 1 or null, got 0"]),
    ({"checkpoint_every": {"step": 5}}, ["config key 'trainer.checkpoint_every.step' is not known. Did you mean "
                                         "'trainer.checkpoint_every.steps'?",
                                         'trainer.checkpoint_every takes one of steps and minutes, e.g. {"steps": '
                                         '500} or {"minutes": 30}; it has neither']),
    ({"checkpoint_every": {"steps": 5}, "save_every_steps": 5}, [
        "trainer.save_every_steps and trainer.checkpoint_every both say when to checkpoint; keep one "
        '(trainer.save_every_steps=null, and checkpoint_every {"steps": N})']),
])
def test_checkpoint_every_takes_steps_or_minutes_and_not_beside_save_every_steps(tiny, trainer, problems):
    tiny["trainer"].update(trainer)
    assert validate(with_defaults(tiny)) == problems


@pytest.mark.parametrize("trainer, every", [
    ({}, (None, None)),
    ({"save_every_steps": 7}, (7, None)),  # the older key: checkpoint_every.steps
    ({"checkpoint_every": CheckpointEvery(steps=9)}, (9, None)),
    ({"checkpoint_every": CheckpointEvery(minutes=1.5)}, (None, 90.0)),
])
def test_step_checkpoints_say_every_how_many_steps_or_seconds(trainer, every):
    assert TrainerSettings(epochs=1, **trainer).step_checkpoints == every


@pytest.fixture
def tiny(tmp_path):
    from conftest import tiny_config

    return tiny_config(tmp_path)


@pytest.mark.parametrize("value, problems", [
    ("ddp", []), ("fsdp2", []), ({"type": "fsdp2", "args": {"shard": ["layer*"], "param_dtype": "bf16"}}, []),
    ("fsdp", ['trainer.strategy must be "ddp", or {"type": "fsdp2", "args": {...}} with args among shard, '
              'reshard_after_forward, param_dtype, reduce_dtype, cpu_offload; got \'fsdp\'']),
    ({"type": "fsdp2", "args": {"shards": [], "cpu_offload": "yes", "reduce_dtype": "bf17"}},
     ["trainer.strategy.args.shards is not an FSDP2 setting; it takes shard, reshard_after_forward, param_dtype, "
      "reduce_dtype, cpu_offload", "trainer.strategy.args.cpu_offload must be true or false, got 'yes'",
      "trainer.strategy.args.reduce_dtype must be 'bf16', 'fp16', 'fp32' or null, got 'bf17'"]),
    ({"type": "ddp", "args": {"x": 1}}, ["trainer.strategy ddp takes no args; got x"]),
])
def test_strategy_problems_name_the_key_and_what_it_takes(value, problems):
    assert strategy_problems(value) == problems


def test_the_fsdp2_settings_are_read_from_either_spelling():
    assert TrainerSettings(epochs=1).fsdp2 is None
    assert TrainerSettings(epochs=1, strategy="fsdp2").fsdp2 == FSDP2Settings()
    assert TrainerSettings(epochs=1, strategy={"type": "fsdp2", "args": {"shard": ["a"]}}).fsdp2.shard == ["a"]
