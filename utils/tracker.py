"""Sample-weighted running averages kept on the device: no host sync until they are read."""
from __future__ import annotations

from typing import Any

import torch


class MetricTracker:
    """Sums value * n per key; tensors stay on their device until result() reads them all at once."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def update(self, key: str, value: Any, n: int = 1) -> None:
        """Add a batch mean weighted by its sample count n (value: tensor or float)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self._sums[key] = self._sums.get(key, 0.0) + value * n
        self._counts[key] = self._counts.get(key, 0) + n

    def running(self, key: str) -> torch.Tensor | float:
        """The weighted mean of key so far, left on the device (no sync)."""
        return self._sums[key] / self._counts[key]

    def result(self) -> dict[str, float]:
        """{key: weighted mean} with one host sync for all tensor values."""
        keys = list(self._sums)
        tensors = [k for k in keys if isinstance(self._sums[k], torch.Tensor)]
        device = self._sums[tensors[0]].device if tensors else None
        read = dict(zip(tensors, torch.stack([self._sums[k].to(device) for k in tensors]).tolist())) if tensors else {}
        return {k: float(read.get(k, self._sums[k])) / self._counts[k] for k in keys}
