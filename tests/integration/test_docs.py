"""The README's promises: its Quick start is what CI runs, and it documents every command, flag and config key."""
import re

import pytest

from conftest import ROOT
from config.schema import flat_keys
from parse_config import SCHEMA


README = (ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_second_verbatim():
    install_and_train, install_and_test = quick_start()
    assert "python train.py -c config.json" in install_and_train
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci


def test_requirements_name_every_dependency():
    names = {re.split(r"[<>=]", line)[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert {"torch", "torchvision", "tensorboard", "tqdm", "pytorch_optimizer", "scikit-learn", "torchinfo"} <= names


def test_every_cli_flag_is_documented():
    import train

    for action in train.build_parser(train.OPTIONS)._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help", "--learning_rate", "--batch_size", "--config",
                                                      "--resume", "--device"):
                assert flag in README, flag
    for short in ("-c", "-r", "-d cpu", "--out", "new_project.py", "test.py -r"):
        assert short in README, short


@pytest.mark.skipif(not (ROOT / "README.md").is_file(), reason="no README.md")
def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in flat_keys(SCHEMA) if f"`{key}`" not in readme]
    assert missing == [], f"document these keys in README.md: {missing}"
