"""Tests for config/reference.py: docs/config.md is the page generated from the schema and the settings
declarations, so it cannot drift from them."""
from __future__ import annotations

from config.reference import COMMAND, PAGE, main, reference
from config.schema import SCHEMA, flat_keys


def test_the_committed_config_reference_is_the_generated_one():
    assert PAGE.is_file(), f"docs/config.md is missing; generate it with: {COMMAND}"
    assert PAGE.read_text(encoding="utf-8") == reference(), (f"docs/config.md is out of date; regenerate it with: "
                                                            f"{COMMAND}")


def test_the_reference_has_one_line_for_every_key_and_every_section():
    lines = reference().splitlines()
    for key in [*flat_keys(SCHEMA), "trainer.ema"]:
        assert sum(line.startswith(f"| `{key}` |") for line in lines) == 1, key
    assert "## `trainer.ema`" in lines and "## `lr_scheduler`" in lines
    ema = next(line for line in lines if line.startswith("| `trainer.ema.decay` |"))
    assert ema == ("| `trainer.ema.decay` | a number | from 0 to 1 | `0.999` | the average's share in each update: "
                   "average = decay * average + (1 - decay) * weights |")
    epochs = next(line for line in lines if line.startswith("| `trainer.epochs` |"))
    assert epochs.startswith("| `trainer.epochs` | an integer | at least 1 | required |")


def test_the_module_prints_the_page(capsys):
    main([])
    assert capsys.readouterr().out == reference()
