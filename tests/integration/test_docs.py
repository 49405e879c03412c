"""The README and docs/ keep their promises: the Quick start is what CI runs; the walkthrough's commands, run as a new
user pastes them, train on a folder of images and write the files it names; the README stays a front door (short,
linking every docs page); every link between the pages resolves; every command's flags are in docs/commands.md."""
from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
COMMANDS_PAGE = DOCS / "commands.md"
WALKTHROUGH = "## Train on your own folder of images"
MAX_README_LINES = 250
LINK = re.compile(r"\]\(([^)\s]+)\)")


def section(text: str, heading: str) -> str:
    """The text under heading, up to the next heading of the same level."""
    body = text.split(heading + "\n", 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of a language in text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def quick_start() -> list[str]:
    block = blocks(section(README, "## Quick start"), "bash")[0]
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_second_verbatim():
    install_and_train, install_and_test = quick_start()
    assert install_and_train == "pip install -r requirements.txt && python train.py -c config.json"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci


def test_requirements_name_every_dependency():
    names = {re.split(r"[<>=]", line)[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert {"torch", "torchvision", "tensorboard", "tqdm", "pytorch_optimizer", "scikit-learn", "torchinfo"} <= names


def test_the_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:2] == ["## Quick start", WALKTHROUGH]
    linked = {target.split("#")[0] for target in LINK.findall(README)}
    assert {f"docs/{page.name}" for page in PAGES} <= linked, "link every docs page from the README"


def test_every_command_flag_is_documented_in_docs_commands():
    import export
    import predict
    import runs
    import test as test_script
    import train
    import tune

    page = COMMANDS_PAGE.read_text()
    parsers = {"train.py": train.build_parser(train.OPTIONS), "test.py": test_script.build_parser(),
               "predict.py": predict.build_parser(), "export.py": export.build_parser(), "tune.py": tune.build_parser(),
               "runs.py": runs.build_parser()}
    for command, parser in parsers.items():
        described = section(page, f"## {command}")
        for action in actions(parser):
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in described, f"docs/commands.md, ## {command}: document {flag}"
    for short in ("-c", "-r", "-d cpu", "--out", "new_project.py", "test.py -r", "torchrun"):
        assert short in page, short


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's arguments and its sub-commands' (runs.py list, show, ...)."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found += actions(subparser)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (outside code blocks), duplicates numbered as GitHub does."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("page", [README_PATH, *PAGES], ids=lambda p: p.name)
def test_every_link_to_a_page_or_heading_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name}: {target} is not a file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_docs_page_starts_with_a_title_and_a_summary_and_long_ones_list_their_contents(page):
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2].strip(), f"{page.name}: '# Title', '', summary"
    if len(lines) > 80 and page.name != "config.md":  # config.md is generated: a table per section
        assert any(line.startswith("Contents:") for line in lines[:12]), f"{page.name}: add a contents line"


def test_code_that_sends_the_user_to_a_docs_page_names_one_that_exists():
    sources = [p for p in ROOT.glob("*.py")] + [p for d in ("base", "config", "data_loader", "logger", "model",
                                                             "run", "trainer", "utils") for p in (ROOT / d).glob("*.py")]
    named = {name for path in sources for name in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert "docs/predictions.md" in named  # a data loader without inference_source says where to read how
    assert [name for name in named if not (ROOT / name).is_file()] == []


# ---- the walkthrough, run as a new user would run it

CLASSES = {"cat": 6, "dog": 6, "rabbit": 6}
SCRIPTS = ("train.py", "test.py", "predict.py", "export.py")


def walkthrough_commands() -> list[list[str]]:
    """The walkthrough's commands as argument lists, in order, but the pip installs."""
    commands = []
    for block in blocks(section(README, WALKTHROUGH), "bash"):
        for line in block.splitlines():
            if line.strip() and not line.startswith("pip install"):
                commands.append(shlex.split(line))
    return commands


def run_files_promised() -> list[str]:
    """The files the walkthrough says a run writes, as glob patterns (from its lines that start with saved/)."""
    patterns = []
    for block in blocks(section(README, WALKTHROUGH), "text"):
        for line in block.splitlines():
            if line.startswith("saved/"):
                folder, *names = line.split()
                patterns += [folder + name.replace("<N>", "*").rstrip("/") for name in names]
    return patterns


@pytest.fixture
def a_users_folder(tmp_path, monkeypatch):
    """A working directory as the walkthrough's user has it: the shipped config and data/pets/{train,test,new}."""
    from fake_data import write_image, write_image_folder

    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # image_folder.json and the _base_ files it lists
    write_image_folder(tmp_path / "data/pets/train", CLASSES, size=(24, 20))
    write_image_folder(tmp_path / "data/pets/test", {name: 2 for name in CLASSES}, size=(24, 20))
    for i in range(5):
        write_image(tmp_path / "data/pets/new" / f"photo{i}.jpg", size=(30, 20), seed=500 + i)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
def test_the_walkthrough_trains_tests_predicts_and_exports_as_the_readme_says(a_users_folder, capsys):
    import export
    import onnxruntime
    import predict
    import test as test_script
    import train

    commands = walkthrough_commands()
    assert [command[:2] for command in commands] == [["python", script] for script in SCRIPTS]
    mains = {"train.py": train.main, "test.py": test_script.main, "predict.py": predict.main,
             "export.py": export.main}
    results = {}
    for _, script, *args in commands:
        if script == "train.py":
            args += ["trainer.epochs=1", "trainer.verbosity=0"]  # seconds, not the config's 30 epochs
        results[script] = mains[script](args)

    run = Path("saved/models/ImageFolder_CNN/pets")
    promised = run_files_promised()
    assert str(run / "model_best.pth") in promised and len(promised) >= 8
    for pattern in promised:
        assert list(Path().glob(pattern)), f"the README says a run writes {pattern}"
    assert json.loads((run / "config.json").read_text())["data_loader"]["args"]["classes"] == list(CLASSES)

    tested = json.loads((run / "test_results.json").read_text())
    assert tested["n_samples"] == 6 and 0 <= tested["accuracy"] <= 1 and "per_class" in tested["class_report"]
    assert tested["checkpoint"] == str(run / "model_best.pth")

    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["file"] for row in rows] == [f"photo{i}.jpg" for i in range(5)]
    assert {"class", "probability", "top1_class", "top1_prob", "top3_class"} <= set(rows[0])
    assert {row["class"] for row in rows} <= set(CLASSES)

    session = onnxruntime.InferenceSession(str(run / "model.onnx"))
    assert results["export.py"]["differences"]  # export.py verified the file against PyTorch
    scores = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert scores.shape == (1, len(CLASSES))  # --dynamic-batch: a batch of one works

    # docs/export.md's script prepares the new images from the file's metadata alone and predicts what predict.py did.
    example = re.search(r"<!-- image example[^>]*-->\n```python\n(.*?)```", (DOCS / "export.md").read_text(), re.S)
    new = [f"data/pets/new/{row['file']}" for row in rows]
    done = subprocess.run([sys.executable, "-c", example.group(1), str(run / "model.onnx"), *new],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = [line.split() for line in done.stdout.splitlines()]
    assert [name for name, _, _ in printed] == new
    assert [cls for _, cls, _ in printed] == [row["class"] for row in rows]
    assert [float(p) for _, _, p in printed] == pytest.approx([float(row["probability"]) for row in rows], abs=1e-4)
