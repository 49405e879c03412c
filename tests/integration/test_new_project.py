"""new_project.py: which files a scaffolded copy gets, refusals, and that the copy trains."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # import new_project and utils however pytest is started
    sys.path.insert(0, str(ROOT))

import new_project  # noqa: E402
from utils.errors import UserError  # noqa: E402

KEPT = [
    ".ci/run",
    ".gitignore",
    "config.json",
    "data_loader/data_loaders.py",
    "model/data/keep.txt",      # a nested folder named data is user code
    "model/model.py",
    "tests/data/sample.txt",
    "tests/saved/expected.json",
    "tests/test_other.py",
    "train.py",
    "utils/errors.py",
]
DROPPED = [
    ".git/HEAD",
    ".hypothesis/examples/x",
    ".ipynb_checkpoints/notes-checkpoint.ipynb",
    ".mypy_cache/x",
    ".pytest_cache/x",
    ".ruff_cache/x",
    "data/MNIST/x",
    "model/.ipynb_checkpoints/y",
    "model/__pycache__/m.cpython-311.pyc",
    "model/stale.pyc",
    "my_project.egg-info/PKG-INFO",
    "saved/models/x.pth",
    "tests/.pytest_cache/v",
    "tests/integration/test_new_project.py",
]


def relative_files(directory: Path) -> list[str]:
    """Sorted relative paths of all files under directory."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def scaffold(script: Path, target: Path) -> subprocess.CompletedProcess:
    """Run the scaffolder script as a user would."""
    return subprocess.run([sys.executable, str(script), str(target)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A small project with new_project.py, user files, and everything that must not be copied."""
    project = tmp_path / "Project"
    for rel in KEPT + DROPPED:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(f"contents of {rel}\n")
    (project / ".ci/run").chmod(0o755)
    shutil.copy2(ROOT / "new_project.py", project / "new_project.py")
    shutil.copy2(ROOT / "utils/errors.py", project / "utils/errors.py")
    return project


def test_copies_exactly_the_project_files(fake: Path, tmp_path: Path):
    target = tmp_path / "NewProject"
    result = scaffold(fake / "new_project.py", target)
    assert result.returncode == 0, result.stderr
    assert relative_files(target) == sorted(KEPT)
    assert stat.S_IMODE((target / ".ci/run").stat().st_mode) == 0o755
    assert (target / "model/data/keep.txt").read_text() == "contents of model/data/keep.txt\n"


def test_prints_next_commands(fake: Path, tmp_path: Path):
    target = tmp_path / "NewProject"
    result = scaffold(fake / "new_project.py", target)
    assert result.stdout.splitlines() == [
        f"Created {target.resolve()}. Next:", f"  cd {target}", "  python train.py -c config.json"]


def test_accepts_an_existing_empty_directory(fake: Path, tmp_path: Path):
    target = tmp_path / "Empty"
    target.mkdir()
    result = scaffold(fake / "new_project.py", target)
    assert result.returncode == 0, result.stderr
    assert relative_files(target) == sorted(KEPT)


def test_refuses_a_non_empty_target(fake: Path, tmp_path: Path):
    target = tmp_path / "Existing"
    target.mkdir()
    (target / "mine.txt").write_text("precious\n")
    result = scaffold(fake / "new_project.py", target)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(target) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert relative_files(target) == ["mine.txt"]
    assert (target / "mine.txt").read_text() == "precious\n"


def test_refuses_a_target_inside_the_project(fake: Path):
    target = fake / "model" / "Copy"
    result = scaffold(fake / "new_project.py", target)
    assert result.returncode == 2
    assert "inside the project" in result.stderr and str(target) in result.stderr
    assert not target.exists()


def test_missing_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        new_project.main([])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_main_raises_user_error_in_process(tmp_path: Path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="exists and is not empty"):
        new_project.main([str(tmp_path)])
    with pytest.raises(UserError, match="inside the project"):
        new_project.main([str(ROOT / "NewProject")])
    assert not (ROOT / "NewProject").exists()


def test_ignore_keeps_top_level_exclusions_top_level():
    ignore = new_project.ignore_for(ROOT)
    names = ["data", "saved", ".git", "new_project.py", "test_new_project.py", "__pycache__", "a.py"]
    assert ignore(str(ROOT), names) == {"data", "saved", ".git", "new_project.py", "__pycache__"}
    assert ignore(str(ROOT / "tests"), names) == {"__pycache__"}
    assert ignore(str(ROOT / "tests" / "integration"), names) == {"test_new_project.py", "__pycache__"}
    assert ignore(str(ROOT / "model"), names) == {"__pycache__"}


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "train.py").exists() or not (ROOT / "config.json").exists(),
                    reason="the real project has no train.py/config.json yet")
def test_scaffolded_real_project_trains_and_tests(tmp_path: Path):
    new = tmp_path / "NewProject"
    result = scaffold(ROOT / "new_project.py", new)
    assert result.returncode == 0, result.stderr
    assert not (new / "new_project.py").exists() and not (new / ".git").exists()
    assert not (new / "tests/integration/test_new_project.py").exists()
    from config.compose import read_config

    for example in ("cifar10.json", "image_folder.json"):  # the _base_ files its examples list came along
        assert read_config(new / "configs" / example) == read_config(ROOT / "configs" / example)

    train = subprocess.run(
        [sys.executable, "train.py", "-c", "config.json", "trainer.epochs=1", "--run-id", "scaffold"],
        cwd=new, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    config = json.loads((new / "config.json").read_text())
    save_dir = new / config["trainer"].get("save_dir", "saved")
    assert (save_dir / "models" / config["name"] / "scaffold" / "checkpoint-epoch1.pth").is_file()

    if (new / "tests/unit/utils/test_registry.py").exists():
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/unit/utils/test_registry.py"],
                               cwd=new, capture_output=True, text=True, timeout=300)
        assert tests.returncode == 0, tests.stdout[-3000:]
