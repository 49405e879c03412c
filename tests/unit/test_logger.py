"""Tests for logger/logger.py: setup_logging (the console and info.log) and MetricsFile (metrics.jsonl)."""
from __future__ import annotations

import json
import logging

import pytest

from logger import MetricsFile, setup_logging

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


# ---------------------------------------------------------------- MetricsFile

def test_metrics_file_append_and_truncate_after(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.truncate_after(1)  # no file yet: nothing to do
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "loss": 1.0 / epoch})
    assert [json.loads(line) for line in metrics.path.read_text().splitlines()] == [
        {"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}, {"epoch": 3, "loss": 1 / 3}]
    metrics.truncate_after(3)
    assert len(metrics.path.read_text().splitlines()) == 3
    metrics.truncate_after(1)
    metrics.append({"epoch": 2, "loss": 0.25})
    assert [json.loads(line)["epoch"] for line in metrics.path.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))


def test_metrics_file_truncate_drops_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')  # a crash while appending epoch 2
    metrics = MetricsFile(path)
    metrics.truncate_after(1)
    metrics.append({"epoch": 2, "loss": 0.5})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]


def test_metrics_file_none_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = MetricsFile(None)
    metrics.append({"epoch": 1})
    metrics.truncate_after(0)
    assert list(tmp_path.iterdir()) == []
