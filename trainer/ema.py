"""trainer.ema: an exponential moving average of the weights, kept on the device: a part of the Trainer's loop (which
validation uses) and a checkpoint part ("ema"; utils.checkpoint.inference_weights reads it for test.py, predict.py and
export.py). torch's AveragedModel holds the averaged copy and get_ema_multi_avg_fn does the arithmetic;
AveragedModel.update_parameters is not called because it reads its step count from the device (a host sync) on
every update: the count is kept on the host here instead."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from utils.checkpoint import EMA, unwrap
from utils.part import Part


class WeightAverage(Part):
    """The average of the model's parameters and buffers, updated after every `every` optimizer steps; until step
    `warmup_steps` it is a copy of the weights. Validation (hence model_best.pth) and test.py use it. The three
    numbers are trainer.ema's (config/settings.py: EMASettings, which holds their defaults)."""

    checkpoint_name = EMA

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int, every: int):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.average = get_ema_multi_avg_fn(decay)
        self.averaged = AveragedModel(unwrap(model), multi_avg_fn=self.average, use_buffers=True)
        self.warmup_steps, self.every = warmup_steps, every
        self.updates = 0  # on the host: AveragedModel's n_averaged lives on the device
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_setting(cls, model: nn.Module, setting: Any) -> Part:
        """The average trainer.ema asks for (an object with decay, warmup_steps and every); off (null), a part that
        does nothing."""
        return Part() if setting is None else cls(model, setting.decay, setting.warmup_steps, setting.every)

    def pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(averaged, current) for every parameter and buffer, in the module's order (the same objects all run)."""
        if self._pairs is None:
            plain = unwrap(model)
            current = [*plain.parameters(), *plain.buffers()]
            averaged = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
            self._pairs = list(zip(averaged, current, strict=True))
            self._groups = _lists({(a.device, a.dtype): [] for a, _ in self._pairs if a.is_floating_point()},
                                  [(a, c) for a, c in self._pairs if a.is_floating_point()])
            self._counters = _lists({None: []}, [(a, c) for a, c in self._pairs if not a.is_floating_point()])[0]
            self._all = _lists({None: []}, self._pairs)[0]
        return self._pairs

    def on_step_end(self, loop: Any) -> None:
        if loop.stepped:
            self.update(loop.model, loop.global_step)

    def validating(self, loop: Any) -> ContextManager:
        return self.swapped(loop.model)

    @torch.no_grad()
    def update(self, model: nn.Module, global_step: int) -> None:
        """After optimizer step global_step: every `every` steps, fold the weights into the average (no host sync).
        Before the first update and until warmup_steps the average is a copy; counters (num_batches_tracked) are
        always copied."""
        if global_step % self.every:
            return
        self.pairs(model)
        if global_step > self.warmup_steps and self.updates > 0:
            for averaged, current in self._groups:
                self.average(averaged, current, None)
            if self._counters[0]:
                torch._foreach_copy_(*self._counters)
        else:
            torch._foreach_copy_(*self._all)
        self.averaged.n_averaged += 1
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """Inside the block the model holds the averaged weights (tensors swapped, nothing copied)."""
        pairs = self.pairs(model)
        _swap(pairs)
        try:
            yield
        finally:
            _swap(pairs)

    def state_dict(self) -> dict:
        return {"state_dict": self.averaged.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.module.load_state_dict(state["state_dict"])
        self.updates = state["updates"]
        self.averaged.n_averaged.fill_(self.updates)


def _lists(groups: dict, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[list, list]]:
    """([averaged], [current]) of detached tensors for each key of groups ((device, dtype), or None for all)."""
    lists = {key: ([], []) for key in groups}
    for averaged, current in pairs:
        key = None if None in lists else (averaged.device, averaged.dtype)
        lists[key][0].append(averaged.detach())
        lists[key][1].append(current.detach())
    return list(lists.values())


def _swap(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for averaged, current in pairs:
        averaged.data, current.data = current.data, averaged.data
