"""Small helpers: JSON files, seeding. NumPy and torch are imported by the function that seeds them, so that a
command that only reads files (runs.py) starts without them."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

RUN_ID_FORMAT = "%m%d_%H%M%S"  # a run directory's default name: the start time, e.g. 1122_054040


def write_text_atomic(path: str | Path, text: str | bytes) -> None:
    """Replace path's content with text (bytes: written as they are) through a temporary file and a rename: never
    half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)


def write_json(content: Any, path: str | Path) -> None:
    """Write content as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(content, indent=4) + "\n")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flatten(config: Mapping, prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """A config's values by dotted key: {"a": {"b": 1}} -> {"a.b": 1}; an empty object, a list and any other value is
    one value. lists: a non-empty list's items by index too, as overrides name them ({"m": [1]} -> {"m.0": 1})."""
    nested = (Mapping, list) if lists else Mapping
    flat = {}
    for key, value in config.items() if isinstance(config, Mapping) else enumerate(config):
        if isinstance(value, nested) and value:
            flat.update(flatten(value, f"{prefix}{key}.", lists))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
