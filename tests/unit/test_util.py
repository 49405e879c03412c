"""Tests for utils/util.py: asking for more GPUs than exist."""
from __future__ import annotations

import torch


def test_more_gpus_asked_than_exist_warns_and_uses_what_exists(caplog):
    from utils.util import prepare_device

    device, ids = prepare_device(torch.cuda.device_count() + 2)
    assert f"n_gpu is {torch.cuda.device_count() + 2} but only {torch.cuda.device_count()}" in caplog.text
    assert len(ids) == torch.cuda.device_count()
