"""The interface every part of the training loop shares (trainer/parts.py lists the Trainer's): one hook per moment,
each doing nothing here. A part overrides the hooks it needs; a feature that is off is a do-nothing part (this class),
so the loop asks every part the same way and never checks for None."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager


class Part:
    """A piece of the loop. `loop` is what the loop tells its parts (trainer.parts.Loop: the epoch under way, the
    step's counts, batch, loss and output). A part with state names its checkpoint part (checkpoint_name, one of
    utils/checkpoint.py's names) and has state_dict()/load_state_dict()."""

    checkpoint_name: str | None = None

    def on_epoch_start(self, loop: Any) -> None:
        """Before the epoch's first step (after a mid-epoch resume: before its next step)."""

    def on_step_end(self, loop: Any) -> None:
        """After each step (loop.stepped: the optimizer stepped, a point where the state can be saved)."""

    def on_epoch_end(self, loop: Any) -> None:
        """After the epoch's last step, before its validation."""

    def validating(self, loop: Any) -> ContextManager:
        """Around each validation: what the part changes for it and puts back afterwards."""
        return contextlib.nullcontext()
