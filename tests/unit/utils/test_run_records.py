"""utils/run_records.py: a run directory read back (with or without run.json), runs found and named, differences."""
from __future__ import annotations

import json
import os
import socket
from datetime import datetime

import pytest

from utils.errors import UserError
from utils.run_records import (MISSING, Run, best_first, differences, find_run, find_runs, flatten, log_dir_of,
                               select)


def make_run(save, name, run_id, *, epochs=3, monitor="min val_loss", rows=(), manifest=None, log_line=None,
             latest=None):
    """A run directory as train.py leaves it: config.json, metrics.jsonl rows, run.json when given."""
    checkpoints, logs = save / "models" / name / run_id, save / "log" / name / run_id
    checkpoints.mkdir(parents=True)
    logs.mkdir(parents=True)
    (checkpoints / "config.json").write_text(json.dumps({"name": name, "trainer": {"epochs": epochs,
                                                                                   "monitor": monitor}}))
    (logs / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"epoch": 9, "lo')
    if manifest is not None:
        (checkpoints / "run.json").write_text(json.dumps(manifest))
    if log_line is not None:
        (logs / "info.log").write_text(log_line + "\n")
    if latest is not None:
        (checkpoints / "latest").write_text(latest + "\n")
    return checkpoints


def epoch(n, val_loss, **more):
    return {"epoch": n, "loss": 1.0, "val_loss": val_loss, "epoch_time": 2.0, **more}


def test_a_run_without_run_json_says_what_its_files_say(tmp_path):
    done = Run.read(make_run(tmp_path, "Net", "old", epochs=2, rows=[epoch(1, 0.5), epoch(2, 0.7)],
                             log_line="2024-01-02 03:04:05,678 - train - INFO - Run directory: ..."))
    assert (done.status, done.epochs, done.best[0], done.final["epoch"]) == ("finished", 2, 0.5, 2)
    assert done.duration_s == 4.0 and done.started.strftime("%Y-%m-%d %H:%M:%S") == "2024-01-02 03:04:05"
    cut = Run.read(make_run(tmp_path, "Net", "cut", epochs=5, rows=[epoch(1, 0.5)]))
    assert (cut.status, cut.started, cut.manifest) == ("unknown", None, None)
    no_log = Run.read(make_run(tmp_path, "Net", "nolog", rows=[], latest="checkpoint-epoch2.pth"))
    assert no_log.epochs == 2 and no_log.best is None and no_log.duration_s is None


def test_best_follows_the_monitor_and_counts_validations_within_epochs(tmp_path):
    rows = [epoch(1, 0.5, val_accuracy=0.7), {"epoch": 2, "step": 15, "val_loss": 0.2, "val_accuracy": 0.9},
            epoch(2, 0.4, val_accuracy=0.8, bad=float("nan"))]
    assert Run.read(make_run(tmp_path, "Net", "min", rows=rows)).best[1] == rows[1]
    assert Run.read(make_run(tmp_path, "Net", "max", monitor="max val_accuracy", rows=rows)).best[0] == 0.9
    assert Run.read(make_run(tmp_path, "Net", "off", monitor="off", rows=rows)).best is None
    assert Run.read(make_run(tmp_path, "Net", "nan", monitor="max bad", rows=rows)).best is None


def test_a_start_without_an_end_is_running_while_its_process_holds_the_lock(tmp_path):
    manifest = {"status": "running", "started": "2024-01-02T03:04:05+00:00", "duration_s": 0,
                "starts": [{"started": "2024-01-02T03:04:05+00:00", "outcome": "running"}]}
    directory = make_run(tmp_path, "Net", "r", manifest=manifest)
    started = datetime.fromisoformat(manifest["started"]).timestamp()
    for path in (directory / "config.json", directory / "run.json", log_dir_of(directory) / "metrics.jsonl"):
        os.utime(path, (started + 90, started + 90))
    died = Run.read(directory)
    assert died.status == "died" and died.duration_s == 90  # no lock: its process is gone (kill -9); last write
    (directory / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    running = Run.read(directory)
    assert running.status == "running" and running.duration_s > 3600  # up to now
    (directory / ".lock").write_text(f"pid 999999999 on {socket.gethostname()}\n")
    assert Run.read(directory).status == "died"
    (directory / ".lock").write_text("pid 1 on another-machine\n")
    assert Run.read(directory).status == "running"


def test_runs_are_found_filtered_and_sorted_best_first(tmp_path):
    make_run(tmp_path, "Net", "b", rows=[epoch(1, 0.3)], log_line="2024-01-02 00:00:02,000 - x")
    make_run(tmp_path, "Net", "a", rows=[epoch(1, 0.1)], log_line="2024-01-02 00:00:03,000 - x")
    make_run(tmp_path, "Other", "c", monitor="max val_accuracy", rows=[epoch(1, 9.0, val_accuracy=0.5)],
             log_line="2024-01-02 00:00:01,000 - x")
    make_run(tmp_path, "Other", "d", monitor="max val_accuracy", rows=[epoch(1, 9.0, val_accuracy=0.6)])
    (tmp_path / "models" / "Net" / "not-a-run").mkdir()
    runs = find_runs(tmp_path)
    assert [r.run_id for r in runs] == ["c", "b", "a", "d"]  # by start, an unknown start last
    assert [r.run_id for r in select(runs, name="N*")] == ["b", "a"]
    assert [r.run_id for r in select(runs, status="unknown")] == ["c", "b", "a", "d"]
    assert [r.run_id for r in best_first(runs)] == ["d", "c", "a", "b"]
    with pytest.raises(UserError, match=r"--save-dir .*missing: no such directory"):
        find_runs(tmp_path / "missing")


def test_a_run_is_named_by_path_log_path_name_and_id_or_id(tmp_path, monkeypatch):
    directory = make_run(tmp_path, "Net", "r1")
    make_run(tmp_path, "Other", "r1")
    make_run(tmp_path, "Other", "only")
    for text in (str(directory), str(directory / "config.json"), str(log_dir_of(directory)), "Net/r1"):
        assert find_run(text, tmp_path).checkpoint_dir.resolve() == directory.resolve(), text
    assert find_run("only", tmp_path).label == "Other/only"
    with pytest.raises(UserError, match=r"RUN 'r1' is the run id of runs of several configs \(Net/r1, Other/r1\); "
                                        r"give NAME/RUN_ID"):
        find_run("r1", tmp_path)
    with pytest.raises(UserError, match=r"RUN 'onyl': no run directory .* Did you mean 'only'\?"):
        find_run("onyl", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert find_run("models/Net/r1", tmp_path / "elsewhere").label == "Net/r1"  # a relative path


def test_differences_of_nested_objects():
    a = {"optimizer": {"type": "Adam", "args": {"lr": 0.001}}, "metrics": ["accuracy"], "extra": {}}
    b = {"optimizer": {"type": "Adam", "args": {"lr": 0.01, "eps": 1e-8}}, "metrics": ["accuracy", "f1"]}
    assert differences(a, b) == [("extra", {}, MISSING), ("metrics", ["accuracy"], ["accuracy", "f1"]),
                                 ("optimizer.args.eps", MISSING, 1e-8), ("optimizer.args.lr", 0.001, 0.01)]
    assert differences(a, a) == []
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}


def test_the_environment_leaves_out_when_and_how_a_start_ran(tmp_path):
    start = {"command": "python train.py", "pid": 1, "started": "x", "outcome": "finished", "torch": "2.4",
             "git": {"commit": "abc", "patch": "run-2.patch", "patch_sha256": "f00"}, "data": {"dataset": {}},
             "packages": {"torch": "2.4"}}
    run = Run.read(make_run(tmp_path, "Net", "e", manifest={"starts": [{}, start]}))
    assert run.environment() == {"torch": "2.4", "git": {"commit": "abc", "patch_sha256": "f00"},
                                 "packages": {"torch": "2.4"}}
    assert run.data() == {"dataset": {}}
