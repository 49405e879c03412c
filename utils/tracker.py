"""Sample-weighted running averages kept on the device: no host sync until they are read."""
from __future__ import annotations

import copy
import sys
from typing import Any, Callable, Sequence

import torch

from utils.distributed import all_gather_stack, all_reduce_sum
from utils.errors import UserError


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
        """The partial sums (for a checkpoint taken in the middle of an epoch), summed over ranks if asked; then also
        each rank's own ("by_rank": a resume with as many processes goes on with each one's, so that every later sum
        is added in the same order as in a run that did not stop)."""
        if not across_ranks or not self._sums:  # a snapshot: the sums are updated in place
            sums = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._sums.items()}
            return {"sums": sums, "counts": dict(self._counts)}
        keys = list(self._sums)
        own_sums = torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float32) for k in keys])
        own_counts = torch.tensor([self._counts[k] for k in keys], dtype=torch.float64, device=own_sums.device)
        by_rank = {"sums": all_gather_stack(own_sums), "counts": all_gather_stack(own_counts)}
        sums, counts = all_reduce_sum(own_sums.clone()), all_reduce_sum(own_counts.clone())
        return {"sums": dict(zip(keys, sums)), "counts": {k: int(c) for k, c in zip(keys, counts.tolist())},
                "by_rank": by_rank}

    @staticmethod
    def holds_each_rank(state: dict, world_size: int) -> bool:
        """Whether state holds the sums of each of world_size ranks."""
        return world_size > 1 and len(state.get("by_rank", {}).get("sums", ())) == world_size

    def load_state_dict(self, state: dict, rank: int | None = None) -> None:
        """The partial sums: all of them, or rank's own (holds_each_rank)."""
        if rank is not None:
            keys, by_rank = list(state["sums"]), state["by_rank"]
            self._sums = {k: v.clone() for k, v in zip(keys, by_rank["sums"][rank])}
            self._counts = {k: int(c) for k, c in zip(keys, by_rank["counts"][rank].tolist())}
            return
        self._sums = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state["sums"].items()}
        self._counts = dict(state["counts"])


def is_stateful(metric: Any) -> bool:
    """Whether a built metric keeps state over an epoch (a torchmetrics Metric: update, compute, reset)."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def is_classification(metric: Any) -> bool:
    """A torchmetrics classification metric (its per-class results are by class)."""
    return type(metric).__module__.startswith("torchmetrics.classification")


def is_confusion_matrix(metric: Any) -> bool:
    """A torchmetrics confusion matrix (Binary, Multiclass or Multilabel): drawn as an image in TensorBoard."""
    return is_classification(metric) and type(metric).__name__.endswith("ConfusionMatrix")


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Callable], dict[str, Any]]:
    """({name: batch-mean function}, {name: stateful metric}) in config order."""
    return ({k: m for k, m in metrics.items() if not is_stateful(m)},
            {k: m for k, m in metrics.items() if is_stateful(m)})


class EpochMetrics:
    """One phase's stateful metrics (torchmetrics): copies of the built ones on the device, updated with each
    batch's (output, target) without a host sync and computed once over all of the epoch's samples, every rank's
    (torchmetrics gathers their states in compute(), which every rank calls at the same point)."""

    def __init__(self, metrics: dict[str, Any], device: torch.device, classes: Sequence[str] | None = None):
        """classes: the data's class names by index; a classification metric's per-class result is then
        {class name: value}."""
        self.metrics = {name: copy.deepcopy(m).to(device) for name, m in metrics.items()}
        self.device = device
        self.classes = list(classes) if classes else None
        self.counting = DeviceCounting(enabled=device.type == "cuda" and bool(metrics))

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def update(self, output: Any, target: Any) -> None:
        with self.counting:
            for metric in self.metrics.values():
                metric.update(output, target)
                if getattr(metric, "validate_args", False):  # checked on the first batch: later checks read the device
                    metric.validate_args = False

    def result(self) -> dict[str, float | list | dict]:
        """{name: number, or nested list for a non-scalar result (per class, a confusion matrix); a per-class list
        by class name when the names are known}: one host read. Resets the metrics."""
        if not self.metrics:
            return {}
        values = {}
        for name, metric in self.metrics.items():
            value = metric.compute()
            if not isinstance(value, torch.Tensor):
                raise UserError(f"metrics: {name!r} ({type(metric).__name__}) computes a {type(value).__name__}; "
                                f"only metrics that compute a tensor can be logged")
            values[name] = value.detach()
            metric.reset()
        flat = torch.cat([v.flatten().double().to(self.device) for v in values.values()]).tolist()
        out, at = {}, 0
        for name, value in values.items():
            n = value.numel()
            numbers = [x if value.is_floating_point() else int(x) for x in flat[at:at + n]]
            at += n
            out[name] = numbers[0] if value.dim() == 0 else _nest(numbers, list(value.shape))
            if value.dim() == 1 and self.classes and n == len(self.classes) and is_classification(self.metrics[name]):
                out[name] = dict(zip(self.classes, out[name]))
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_dict(self, across_ranks: bool = False) -> dict:
        """Each metric's state (its metric_state tensors), gathered over ranks if asked (a collective)."""
        state = {}
        for name, metric in self.metrics.items():
            with metric.sync_context(should_sync=across_ranks):
                state[name] = {k: _clone(v) for k, v in metric.metric_state.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, metric in self.metrics.items():
            metric.reset()
            for key, value in state.get(name, {}).items():
                setattr(metric, key, _clone(value, self.device))


class DeviceCounting:
    """While active (and enabled: on a GPU), torchmetrics counts classes on the device. Its classification metrics
    count with torch.bincount, which on CUDA reads the largest value back to the host first: a host sync for every
    batch. Inside this block its _bincount is count_on_device instead: the same counts for values in
    [0, minlength), values outside them dropped as torchmetrics' own deterministic fallback drops them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._modules: list | None = None

    def __enter__(self) -> "DeviceCounting":
        if self.enabled:
            if self._modules is None:  # the torchmetrics modules that imported _bincount by name
                from torchmetrics.utilities import data
                self._original = data._bincount
                self._modules = [m for name, m in list(sys.modules.items()) if name.startswith("torchmetrics")
                                 and getattr(m, "_bincount", None) is self._original]
            for module in self._modules:
                module._bincount = count_on_device
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            for module in self._modules:
                module._bincount = self._original


def count_on_device(x: torch.Tensor, minlength: int | None = None) -> torch.Tensor:
    """torch.bincount(x, minlength) for the values in [0, minlength), without reading x on the host."""
    if minlength is None:  # the number of bins depends on the values: they must be read
        return torch.bincount(x)
    x = x.flatten().long()
    index = torch.where((x >= 0) & (x < minlength), x, minlength)  # the rest into one more bin, dropped
    counts = torch.zeros(minlength + 1, dtype=torch.long, device=x.device)
    return counts.scatter_add_(0, index, torch.ones_like(index))[:minlength]


def _clone(value: Any, device: torch.device | None = None) -> Any:
    """A copy of a metric state: a tensor or a list of tensors (a 'cat' state)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if device is None else value.detach().to(device, copy=True)
    return [_clone(v, device) for v in value]


def _nest(flat: list, shape: list[int]) -> list:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


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
