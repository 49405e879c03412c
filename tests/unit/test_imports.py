"""The layering holds: modules import downward only, and no import cycle (read with ast, function-level imports
included, so a cycle cannot hide behind one)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

# Lower numbers are lower layers. A module imports its own package or lower layers; model/, data_loader/ and
# trainer/ stand beside each other and import none of each other; config/ (the config machinery) sits above them,
# and parse_config, its face, above it; then the run assembly (run/), and the commands (the benchmarks are commands
# too) beside each other: no command imports another, each is a thin layer over run/.
LAYERS = {"utils": 0, "logger": 1, "base": 2, "model": 3, "data_loader": 3, "trainer": 3, "config": 4,
          "parse_config": 5, "run": 6, "train": 7, "test": 7, "new_project": 7, "predict": 7, "export": 7, "tune": 7,
          "runs": 7, "benchmarks": 7}
COMMANDS = ("train", "test", "new_project", "predict", "export", "tune", "runs")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layers above."""
    modules = {}
    for top in LAYERS:
        if (ROOT / f"{top}.py").is_file():
            modules[top] = ROOT / f"{top}.py"
        for path in sorted((ROOT / top).glob("*.py")) if (ROOT / top).is_dir() else []:
            modules[top if path.stem == "__init__" else f"{top}.{path.stem}"] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that the module imports anywhere in its file."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # 'utils.checkpoint.unwrap' -> 'utils.checkpoint'
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer(module: str) -> tuple[str, int]:
    top = module.split(".")[0]
    return top, LAYERS[top]


def test_the_graph_sees_the_packages_and_their_imports():
    imports = graph()
    assert {"utils.registry", "base.base_trainer", "trainer.trainer", "config", "config.parser", "parse_config",
            "train", "test"} <= set(imports)
    assert "config" in imports["parse_config"] and "config.validation" in imports["config.parser"]
    assert "base.base_trainer" in imports["trainer.trainer"] or "base" in imports["trainer.trainer"]
    assert {"run", "benchmarks.gpu_check"} <= set(imports) and "run" in imports["test"]  # test.py builds through run


def test_no_command_imports_another():
    imports = graph()
    found = {command: sorted(imports[command] & set(COMMANDS)) for command in COMMANDS if command in imports}
    found.update({m: sorted(t & set(COMMANDS)) for m, t in imports.items() if m.startswith("benchmarks.")})
    assert {m: t for m, t in found.items() if t} == {}


def test_every_import_goes_downward():
    upward = []
    for module, targets in graph().items():
        top, level = layer(module)
        for target in targets:
            target_top, target_level = layer(target)
            if target_top != top and target_level >= level:
                upward.append(f"{module} imports {target}")
    assert upward == [], ("imports must run downward (commands -> run/ -> parse_config -> config/ -> trainer/ -> base/ "
                          "-> utils/)")


def test_nothing_below_the_config_package_imports_it():
    """The trainer, the model zoo, the data loaders, base/ and logger/ receive settings objects and numbers; they
    never import the config machinery (nor its face)."""
    below = ("utils", "logger", "base", "model", "data_loader", "trainer")
    assert {m: sorted(t) for m, t in graph().items() if m.split(".")[0] in below
            and any(x.split(".")[0] in ("config", "parse_config") for x in t)} == {}


def test_utils_imports_nothing_from_the_packages_above_it():
    assert {m: t for m, t in graph().items() if m.startswith("utils") and any(not x.startswith("utils") for x in t)} == {}


def test_no_import_cycle():
    imports = graph()
    cycles, done, stack = [], set(), []

    def visit(module: str) -> None:
        if module in stack:
            cycles.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        stack.append(module)
        for target in sorted(imports.get(module, ())):
            # a package's __init__ importing its own submodules is how packages register: not a cycle unless
            # the submodule imports the package back
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(imports):
        visit(module)
    assert cycles == [], [" -> ".join(c) for c in cycles]


@pytest.mark.parametrize("source, expected", [
    ("from parse_config import ConfigParser\n", {"parse_config"}),
    ("def f():\n    import trainer.trainer\n", {"trainer.trainer"}),
    ("from utils.checkpoint import unwrap\nfrom . import errors\n", {"utils.checkpoint", "utils.errors"}),
])
def test_imports_are_found_wherever_they_are_written(tmp_path, source, expected):
    path = tmp_path / "bad.py"
    path.write_text(source)
    assert imports_of("utils.bad", path, {**project_modules(), "utils.bad": path}) == expected
