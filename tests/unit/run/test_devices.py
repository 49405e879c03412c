"""Tests for run/devices.py: the one device chooser of every command."""
from __future__ import annotations

import logging

import torch

from run import choose_device
from utils.distributed import Dist


def test_more_gpus_asked_than_exist_warns_and_uses_what_exists(caplog):
    device, ids = choose_device(torch.cuda.device_count() + 2)
    assert f"n_gpu is {torch.cuda.device_count() + 2} but only {torch.cuda.device_count()}" in caplog.text
    assert len(ids) == torch.cuda.device_count()
    assert device.type == ("cuda" if ids else "cpu")


def test_cpu_flag_wins_and_inference_takes_at_most_one_gpu(caplog):
    caplog.set_level(logging.INFO, logger="train")
    assert choose_device(4, "cpu") == (torch.device("cpu"), [])
    assert "-d cpu: running on the CPU (n_gpu=4 is not used)" in caplog.text
    caplog.clear()
    device, ids = choose_device(4, one=True)
    assert len(ids) == min(1, torch.cuda.device_count())
    assert caplog.records == []  # inference: n_gpu only allows a GPU, fewer is nothing to say
    assert choose_device(0) == (torch.device("cpu"), [])


def test_under_torchrun_each_rank_takes_its_own_device():
    device, ids = choose_device(0, dist=Dist(1, 2, 1))
    assert (device, ids) == (torch.device("cpu"), [])
