"""Tests for model/metric.py: every metric computes a fraction; top_k_acc counts the targets among the k best."""
from __future__ import annotations

import pytest
import torch

from utils.registry import METRICS

import parse_config  # noqa: E402,F401  (registers the project's classes)


@pytest.mark.parametrize("name", [n for n in METRICS.names() if not METRICS.from_library(METRICS.find(n))])
def test_every_metric_function_computes(name):
    """model/metric.py's functions (torchmetrics' classes: tests/unit/trainer/test_torchmetrics_metrics.py)."""
    output = torch.eye(10)[[0, 1, 2, 3]] + 0.01 * torch.arange(10)  # argmax = 0, 1, 2, 3
    value = float(METRICS.get(name, "metrics.0")(output, torch.tensor([0, 1, 2, 9])))
    assert 0.0 <= value <= 1.0
    if name == "accuracy":
        assert value == 0.75


def test_top_k_acc_counts_targets_among_the_k_best():
    output = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.5, 0.3, 0.2, 0.0]])
    top_k_acc = METRICS.get("top_k_acc", "metrics.0")
    assert float(top_k_acc(output, torch.tensor([2, 3]), k=3)) == 0.5
    assert float(top_k_acc(output, torch.tensor([2, 3]), k=2)) == 0.0
    assert float(top_k_acc(output[:, :2], torch.tensor([0, 1]), k=3)) == 1.0  # k above the 2 classes: every target
