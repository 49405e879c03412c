"""What the entry points do before torch is imported (this module imports nothing heavy)."""
from __future__ import annotations

import os


def select_devices(device: str | None) -> None:
    """-d 0,1: the GPUs this process may use (CUDA reads CUDA_VISIBLE_DEVICES once, when it starts)."""
    if device and device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
