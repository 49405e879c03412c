"""Where each value of a config came from, by dotted key: a file and line ('configs/exp.yaml line 12'), the
checkpoint's config, a command-line option or override, or a default. train.py --print-config prints them; a run
keeps them beside its config.json (config_sources.json); a validation problem names the source of its key."""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

from utils.util import flatten

DEFAULT = "default"


def paths_of(config: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, each section before what it holds (list items by index: metrics.1)."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    out = []
    for key, value in items:
        path = f"{prefix}{key}"
        out += [path, *paths_of(value, path + ".")]
    return out


def leaves(config: dict) -> dict[str, Any]:
    """The values of a config that --print-config shows, by dotted key: all but non-empty objects (a list is one)."""
    return flatten(config)


def replaced(sources: dict[str, str], key: str, source: str, config: dict) -> dict[str, str]:
    """sources after config's value at key was set whole by source: everything under key came from there too."""
    out = {k: v for k, v in sources.items() if k != key and not k.startswith(key + ".")}
    out.update((k, source) for k in paths_of(config) if k == key or k.startswith(key + "."))
    return out


def settle(sources: dict[str, str], config: dict, unknown: str = DEFAULT) -> dict[str, str]:
    """The source of every key of config, those sources does not know (the defaults filled in) given unknown; keys
    that config does not have (a base's section that _delete_ replaced) dropped."""
    return {key: sources.get(key, unknown) for key in paths_of(config)}


_IN_A_FILE = re.compile(r" line \d+$")  # how compose writes a file's source: "configs/exp.yaml line 12"
_KEY = re.compile(r"config key '([^']+)'|([A-Za-z_][\w.\[\]]*)")


def located(problems: Iterable[str], sources: dict[str, str]) -> list[str]:
    """Each problem with the file and line of the key it names (or of the nearest section that has one) appended:
    "... (configs/exp.yaml line 12)"; a value from the command line or a default is left as it is."""
    out = []
    for problem in problems:
        match = _KEY.match(problem)
        key = re.sub(r"\[(\d+)\]", r".\1", match.group(1) or match.group(2)) if match else ""
        while key and key not in sources:
            key = key.rpartition(".")[0]
        source = sources.get(key, DEFAULT)
        out.append(f"{problem} ({source})" if _IN_A_FILE.search(source) and source not in problem else problem)
    return out


def render(config: dict, sources: dict[str, str]) -> str:
    """The resolved config, one value a line as an override would set it, with its source after '#'."""
    rows = [(f"{key}={json.dumps(value)}", sources.get(key, DEFAULT)) for key, value in leaves(config).items()]
    width = min(max(len(setting) for setting, _ in rows), 60)
    return "\n".join(f"{setting:<{width}}  # {source}" for setting, source in rows)
