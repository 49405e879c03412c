"""Scaffold a clean copy of this project: python new_project.py ../NewProject"""
from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
from pathlib import Path
from typing import Callable

from utils.errors import UserError

# Relative to the project root only: a nested model/data/ or tests/saved/ is user code and is kept.
TOP_LEVEL_EXCLUDED = {".git", "saved", "data", "new_project.py", "tests/integration/test_new_project.py"}
CACHES = ("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
          "*.egg-info", ".ipynb_checkpoints")


def ignore_for(root: Path) -> Callable[[str, list[str]], set[str]]:
    """A shutil.copytree ignore callable: caches at every level, TOP_LEVEL_EXCLUDED under root only."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(root)
        return {name for name in names
                if (rel / name).as_posix() in TOP_LEVEL_EXCLUDED
                or any(fnmatch.fnmatch(name, pattern) for pattern in CACHES)}
    return ignore


def check_target(root: Path, target: Path) -> None:
    """Raise UserError unless target lies outside root and is missing or an empty directory."""
    if target == root or root in target.parents:
        raise UserError(f"{target} is inside the project {root}; choose a directory outside it, "
                        f"e.g. {root.parent / 'NewProject'}")
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise UserError(f"{target} exists and is not empty; choose a new directory or empty it first")


def main(argv: list[str] | None = None) -> int:
    """Copy this project to the target directory and print the next commands."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="directory for the new project (missing or empty)")
    args = parser.parse_args(argv)
    root, target = Path(__file__).resolve().parent, Path(args.target).resolve()
    check_target(root, target)
    # copy2 (copytree's default) keeps file modes, so e.g. .ci/run stays executable.
    shutil.copytree(root, target, ignore=ignore_for(root), dirs_exist_ok=True)
    print(f"Created {target}. Next:\n  cd {args.target}\n  python train.py -c config.json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
