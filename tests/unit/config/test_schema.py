"""Tests for config/schema.py: every key has a meaning and a default that passes its own type; the rules across a
section's keys sit beside the section."""
from __future__ import annotations

from config.fields import Section
from config.schema import REQUIRED, SCHEMA, arch_rules, flat_keys, lr_scheduler_rules, section_at
from utils.json_types import type_ok


def test_schema_defaults_pass_their_own_types():
    keys = flat_keys(SCHEMA)  # the sections of config/schema.py and the trainer's from TrainerSettings
    for key, (types, default, meaning) in keys.items():
        assert default is REQUIRED or type_ok(default, types), key
        assert meaning and "\n" not in meaning, key
    assert "trainer.epochs" in keys and "trainer.type" in keys and "lr_scheduler.interval" in keys
    assert {"trainer.ema.decay", "trainer.ema.warmup_steps", "trainer.ema.every"} <= set(keys)
    assert set(SCHEMA) >= {"name", "n_gpu", "arch", "data_loader", "optimizer", "loss", "metrics", "lr_scheduler",
                           "trainer"}


def test_every_section_is_a_section_with_a_meaning_and_the_optional_ones_are_marked():
    sections = {key: spec for key, spec in SCHEMA.items() if isinstance(spec, dict)}
    assert all(isinstance(spec, Section) and spec.meaning for spec in sections.values())
    assert {key for key, spec in sections.items() if spec.optional} == {"lr_scheduler"}
    assert section_at(["trainer", "ema"]).optional and section_at(["trainer", "epochs"]) is None
    assert section_at(["metrics", "0"]) is None and section_at(["nope"]) is None


def test_section_rules_sit_beside_their_sections():
    assert SCHEMA["lr_scheduler"].rules is lr_scheduler_rules and SCHEMA["arch"].rules is arch_rules
    assert lr_scheduler_rules({"interval": "batch"}) == ["lr_scheduler.interval must be 'epoch' or 'step', got 'batch'"]
    assert lr_scheduler_rules({"interval": "step"}) == lr_scheduler_rules({"interval": 3}) == []  # 3: the schema's
    assert arch_rules({"weights_key_map": {"a.": 1, "b.": "c."}}) == [
        "arch.weights_key_map: 'a.' maps to 1; both must be strings (name prefixes)"]
