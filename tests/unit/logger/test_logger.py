"""Tests for logger/logger.py: setup_logging (the console and info.log)."""
from __future__ import annotations

import logging

import pytest

from logger import setup_logging

pytestmark = pytest.mark.usefixtures("restore_logging")  # setup_logging reconfigures the root logger


# ---------------------------------------------------------------- setup_logging

def file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def test_setup_logging_without_dir_is_console_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_logging(None)
    logging.getLogger("test_logging").warning("console only")
    assert file_handlers() == []
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler]
    assert not list(tmp_path.rglob("info.log"))


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
