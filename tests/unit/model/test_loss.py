"""Tests for model/loss.py: every loss defined there is registered next to torch's and computes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.registry import LOSSES

import parse_config  # noqa: E402,F401  (registers the project's classes)


USER_LOSSES = [n for n in LOSSES.names() if LOSSES.find(n).__module__ == "model.loss"]


@pytest.mark.parametrize("name", USER_LOSSES)
def test_every_loss_of_loss_py_computes(name, digits_batch):
    output = torch.log_softmax(torch.randn(6, 10, requires_grad=True), dim=1)
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    value = LOSSES.get(name, "loss")(output, target)
    assert value.shape == () and torch.isfinite(value) and value > 0
    value.backward()


def test_loss_py_is_registered_along_with_torch_losses():
    assert {"nll_loss", "cross_entropy"} <= set(USER_LOSSES)
    assert LOSSES.find("CrossEntropyLoss") is nn.CrossEntropyLoss and LOSSES.from_library(nn.CrossEntropyLoss)
