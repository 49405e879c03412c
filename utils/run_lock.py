"""One writer per run directory: the process that trains a run holds an exclusive lock on its `.lock` file, so that
the same command started again while an earlier start still runs (a job requeued before its last incarnation has
exited, ranks torchrun left behind) waits for it instead of writing into the same files.

The lock is the operating system's (flock) on the directory's `.lock` file: it goes with the process however it ends
(kill -9 included); the file is deleted as the lock is let go, and one that a killed process left means nothing. Where the file system does not offer it (some network file systems),
or on Windows, training goes on without it, with a warning.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Callable

from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

NAME = ".lock"
WAIT_S = 120  # how long a start waits for an earlier one to let go of the run


class RunLock:
    """The lock on a run directory: acquire(directory) holds it (waiting up to wait_s for its holder), release() lets
    go."""

    def __init__(self, wait_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.wait_s, self.clock = WAIT_S if wait_s is None else wait_s, clock
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def acquire(self, directory: Path) -> None:
        if fcntl is None or self._file is not None:
            return
        self.path = Path(directory) / NAME
        deadline, waiting = self.clock() + self.wait_s, False
        while True:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(file, self.path):
                    break
                file.close()  # its holder deleted it as it let go: lock the file that is there now
                continue
            except BlockingIOError:  # held by another process
                pass
            except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without flock
                logging.getLogger("train").warning("Run directory %s cannot be locked (%s): nothing stops a second "
                                                   "process from training the same run", self.path.parent,
                                                   e.strerror or e)
                file.close()
                return
            holder = _holder(file)
            file.close()
            if self.clock() >= deadline:
                raise UserError(f"run directory {self.path.parent} is in use by another training process ({holder}) "
                                f"after waiting {self.wait_s:g} s; stop that process, or wait for it to end, then run "
                                f"the command again")
            if not waiting:
                logging.getLogger("train").warning("Run directory %s is in use by another training process (%s); "
                                                   "waiting up to %g s for it to end", self.path.parent, holder,
                                                   self.wait_s)
                waiting = True
            time.sleep(0.2)
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        """Delete the lock file, then let go (closing the file ends its lock): a start waiting on the old file sees
        that it was deleted and locks the next one."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None


def _same_file(file: IO[str], path: Path) -> bool:
    """Whether path still names the open file (it was not deleted or replaced meanwhile)."""
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(file: IO[str]) -> str:
    """What the holding process wrote into the lock file: 'pid 123 on host'."""
    file.seek(0)
    return file.read().strip() or "one that has not said which"
