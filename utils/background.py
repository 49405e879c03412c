"""Checkpoints written in the background (trainer.async_checkpoint): the state is copied off the training path at the
step, and one worker thread writes the copy while training goes on.

The copy is torch's own checkpoint staging (torch.distributed.checkpoint.staging): every tensor into CPU memory
(pinned from a GPU, the copy awaited before training goes on), storages shared as they were, and the buffers kept for
the next save. At most one write is in flight: the next save waits for it, so a buffer is never rewritten while it is
being written. Whoever owns the writer waits for it (wait or close) before it reads what the write decides, and before
the process ends; a failed write's error is raised there.
"""
from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch


class BackgroundWriter:
    """Runs write(copy of state, *args) in one background thread, one at a time."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._stager: Any = None
        self._pending: Future | None = None

    def submit(self, write: Callable[..., Any], state: dict, *args: Any) -> None:
        """Copy state off the training path now, then write the copy in the background (after the write in flight,
        whose error is raised here)."""
        self.wait()
        staged = self._stage(state)
        self._pending = self._executor.submit(write, staged, *args)

    def wait(self) -> None:
        """Return once no write is in flight; the error of one that failed is raised here, once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the write in flight (its error is raised), then let the thread and the buffers go."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    def _stage(self, state: dict) -> dict:
        if self._stager is None:
            if not torch.distributed.is_available():  # a torch built without it: a plain copy, made anew each time
                return copy.deepcopy(state)
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()  # pinned buffers and non-blocking copies need it
            self._stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                        use_async_staging=False, use_non_blocking_copy=cuda))
        return self._stager.stage(state)
