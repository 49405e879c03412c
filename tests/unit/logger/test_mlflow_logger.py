"""logger/mlflow_logger.py without a store: the config as parameters, where runs go, and that neither this module nor
any other imports mlflow before a run names the logger (the end-to-end tests are in integration/test_mlflow.py)."""
from __future__ import annotations

import ast
import sys

from conftest import ROOT, tiny_config
from logger.mlflow_logger import PARAM_LIMIT, _artifact_location, as_params, tracking_uri
from parse_config import validate, with_defaults


def test_the_config_becomes_dotted_parameters_cut_at_the_limit():
    config = {"name": "run", "arch": {"type": "Net", "args": {"channels": 4, "drop": None}}, "metrics": ["accuracy"],
              "loggers": [{"type": "mlflow", "args": {}}], "flag": True, "empty": [], "long": "x" * 600,
              "odd key!": 1.5}
    assert as_params(config) == {"name": "run", "arch.type": "Net", "arch.args.channels": "4", "arch.args.drop": "null",
                               "metrics.0": "accuracy", "loggers.0.type": "mlflow", "loggers.0.args": "{}",
                               "flag": "true", "empty": "[]", "long": "x" * PARAM_LIMIT, "odd key_": "1.5"}


def test_runs_go_to_the_given_uri_else_the_environments_else_a_sqlite_file_under_save_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path / "saved") == f"sqlite:///{tmp_path / 'saved' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(None, "saved") == f"sqlite:///{tmp_path / 'saved' / 'mlflow.db'}"  # absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(None, "saved") == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///other.db", "saved") == "sqlite:///other.db"
    # a new experiment's files: beside a SQLite file (never ./mlruns); a server's own default elsewhere
    assert _artifact_location(f"sqlite:///{tmp_path}/m.db", "Exp") == (tmp_path / "mlartifacts" / "Exp").as_uri()
    assert _artifact_location("http://127.0.0.1:5000", "Exp") is None


def test_a_logger_whose_package_is_missing_is_one_problem_naming_the_entry_and_the_fix(tmp_path, monkeypatch):
    config = with_defaults({**tiny_config(tmp_path), "loggers": ["csv", {"type": "mlflow", "args": {}}]})
    assert validate(config) == []
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    assert validate(config) == ["loggers.1: the 'mlflow' logger needs mlflow, which is not installed; "
                                "pip install -r requirements-mlflow.txt"]


def module_level_imports(path) -> set[str]:
    """The top-level packages a file imports outside functions (and outside `if TYPE_CHECKING:`)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_module_imports_mlflow_when_imported():
    """mlflow's import takes about a second and it is optional: only the logger, once built, imports it."""
    modules = [p for folder in ("", "base", "config", "data_loader", "logger", "model", "run", "trainer", "utils")
               for p in sorted((ROOT / folder).glob("*.py"))]
    assert len(modules) > 50 and ROOT / "logger" / "mlflow_logger.py" in modules
    assert [str(p.relative_to(ROOT)) for p in modules if "mlflow" in module_level_imports(p)] == []
