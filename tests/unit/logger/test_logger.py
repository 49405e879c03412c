"""Tests for logger/logger.py: setup_logging (the console and info.log)."""
from __future__ import annotations

import logging

import pytest

from logger import setup_logging
from logger.logger import BeforeTheRun

pytestmark = pytest.mark.usefixtures("restore_logging")  # setup_logging reconfigures the root logger


# ---------------------------------------------------------------- setup_logging

def file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def test_setup_logging_without_dir_is_console_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_logging(None)
    logging.getLogger("test_logging").warning("console only")
    assert file_handlers() == []
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler, BeforeTheRun]
    assert not list(tmp_path.rglob("info.log"))


def test_what_is_logged_before_the_run_directory_exists_reaches_its_info_log_once(tmp_path, capsys):
    logger = logging.getLogger("test_logging")
    setup_logging(None)
    logger.warning("found at the start")
    setup_logging(tmp_path)
    logger.warning("during the run")
    assert capsys.readouterr().out.splitlines() == ["found at the start", "during the run"]  # the console: once
    lines = (tmp_path / "info.log").read_text().splitlines()
    assert [line.rsplit(" - ", 1)[-1] for line in lines] == ["found at the start", "during the run"]
    setup_logging(None)  # a later command's start forgets them
    (tmp_path / "later").mkdir()
    setup_logging(tmp_path / "later")
    assert (tmp_path / "later" / "info.log").read_text() == ""


def test_setup_logging_twice_does_not_leak_handlers(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    logger = logging.getLogger("test_logging")
    setup_logging(first)
    logger.warning("line of the first run")
    setup_logging(second)
    logger.warning("line of the second run")
    assert [h.baseFilename for h in file_handlers()] == [str(second / "info.log")]
    first_text, second_text = (first / "info.log").read_text(), (second / "info.log").read_text()
    assert "line of the first run" in first_text and "second run" not in first_text
    assert "line of the second run" in second_text and "first run" not in second_text
