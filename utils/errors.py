"""The one exception type for mistakes in user input (config, CLI, checkpoint, data), and how the CLI reports
them and tells a library refusing a value from a bug in the project's own code."""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Iterable, NoReturn

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it without a traceback and exits with 2."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [_from_worker(problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _from_worker(message: str) -> str:
    """The original message of a UserError that a DataLoader worker raised: the main process re-raises it
    as UserError("Caught UserError in DataLoader worker process N. Original Traceback ... UserError: <it>")."""
    if message.startswith("Caught UserError in DataLoader worker process"):
        return message.rsplit("UserError: ", 1)[-1].strip()
    return message


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """' Did you mean 'x' or 'y'?' for the nearest choices (case-insensitive, each shown after prefix), or ''."""
    by_lower: dict[str, str] = {}
    for c in choices:  # on a case-insensitive tie the earlier name wins (the user's before a library's)
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(prefix + by_lower[c]) for c in close) + "?"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _frames(error: BaseException) -> list[tuple[Path, int]]:
    """(file, line) of each frame error's traceback passed through, outermost first."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append((Path(tb.tb_frame.f_code.co_filename).resolve(), tb.tb_lineno))
        tb = tb.tb_next
    return frames


def _in_project(path: Path) -> bool:
    return path.is_relative_to(PROJECT_ROOT) and not {"site-packages", "dist-packages"} & set(path.parts)


def raised_by_a_library(error: BaseException) -> bool:
    """Whether the innermost frame of error's traceback is outside this project (in torch, say): a library
    refusing what the user's config handed it, rather than a bug in the project's own code."""
    frames = _frames(error)
    return bool(frames) and not _in_project(frames[-1][0])


def project_location(error: BaseException, skip: Iterable[Path] = ()) -> str:
    """' (at model/model.py:23)': the innermost line of the project's own code error passed through (files in
    skip left out), or ''."""
    skip = {Path(p).resolve() for p in skip}
    inside = [(path, line) for path, line in _frames(error) if _in_project(path) and path not in skip]
    return f" (at {inside[-1][0].relative_to(PROJECT_ROOT)}:{inside[-1][1]})" if inside else ""


def run_cli(main, argv=None) -> int:
    """Run main(argv); a UserError prints one 'error:' line per problem on stderr and gives status 2. SIGINT or
    SIGTERM outside the training loop (which saves and exits by itself) ends with one line and 130 or 143."""
    # Imported here: this module stands alone at import (new_project.py runs on it before the rest is copied).
    from utils.interrupt import Terminated, terminate_raises

    try:
        with terminate_raises():
            main(argv)
    except UserError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        print(f"stopped by {name} outside the training loop: nothing was saved now; files already written "
              f"(checkpoints, logs) are as they were", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    return 0


def exit_cli(main) -> NoReturn:
    """A command's entry point: run_cli(main), then exit with its status. Once main is done, a stop signal
    arriving while the process exits changes nothing (settle_for_exit)."""
    from utils.interrupt import settle_for_exit

    status = run_cli(main)
    settle_for_exit()
    raise SystemExit(status)
