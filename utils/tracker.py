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
        total = self._sums.get(key)
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if isinstance(total, torch.Tensor):
                total.add_(value, alpha=n)  # one in-place op on the device
            else:
                self._sums[key] = value.float() * n + (total or 0.0)
        else:
            self._sums[key] = (total if total is not None else 0.0) + value * n
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
        if not across_ranks or not self._sums:  # a snapshot: the sums are updated in place
            sums = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._sums.items()}
            return {"sums": sums, "counts": dict(self._counts)}
        keys = list(self._sums)
        sums = all_reduce_sum(torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float32) for k in keys]))
        counts = all_reduce_sum(torch.tensor([self._counts[k] for k in keys], dtype=torch.float64))
        return {"sums": dict(zip(keys, sums)), "counts": {k: int(c) for k, c in zip(keys, counts.tolist())}}

    def load_state_dict(self, state: dict) -> None:
        self._sums = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state["sums"].items()}
        self._counts = dict(state["counts"])


class NonFiniteGuard:
    """Keeps each step's loss (references, no device work) until the losses are known to be finite, so
    that the first NaN or infinite one can be named when a sync point finds the running loss non-finite."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []
        self.base_step = 0  # the global step before the first kept loss

    def reset(self, base_step: int) -> None:
        self._losses, self.base_step = [], base_step

    def update(self, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def first_bad_step(self) -> int | None:
        """The global step of the first non-finite loss kept, or None (one host sync)."""
        if not self._losses:
            return None
        bad = (~torch.isfinite(torch.stack(self._losses).float())).nonzero()
        return self.base_step + 1 + int(bad[0, 0]) if len(bad) else None
