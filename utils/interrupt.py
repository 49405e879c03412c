"""Graceful stop on SIGINT/SIGTERM/SIGUSR1: in the training loop the first signal asks the loop to stop after the
current step and a second one exits at once without touching any file; outside it (start-up, shutdown)
a signal ends the command with one line and its status. StopTraining is the loop's one way to stop early."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading
from types import FrameType
from typing import Iterator


class StopTraining(Exception):
    """Training stops before its last epoch, after a completed step, and says why: `reason` is SIGNAL (`signum`:
    SIGINT, SIGTERM or SIGUSR1), TIME_LIMIT (trainer.max_time's `seconds` have passed) or EARLY_STOP (a validation in
    the middle of an epoch, trainer.val_every_steps). `checkpoint` is the file that holds the state at the stop (set
    by the loop that saved it; None on a rank that writes none); `exit_code` is the command's status: 128 + signum
    after a signal, 0 otherwise (a planned stop: a scheduled job can requeue itself)."""

    SIGNAL, TIME_LIMIT, EARLY_STOP = "signal", "time limit", "early stop"

    def __init__(self, reason: str, *, signum: int | None = None, seconds: float | None = None,
                 checkpoint: object = None):
        self.reason, self.signum, self.seconds, self.checkpoint = reason, signum, seconds, checkpoint
        super().__init__(reason)

    @classmethod
    def by_signal(cls, signum: int | None, checkpoint: object = None) -> "StopTraining":
        """Stopped by signum; None when another rank received it (under DDP): SIGTERM then."""
        return cls(cls.SIGNAL, signum=signum or signal.SIGTERM, checkpoint=checkpoint)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.reason == self.SIGNAL else 0

    def __str__(self) -> str:
        if self.reason == self.SIGNAL:
            return f"stopped by {signal.Signals(self.signum).name}; saved {self.checkpoint}"
        if self.reason == self.TIME_LIMIT:
            return f"trainer.max_time ({self.seconds:g} s) reached"
        return "the monitored value stopped improving"


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
    still be able to stop that wait.

    A process that joined a torchrun process group collects its garbage first: what holds the group (the
    DistributedDataParallel model, say) must go while Python runs, so that the group's threads are joined; frozen,
    they would be left to C++'s exit, which aborts the process (SIGABRT, "terminate called without an active
    exception") after its work is done, at random."""
    distributed = sys.modules.get("utils.distributed")
    if distributed is not None and distributed.joined_a_process_group():
        gc.collect()
    gc.freeze()
    if threading.current_thread() is not threading.main_thread():
        return
    waits = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread() and t.is_alive()]
    if "multiprocessing" in sys.modules:
        waits += [p for p in sys.modules["multiprocessing"].active_children() if not p.daemon]
    if not waits:
        for s in SignalStop.SIGNALS:
            signal.signal(s, signal.SIG_IGN)


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the thread that started it ends


def signal_when_parent_dies(signum: int, parent: int | None = None) -> None:
    """On Linux, have the system send this process signum when its parent ends (the thread that started it, to be
    exact); sent at once when the parent has ended already (it is no longer `parent`, default: the parent now).
    Elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signum)
