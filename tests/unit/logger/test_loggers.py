"""logger/loggers.py: the config's "loggers" by name, metrics.csv equal to metrics.jsonl's numbers, the checks of the
entries, and how training ended as the loggers hear it."""
from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import tiny_config
from logger.loggers import CsvFile, TensorBoard, build_loggers
from logger.reporter import FAILED, FINISHED, KILLED, Sink
from parse_config import validate, with_defaults
from tiny_trainers import build, outputs_in, sigterm_at
from utils.checkpoint import RunDirs, load_checkpoint
from utils.interrupt import StopTraining
from utils.registry import LOGGERS


def numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for r in records]


def read_csv(path) -> list[dict]:
    """metrics.csv as pandas reads it (where installed), else as the csv module does, blanks left out."""
    try:
        import pandas
    except ImportError:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in pandas.read_csv(path).to_dict("records")]


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_csv_holds_metrics_jsonls_numbers_and_follows_a_resume(tmp_path):
    trainer = build(tmp_path, epochs=3, val_every_steps=4)
    trainer.outputs = outputs_in(tmp_path, trainer.settings, loggers=["csv"])
    trainer.train()
    records = jsonl(tmp_path / "metrics.jsonl")
    assert {"step", "val_loss", "loss"} <= records[-1].keys() and len(records) > 3
    assert read_csv(tmp_path / "metrics.csv") == numbers(records)  # float for float, blanks where a row has none
    assert not (tmp_path / "events").exists() and not list(tmp_path.glob("events.out.tfevents.*"))
    resumed = build(tmp_path, epochs=3, val_every_steps=4)
    resumed.outputs = outputs_in(tmp_path, resumed.settings, loggers=["csv"])
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint-epoch3.pth") | {"epoch": 1, "global_step": 5})
    kept = jsonl(tmp_path / "metrics.jsonl")
    assert len(kept) < len(records) and read_csv(tmp_path / "metrics.csv") == numbers(kept)


@pytest.mark.parametrize("loggers, problem", [
    (["cvs"], "loggers.0: unknown logger 'cvs'. Did you mean 'csv'? List them all with: python train.py --list logger"),
    ([{"type": "csv", "args": {"nope": 1}}], "loggers.0.args.nope: CsvFile has no argument 'nope'"),
    ([{"type": "csv", "extra": 1}], "loggers.0: unknown key(s) ['extra']; allowed: type, args"),
    ([3], 'loggers.0: must be a name or an object {"type": ..., "args": {...}}, got 3'),
    (["csv", "csv"], "loggers: 'csv' appears twice; give each logger once"),
    ("csv", "config key 'loggers' must be"),
])
def test_a_mistaken_logger_entry_is_named(tmp_path, loggers, problem):
    config = with_defaults({**tiny_config(tmp_path), "loggers": loggers})
    assert any(p.startswith(problem) for p in validate(config)), validate(config)


def test_the_default_is_tensorboard_and_trainer_tensorboard_false_leaves_it_out(tmp_path):
    dirs = RunDirs(tmp_path, tmp_path)
    assert with_defaults(tiny_config(tmp_path))["loggers"] == ["tensorboard"]
    assert [type(s) for s in build_loggers(dirs)] == [TensorBoard]
    assert [type(s) for s in build_loggers(dirs, ["tensorboard", "csv"], tensorboard=False)] == [CsvFile]
    assert {"tensorboard", "csv"} <= set(LOGGERS.names())


class Outcome(Sink):
    def __init__(self, dirs):
        self.outcomes = []

    def end(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def with_outcome(trainer):
    sink = Outcome(None)
    trainer.outputs.reporter.sinks.append(sink)
    return sink.outcomes


def test_the_loggers_hear_how_training_ended(tmp_path):
    trainer = build(tmp_path / "done", epochs=1)
    assert (with_outcome(trainer), trainer.train())[0] == [FINISHED]
    trainer = build(tmp_path / "stopped", epochs=3)
    outcomes = with_outcome(trainer)
    sigterm_at(trainer, 3)
    with pytest.raises(StopTraining):
        trainer.train()
    assert outcomes == [KILLED]
    trainer = build(tmp_path / "failed", epochs=3)
    outcomes = with_outcome(trainer)
    trainer.train_step = lambda data, target: 1 / 0
    with pytest.raises(ZeroDivisionError):
        trainer.train()
    assert outcomes == [FAILED]
