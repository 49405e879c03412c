"""Tests for train.py's command line, without training: the --list choices."""
from __future__ import annotations

import train
from utils.registry import REGISTRIES


def test_every_registry_kind_is_a_list_choice_of_train_py():
    choices = next(a.choices for a in train.build_parser([])._actions if a.dest == "list")
    assert sorted(choices) == sorted(REGISTRIES)
