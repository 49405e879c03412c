"""Tests for utils/json_types.py: which JSON values a dataclass field or a type admits, and a signature made from a
dataclass's fields (the model zoo's CNN takes its block options that way)."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

from model.cnn import CNN, BlockOptions
from utils.json_types import NONE, describe, json_types, signature_with, type_ok


@dataclass(frozen=True, kw_only=True)
class Example:
    count: int
    ratio: float | None = None
    mode: str = "a"
    level: int = 0
    words: str = "off"
    table: dict = field(default_factory=lambda: {"k": 1})
    names: list[str] = field(default_factory=list)


def test_types_come_from_the_annotations():
    assert json_types(Example) == {"count": (int,), "ratio": (float, NONE), "mode": (str,), "level": (int,),
                                   "words": (str,), "table": (dict,), "names": (list,)}


def test_type_ok_keeps_bools_out_of_integers_and_lets_integers_stand_for_numbers():
    assert type_ok(3, float) and type_ok(3, (int, NONE)) and type_ok(None, (int, NONE))
    assert not type_ok(True, int) and type_ok(True, bool) and not type_ok(1, bool) and not type_ok(2.5, int)
    assert describe((int, NONE)) == "an integer or null" and describe(dict) == "an object"


def test_the_cnn_takes_each_block_option_as_a_named_argument_declared_once():
    params = inspect.signature(CNN).parameters
    for f in dataclasses.fields(BlockOptions):
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default == f.default and params[f.name].annotation == f.type
    model = CNN(1, "r8", num_classes=2, scale="scalar", scale_init=0.5, norm_after="instance")
    block = model.blocks[0]
    assert block.scale.item() == 0.5 and type(block.after[0]).__name__ == "InstanceNorm2d"


def test_signature_with_replaces_the_keyword_catch_all():
    def build(a: int, b: str = "x", **options):
        return a

    sig = signature_with(build, Example)
    assert list(sig.parameters)[:2] == ["a", "b"] and "options" not in sig.parameters
    assert sig.parameters["count"].default is inspect.Parameter.empty  # required
    assert sig.parameters["mode"].default == "a"
