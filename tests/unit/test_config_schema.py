"""Tests for utils/config_schema.py: every key has a meaning and a default that passes its own type."""
from __future__ import annotations

from parse_config import SCHEMA
from utils.config_schema import REQUIRED, flat_keys, type_ok


def test_schema_defaults_pass_their_own_types():
    keys = flat_keys(SCHEMA)  # the sections of utils/config_schema.py and the trainer's from TrainerSettings
    for key, (types, default, meaning) in keys.items():
        assert default is REQUIRED or type_ok(default, types), key
        assert meaning and "\n" not in meaning, key
    assert "trainer.epochs" in keys and "trainer.type" in keys and "lr_scheduler.interval" in keys
    assert set(SCHEMA) >= {"name", "n_gpu", "arch", "data_loader", "optimizer", "loss", "metrics", "lr_scheduler",
                           "trainer"}
