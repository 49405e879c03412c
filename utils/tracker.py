"""Sample-weighted running averages kept on the device: no host sync until they are read."""
from __future__ import annotations

from typing import Any

import torch

from utils.distributed import all_reduce_sum


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

    def result(self, across_ranks: bool = False) -> dict[str, float]:
        """{key: weighted mean} with one host sync; across_ranks sums every rank's sums and counts first."""
        keys = list(self._sums)
        if not keys:
            return {}
        device = next((v.device for v in self._sums.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        sums = torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float32, device=device) for k in keys])
        counts = torch.tensor([self._counts[k] for k in keys], dtype=torch.float32, device=device)
        if across_ranks:
            both = all_reduce_sum(torch.cat([sums, counts]))
            sums, counts = both[:len(keys)], both[len(keys):]
        return dict(zip(keys, (sums / counts).tolist()))

    def state_dict(self, across_ranks: bool = False) -> dict:
        """The partial sums (for a checkpoint taken in the middle of an epoch), summed over ranks if asked."""
        if not across_ranks or not self._sums:
            return {"sums": dict(self._sums), "counts": dict(self._counts)}
        keys = list(self._sums)
        sums = all_reduce_sum(torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float32) for k in keys]))
        counts = all_reduce_sum(torch.tensor([self._counts[k] for k in keys], dtype=torch.float64))
        return {"sums": dict(zip(keys, sums)), "counts": {k: int(c) for k, c in zip(keys, counts.tolist())}}

    def load_state_dict(self, state: dict) -> None:
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was NaN or infinite; read only when asked."""

    def __init__(self):
        self._first: torch.Tensor | None = None  # steps counted from the last reset; -1: none bad
        self._count: torch.Tensor | None = None
        self.base_step = 0

    def reset(self, base_step: int) -> None:
        self._first = self._count = None
        self.base_step = base_step

    def update(self, loss: torch.Tensor) -> None:
        """Record one step's loss (device operations only, no host sync)."""
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._count = torch.zeros((), dtype=torch.int64, device=loss.device)
        self._count += 1
        bad = ~torch.isfinite(loss.detach()).all()
        self._first = torch.where(bad & (self._first < 0), self._count, self._first)

    def first_bad_step(self) -> int | None:
        """The global step of the first non-finite loss since reset, or None (one host sync)."""
        if self._first is None:
            return None
        first = int(self._first.item())
        return None if first < 0 else self.base_step + first
