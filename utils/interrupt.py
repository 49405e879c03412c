"""Graceful stop on SIGINT/SIGTERM/SIGUSR1: in the training loop the first signal asks the loop to stop after the
current step and a second one exits at once without touching any file; outside it (start-up, shutdown)
a signal ends the command with one line and its status."""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
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


def settle_for_exit() -> None:
    """Called when a command has done its work (every file written) and its process is about to exit.

    From here on SIGINT, SIGTERM and SIGUSR1 are ignored: one arriving during the interpreter's teardown cannot turn
    a finished command's status into a kill (Python hands them back to the system's default, which kills, before
    tearing torch down). The teardown's garbage collections skip the objects alive now (gc.freeze): with torch and
    torchvision loaded that takes the teardown from about 1.8 s to 0.3 s. Signals are left as they are while a
    thread or child process the command started is still running, since the exit waits for it and a signal must
    still be able to stop that wait."""
    gc.freeze()
    if threading.current_thread() is not threading.main_thread():
        return
    waits = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread() and t.is_alive()]
    if "multiprocessing" in sys.modules:
        waits += [p for p in sys.modules["multiprocessing"].active_children() if not p.daemon]
    if not waits:
        for s in SignalStop.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
