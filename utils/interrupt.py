"""Graceful stop on SIGINT/SIGTERM/SIGUSR1: in the training loop the first signal asks the loop to stop after the
current step and a second one exits at once without touching any file; outside it (start-up, shutdown)
a signal ends the command with one line and its status."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Iterator


class StopRequested(Exception):
    """Raised inside the training loop, after a completed step, when a stop signal arrived."""


class TimeLimitReached(Exception):
    """Raised inside the training loop, after a completed step, once trainer.max_time has passed."""

    def __init__(self, seconds: float, checkpoint: object = None):
        self.seconds, self.checkpoint = seconds, checkpoint
        super().__init__(f"trainer.max_time ({seconds:g} s) reached")


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving `checkpoint`; the process should exit with `exit_code`."""

    def __init__(self, signum: int, checkpoint: object):
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {checkpoint}")


class SignalStop:
    """Context manager: while active, SIGINT/SIGTERM (and SIGUSR1, which SLURM's --signal=USR1@90 sends before a
    job's time limit) set `requested` instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []))

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            os._exit(128 + signum)  # a second signal: leave now, write nothing
        self.requested = signum

    def __enter__(self) -> "SignalStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class Terminated(BaseException):
    """SIGTERM outside the training loop (the counterpart of SIGINT's KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While active (and not replaced by SignalStop in the training loop), SIGTERM raises Terminated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
