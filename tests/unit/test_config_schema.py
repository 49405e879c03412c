"""Tests for utils/config_schema.py: every key has a meaning and a default that passes its own type."""
from __future__ import annotations

from utils.config_schema import SCHEMA, flat_keys


def test_schema_defaults_pass_their_own_types():
    from utils.config_schema import REQUIRED, type_ok

    for key, (types, default, meaning) in flat_keys().items():
        assert default is REQUIRED or type_ok(default, types), key
        assert meaning and "\n" not in meaning, key
    assert "trainer.epochs" in flat_keys() and "lr_scheduler.interval" in flat_keys()
    assert set(SCHEMA) >= {"name", "n_gpu", "arch", "data_loader", "optimizer", "loss", "metrics", "lr_scheduler",
                           "trainer"}
