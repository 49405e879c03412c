"""Parameters chosen by glob patterns (utils/params.py): matching, the nearest names for a pattern that matches
nothing, and the optimizer's parameter groups of optimizer.param_groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import run
from utils.errors import UserError
from utils.params import matching, parameter_groups, unmatched

NAMES = ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias", "head.2.weight", "head.2.bias"]


def model() -> nn.Module:
    """features.0 conv, features.1 batch norm, head.2 linear: the DigitsModel's naming."""
    return nn.ModuleDict({"features": nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
                          "head": nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(8, 3))})


def test_patterns_match_as_fnmatch_does_case_sensitively_in_the_models_order():
    assert matching(NAMES, ["head.*", "features.?.bias"]) == ["features.0.bias", "features.1.bias", "head.2.weight",
                                                             "head.2.bias"]
    assert matching(NAMES, ["*.weight"]) == NAMES[::2]
    assert matching(NAMES, ["Head.*"]) == []


@pytest.mark.parametrize("pattern, hint", [
    ("feature.*", " Did you mean 'features.*'"),
    ("head.2.weigth", " Did you mean 'head.2.weight'"),
    ("layer1.*", " Its parameters are under 'features.*', 'head.*'"),
])
def test_a_pattern_that_matches_nothing_names_the_key_and_the_nearest_names(pattern, hint):
    [problem] = unmatched(NAMES, ["head.*", pattern], "trainer.freeze", "DigitsModel")
    assert problem.startswith(f"trainer.freeze: {pattern!r} matches no parameter of DigitsModel.{hint}")


def groups_of(entries, no_decay=False, net=None):
    net = net or model()
    groups = parameter_groups(list(net.named_parameters()), entries, no_decay, "DigitsModel")
    names = {id(p): n for n, p in net.named_parameters()}
    return [({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]]) for g in groups]


def test_entries_get_their_own_named_groups_after_the_default_group():
    groups = groups_of([{"params": "head.*", "lr": 0.01, "name": "head"}, {"params": ["features.1.*"], "lr": 0.1}])
    assert groups == [({"name": "default"}, ["features.0.weight", "features.0.bias"]),
                      ({"lr": 0.01, "name": "head"}, ["head.2.weight", "head.2.bias"]),
                      ({"lr": 0.1, "name": "group1"}, ["features.1.weight", "features.1.bias"])]


def test_with_no_decay_bias_norm_each_group_splits_into_halves_and_empty_ones_are_left_out():
    groups = groups_of([{"params": "head.*", "lr": 0.01, "name": "head"},
                        {"params": "features.1.*", "name": "norm"}], no_decay=True)
    assert groups == [({"name": "default"}, ["features.0.weight"]),
                      ({"name": "default", "weight_decay": 0.0}, ["features.0.bias"]),
                      ({"lr": 0.01, "name": "head"}, ["head.2.weight"]),
                      ({"lr": 0.01, "name": "head", "weight_decay": 0.0}, ["head.2.bias"]),
                      ({"name": "norm", "weight_decay": 0.0}, ["features.1.weight", "features.1.bias"])]


def test_parameters_that_require_no_gradient_stay_out_and_an_empty_default_group_is_left_out():
    net = model()
    net["head"][2].bias.requires_grad_(False)
    groups = groups_of([{"params": "*", "name": "all"}], net=net)
    assert groups == [({"name": "all"}, [n for n in NAMES if n != "head.2.bias"])]


def test_a_pattern_matching_nothing_and_a_parameter_in_two_groups_are_all_reported_at_once():
    with pytest.raises(UserError) as error:
        groups_of([{"params": "head.*"}, {"params": ["head.2.bias", "feature.*"]}, {"params": "*.bias"}])
    assert error.value.problems == [
        "optimizer.param_groups.1.params: 'feature.*' matches no parameter of DigitsModel. Did you mean "
        "'features.*' or 'features.1.*' or 'features.0.*'?",
        "optimizer.param_groups.1.params: 1 parameter(s) already in optimizer.param_groups.0, e.g. 'head.2.bias'; a "
        "parameter may be in one group only: narrow the patterns",
        "optimizer.param_groups.2.params: 1 parameter(s) already in optimizer.param_groups.0, e.g. 'head.2.bias'; a "
        "parameter may be in one group only: narrow the patterns",
    ]


def test_train_py_builds_the_optimizer_from_the_groups_and_without_entries_as_before():
    net = model()
    optimizer = torch.optim.AdamW(run.param_groups(net, True, [{"params": "head.*", "lr": 0.01, "name": "head"}]),
                                  lr=0.1, weight_decay=0.5)
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == [
        ("default", 0.1, 0.5, 1), ("default", 0.1, 0.0, 3), ("head", 0.01, 0.5, 1), ("head", 0.01, 0.0, 1)]
    assert [len(g["params"]) for g in run.param_groups(net, True)] == [2, 4]
    assert len(run.param_groups(net, False)) == 6  # a plain list of parameters, as it always was
