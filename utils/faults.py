"""A fault injected on purpose, for tests of what a crash loses: TRAIN_FAULT="rank=1,step=17" makes rank 1 kill
itself with SIGKILL right after global optimizer step 17 (every other part of the step done: its checkpoint written,
its validation logged). `signal=TERM` (or INT, USR1) sends that signal instead. It fires on torchrun's first attempt
only (TORCHELASTIC_RESTART_COUNT unset or 0), so the job torchrun restarts (--max-restarts) trains past that step.
Several faults separated by `;` fire one per attempt, in order: "rank=1,step=14,signal=TERM;rank=0,step=22" stops
the first attempt by SIGTERM and kills the second. Without torchrun the one process is rank 0."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from utils.errors import UserError
from utils.part import Part

VARIABLE = "TRAIN_FAULT"
SIGNALS = ("KILL", "TERM", "INT", "USR1")
FORMAT = (f'{VARIABLE}="rank=R,step=N" or "rank=R,step=N,signal={"|".join(SIGNALS)}", several separated by ";" '
          f'(one per torchrun attempt)')


@dataclass(frozen=True)
class Fault:
    """Send signum to rank `rank` right after global optimizer step `step`."""
    rank: int
    step: int
    signum: int = signal.SIGKILL


def parse(text: str, world_size: int = 1) -> Fault:
    """A TRAIN_FAULT value ("rank=1,step=17", "rank=0,step=5,signal=TERM") for a job of world_size processes; a
    bad one is a UserError that names the variable and its format."""
    fields, problems = {}, []
    for item in text.split(","):
        key, equals, value = (s.strip() for s in item.partition("="))
        if not equals or key not in ("rank", "step", "signal") or key in fields:
            problems.append(f"{item.strip()!r} is not one of rank=R, step=N, signal=S, each given once")
        fields[key] = value
    rank, step, name = fields.get("rank"), fields.get("step"), fields.get("signal", "KILL").upper()
    if rank is None or not rank.isdigit() or int(rank) >= world_size:
        ranks = "0" if world_size == 1 else f"0 to {world_size - 1}"
        problems.append(f"rank must be a rank of this job, {ranks}, not {rank!r}")
    if step is None or not step.isdigit() or int(step) < 1:
        problems.append(f"step must be a global optimizer step, 1 or more, not {step!r}")
    if name.removeprefix("SIG") not in SIGNALS:
        problems.append(f"signal must be one of {', '.join(SIGNALS)}, not {fields['signal']!r}")
    if problems:
        raise UserError(f"{VARIABLE}={text!r}: {'; '.join(problems)}. Give {FORMAT}")
    return Fault(int(rank), int(step), getattr(signal, f"SIG{name.removeprefix('SIG')}"))


class InjectedFault(Part):
    """Fires the fault: after the optimizer step it names, sends its signal to this process (kill: os.kill, or a
    stand-in)."""

    def __init__(self, fault: Fault, kill: Callable[[int, int], None] = os.kill):
        self.fault, self.kill = fault, kill

    @classmethod
    def from_environment(cls, rank: int, world_size: int, environ: Mapping[str, str] = os.environ) -> Part:
        """The fault TRAIN_FAULT names for this rank on this torchrun attempt (the first fault on the first attempt, the
        second on the next, ...); else a do-nothing Part. The value is checked on every rank and attempt (a bad one
        fails at once)."""
        text = environ.get(VARIABLE, "").strip()
        if not text:
            return Part()
        faults = [parse(one, world_size) for one in text.split(";")]
        attempt = int(environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        fault = faults[attempt] if attempt < len(faults) else None
        return cls(fault) if fault is not None and fault.rank == rank else Part()

    def on_step_end(self, loop: Any) -> None:
        if loop.stepped and loop.global_step == self.fault.step:
            self.kill(os.getpid(), self.fault.signum)
