"""Tests for model/summary.py: the layer table, with each layer's shapes, parameters and share of the total."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from model.cnn import CNN
from model.summary import layer_rows, layer_table


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_layer_table_lists_every_layer_with_shapes_parameters_and_shares():
    model = CNN(input=1, blocks="cnf8 r r16_3_2 d", num_classes=10, scale="vector")
    model.train()
    before = model.blocks[0][1].running_mean.clone()
    table = layer_table(model, (2, 1, 8, 8))
    assert model.training and torch.equal(model.blocks[0][1].running_mean, before)  # no side effects
    rows = layer_rows(model, (2, 1, 8, 8))
    leaves = [m for m in model.modules() if not list(m.children())]
    assert len([r for r in rows if r["params"] is not None and not r["name"].split()[1].startswith(
        ("Sequential", "ResBlock"))]) == len(leaves)
    for module in leaves:
        assert type(module).__name__ in table
    total = n_params(model)
    assert f"Total parameters: {total:,}" in table and f"Trainable parameters: {total:,}" in table
    assert sum(r["share"] for r in rows if r["depth"] == 1) == pytest.approx(100.0)
    assert sum(r["params"] for r in rows if r["depth"] == 1) == total
    assert re.search(r"0 Conv2d\(1, 8, kernel_size=3, padding=1, bias=False\) +2x1x8x8 -> 2x8x8x8 +72 +", table)
    assert re.search(r"2 Linear\(16, 10\) +2x16 -> 2x10 +170 +\d+\.\d%", table)
    shares = [float(s) for s in re.findall(r"(\d+\.\d)%", table)]
    assert max(shares) <= 100.0
