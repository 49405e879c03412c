"""Configs that compose: a file lists base files under "_base_" (one path or a list, relative to the file; JSON or
YAML), merged depth-first in order and then overridden by the file itself; several -c files merge in order. Objects
merge key by key, other values replace; an object with "_delete_": true replaces the one it would merge into. The
source of each value (file and line) is kept beside the merged config."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from config.files import ConfigFile, read_config_file
from config.merge import DELETE, merge_layer, without_markers
from utils.errors import UserError

BASE = "_base_"


def compose(paths: Sequence[str | Path]) -> tuple[dict, dict[str, str]]:
    """The config the files make, merged in order (each after its bases; _delete_ markers kept for a merge onto a
    checkpoint's config), and the source of each of its values by dotted key ('trainer.epochs': 'a.yaml line 3')."""
    config: dict = {}
    sources: dict[str, str] = {}
    for path in paths:
        layer, layer_sources = _resolve(Path(path), ())
        config = merge_layer(config, layer)
        sources.update(layer_sources)
    return config, sources


def read_config(*paths: str | Path) -> dict:
    """The config the files make, as train.py -c reads them before the defaults: bases merged, _delete_ applied."""
    return without_markers(compose(paths)[0])


def config_paths(given: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """The -c files of parsed arguments: none, one path, or the list that -c given several times makes."""
    if given is None:
        return []
    return [given] if isinstance(given, (str, Path)) else list(given)


def _resolve(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """A file's config after its bases (chain: the files that led to it), and the sources of its values."""
    if any(path.resolve() == earlier.resolve() for earlier in chain):
        raise UserError(f"config files list each other as bases: {_chain(*chain, path)}; remove one of those "
                        f"_base_ entries")
    try:
        file = read_config_file(path)
    except UserError as e:
        if not chain:
            raise
        raise UserError(f"{e} (a base: {_chain(*chain, path)})") from None
    _check_markers(file)
    config: dict = {}
    sources: dict[str, str] = {}
    for base, line in _bases(file):
        base_path = Path(os.path.normpath(path.parent / base))
        if not base_path.exists():
            raise UserError(f"base config {base_path} not found ({_chain(*chain, path, base_path)}); fix the _base_ "
                            f"entry in {path} line {line}: a base's path is relative to the file that lists it")
        layer, layer_sources = _resolve(base_path, (*chain, path))
        config = merge_layer(config, layer)
        sources.update(layer_sources)
    own = {key: value for key, value in file.data.items() if key != BASE}
    sources.update((key, f"{path} line {line}") for key, line in file.lines.items()
                   if key != BASE and not key.startswith(BASE + "."))
    return merge_layer(config, own), sources


def _bases(file: ConfigFile) -> list[tuple[str, int]]:
    """The file's _base_ entries, each with its line."""
    given = file.data.get(BASE, [])
    if isinstance(given, str) and given:
        return [(given, file.lines[BASE])]
    if not isinstance(given, list) or not all(isinstance(entry, str) and entry for entry in given):
        raise UserError(f"{file.path} line {file.lines.get(BASE)}: _base_ must be a file path or a list of them "
                        f"(relative to this file), got {given!r}")
    return [(entry, file.lines.get(f"{BASE}.{i}", file.lines[BASE])) for i, entry in enumerate(given)]


def _check_markers(file: ConfigFile) -> None:
    """Each _delete_ in the file is true or false, and in a section."""
    if DELETE in file.data:
        raise UserError(f"{file.path} line {file.lines.get(DELETE)}: _delete_ replaces a section; at the top of a "
                        f"file it has nothing to replace: put it in a section, or leave out _base_")
    stack: list[tuple[str, Any]] = list(file.data.items())
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            if DELETE in value and not isinstance(value[DELETE], bool):
                raise UserError(f"{file.path} line {file.lines.get(f'{key}.{DELETE}')}: {key}.{DELETE} must be true "
                                f"or false, got {value[DELETE]!r}")
            stack.extend((f"{key}.{k}", v) for k, v in value.items())


def _chain(*paths: Path) -> str:
    return " -> ".join(str(p) for p in paths)
