"""Tests for logger/reporter.py: the Reporter and its sinks' one interface (a new tracker is one Sink subclass fed the
rows metrics.jsonl gets), the console's compact values and metrics.jsonl (MetricsFile). TensorBoard's layout is read
back in tests/integration/test_logging.py."""
from __future__ import annotations

import json

import torch

from base import RunOutputs
from conftest import read_metrics
from logger.reporter import ConsoleLines, MetricsFile, Reporter, RunInfo, Sink, TensorBoardSink, compact
from tiny_trainers import build


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_the_reporter_has_the_sinks_methods_and_a_sink_does_nothing_unless_it_overrides():
    assert public_methods(Reporter) == public_methods(Sink)
    sink = Sink()
    sink.start(RunInfo())
    sink.log({"epoch": 1, "loss": 1.0}, {})
    sink.log_step({"step": 1, "loss_step": 1.0})
    sink.log_image("input", torch.zeros(3, 2, 2), 1)
    sink.log_histogram("weight", torch.zeros(3), 1)
    sink.resume(1, None)
    sink.close()


class Recording(Sink):
    """A tracker as the next one would be written: one class, fed the rows."""

    def __init__(self):
        self.calls = []

    def start(self, run):
        self.calls.append(("start", run))

    def log(self, row, best):
        self.calls.append(("log", dict(row), dict(best)))

    def log_step(self, row):
        self.calls.append(("log_step", dict(row)))

    def close(self):
        self.calls.append(("close",))


def test_a_new_sink_gets_the_rows_metrics_jsonl_gets_the_step_rows_and_the_run(tmp_path):
    trainer = build(tmp_path, epochs=2, val_every_steps=3, log_step=2, monitor="min val_loss", early_stop=0)
    recording = Recording()
    trainer.outputs.reporter.sinks.append(recording)
    trainer.train()
    kinds = [call[0] for call in recording.calls]
    assert kinds[0] == "start" and kinds[-1] == "close" and kinds.count("start") == kinds.count("close") == 1
    run = recording.calls[0][1]
    assert run.config == trainer.config and "val_loss" in run.keys and run.confusion_matrices == frozenset()
    rows = [call[1] for call in recording.calls if call[0] == "log"]
    assert rows == read_metrics(tmp_path)  # every row, in order: mid-epoch validations (with "step") and epochs
    assert [row["step"] for row in rows] == [3, 5, 6, 9, 10]
    bests = [call[2] for call in recording.calls if call[0] == "log"]
    assert all(set(best) == {"val_loss"} for best in bests)
    assert bests[-1]["val_loss"] == min(row["val_loss"] for row in rows)
    steps = [call[1] for call in recording.calls if call[0] == "log_step"]
    assert [row["step"] for row in steps] == [2, 4, 6, 8, 10] and all(set(r) == {"step", "loss_step"} for r in steps)


def test_an_unopened_run_reports_to_the_console_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reporter = RunOutputs().reporter
    assert [type(sink) for sink in reporter.sinks] == [ConsoleLines]
    reporter.log({"epoch": 1, "loss": 0.5}, {})
    assert list(tmp_path.iterdir()) == []


def test_an_opened_run_reports_to_tensorboard_only_when_asked(tmp_path):
    from config import TrainerSettings
    from logger.loggers import TensorBoard
    from utils.checkpoint import RunDirs

    opened = RunOutputs().open(RunDirs(tmp_path, tmp_path), TrainerSettings(epochs=1, tensorboard=False))
    assert [type(sink) for sink in opened.reporter.sinks] == [ConsoleLines, MetricsFile]
    opened = RunOutputs().open(RunDirs(tmp_path, tmp_path), TrainerSettings(epochs=1, tensorboard=True))
    assert [type(sink) for sink in opened.reporter.sinks] == [ConsoleLines, MetricsFile, TensorBoard]
    opened.reporter.close()


def test_compact_shows_long_results_in_part():
    assert compact(0.123456789) == "0.123457"
    assert compact([[1, 2], [3, 4]]) == "[[1, 2], [3, 4]]"
    assert compact([[1] * 11] * 11) == "[11x11 values, in metrics.jsonl]"
    assert compact(list(range(25))).endswith("19, ... (25 values)]")
    assert compact({"cat": 0.5, "dog": 1}) == "{cat: 0.5, dog: 1}"


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
