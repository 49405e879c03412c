"""The "mlflow" logger end to end: in-process train.py runs on tiny digits, read back through a real MLflow tracking
server (one for the module, on 127.0.0.1 over a SQLite store) and MlflowClient: parameters, metric histories equal to
metrics.jsonl (after a stop and a resume too), status, tags and files; processes sharing a new SQLite store; the one
clear error when mlflow is not installed."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import train
from conftest import ROOT, TIMING, free_port, read_metrics, run_dir, tiny_config
from logger.mlflow_logger import RUN_ID_FILE, as_params
from utils.checkpoint import inference_weights, load_checkpoint
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed: pip install -r requirements-mlflow.txt")

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(the SQLite store's URI, the URL of an MLflow server over it, on a free port): `mlflow server` creates the
    store's tables before it answers; killed after the module."""
    folder = tmp_path_factory.mktemp("mlflow")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    port, log = free_port(), open(folder / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                                "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
                time.sleep(0.2)
        yield store, url
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # SIGTERM: uvicorn waits seconds for open connections
        process.wait()
        log.close()


def write_config(tmp_path: Path, tracking_uri: str, **trainer) -> Path:
    """A tiny digits config logging to tracking_uri, with a confusion matrix (a value that is a list)."""
    config = tiny_config(tmp_path / "saved", **trainer)
    config["metrics"] = [*config["metrics"], {"type": "MulticlassConfusionMatrix", "args": {"num_classes": 10}}]
    config["loggers"] = [{"type": "mlflow", "args": {"tracking_uri": tracking_uri}}]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs as the store holds them, in step order (duplicates kept)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """What metrics.jsonl says a metric's history is: each row's value at its step, else its epoch."""
    return sorted((row.get("step", row["epoch"]), row[key]) for row in rows if key in row)


def number_keys(rows: list[dict]) -> set[str]:
    return {k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


def artifact(client, run_id: str, path: str, folder: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(folder)))


@pytest.mark.slow
@needs_mlflow
def test_a_run_is_an_mlflow_run_read_back_through_the_server(tmp_path, server):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    store, url = server
    config = write_config(tmp_path, store, val_every_steps=5, log_step=3)
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight"]) == 0
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "straight")
    client = MlflowClient(url)
    run = client.get_run((log_dir / RUN_ID_FILE).read_text().strip())
    run_id = run.info.run_id
    assert (run.info.status, run.info.run_name) == ("FINISHED", "straight")
    assert client.get_experiment(run.info.experiment_id).name == "Digits_CNN"
    # the parameters: the run's config, flattened
    saved_config = json.loads((ckpt_dir / "config.json").read_text())
    assert run.data.params == as_params(saved_config)
    assert (run.data.params["trainer.epochs"], run.data.params["metrics.0"], run.data.params["lr_scheduler.type"]) \
        == ("2", "accuracy", saved_config["lr_scheduler"]["type"])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert run.data.tags["mlflow.source.git.commit"] == commit.strip()
    assert run.data.tags["run_dir"] == str(ckpt_dir) and run.data.tags["command"]
    # the metrics: metrics.jsonl's numbers at each row's step, and loss_step every log_step steps
    rows = read_metrics(log_dir)
    assert "step" in rows[0] and len(rows) == 4  # validations in the middle of epochs, and each epoch's end
    assert set(run.data.metrics) == number_keys(rows) | {"loss_step"}
    for key in number_keys(rows):
        assert history(client, run_id, key) == expected(rows, key), key
    steps = [step for step, _ in history(client, run_id, "loss_step")]
    assert steps == list(range(3, rows[-1]["step"] + 1, 3))
    # the files: config.json, the confusion matrix of each row, model_best.pth's inference weights
    assert json.loads(artifact(client, run_id, "config.json", tmp_path).read_text()) == saved_config
    for row in rows:
        by_class = json.loads(artifact(client, run_id, f"per_class/step-{row['step']}.json", tmp_path).read_text())
        assert by_class == {k: v for k, v in row.items() if k in ("epoch", "step") or isinstance(v, list)}
        assert "val_MulticlassConfusionMatrix" in by_class
    weights = load_file(artifact(client, run_id, "model/model_best.safetensors", tmp_path))
    best = inference_weights(load_checkpoint(ckpt_dir / "model_best.pth"))
    assert weights.keys() == best.keys() and all((weights[k] == best[k]).all() for k in best)


@pytest.mark.slow
@needs_mlflow
def test_a_stopped_and_resumed_run_continues_its_mlflow_run_without_a_step_twice(tmp_path, server):
    """Logged through the server: stopped after its first step (trainer.max_time), resumed to its end, then resumed
    again from epoch 1's checkpoint (the rows after it come again) with one more epoch."""
    from mlflow import MlflowClient

    store, url = server
    config = write_config(tmp_path, url, val_every_steps=4, log_step=2)
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "resumed")
    client = MlflowClient(url)
    assert run_cli(train.main, ["-c", str(config), "--run-id", "resumed", "trainer.max_time=1e-9"]) == 0
    run_id = (log_dir / RUN_ID_FILE).read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert history(client, run_id, "loss_step") == [] and not (log_dir / "metrics.jsonl").exists()  # after step 1
    (log_dir / "lr_find.png").write_bytes(b"\x89PNG a plot")  # a plot in the run's directory

    assert run_cli(train.main, ["-r", str(ckpt_dir), "trainer.max_time=null"]) == 0
    assert (log_dir / RUN_ID_FILE).read_text().strip() == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["param_changed.trainer.max_time"] == "1e-09 -> null"
    rows = read_metrics(log_dir)
    for key in number_keys(rows):  # exactly metrics.jsonl's, timing included
        assert history(client, run_id, key) == expected(rows, key), key
    assert [s for s, _ in history(client, run_id, "loss_step")] == list(range(2, rows[-1]["step"] + 1, 2))

    assert run_cli(train.main, ["-r", str(ckpt_dir / "checkpoint-epoch1.pth"), "trainer.epochs=3"]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["param_changed.trainer.epochs"] == "2 -> 3"
    again = read_metrics(log_dir)
    assert [r["epoch"] for r in again] == [1, 1, 1, 2, 2, 2, 3, 3, 3] and again[:3] == rows[:3]
    for key in number_keys(again):  # epoch 2's rows came again: logged once, their first timing kept
        logged = history(client, run_id, key)
        if key in TIMING:
            first = {step: value for step, value in expected(rows, key)}
            assert logged == [(step, first.get(step, value)) for step, value in expected(again, key)], key
        else:
            assert logged == expected(again, key), key
    steps = [s for s, _ in history(client, run_id, "loss_step")]
    assert steps == list(range(2, again[-1]["step"] + 1, 2))
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/lr_find.png"]
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id], "attributes.run_name = 'resumed'")] \
        == [run_id]


# Processes that start together on a store that does not exist yet: MLflow creates its tables unguarded (two at once
# fail with "table already exists" or "duplicate column name"); open_experiment takes the store's lock.
STORE_USER = """
import sys, time
from pathlib import Path
import mlflow
from logger.mlflow_logger import open_experiment
uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
client, experiment = open_experiment(uri, "shared")
run = client.create_run(experiment).info.run_id
for step in range(30):
    client.log_metric(run, "loss", float(step), step=step)
client.set_terminated(run)
"""


@pytest.mark.slow
@needs_mlflow
def test_processes_starting_together_on_a_new_sqlite_store_share_it(tmp_path):
    from mlflow import MlflowClient

    uri, go = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", STORE_USER, uri, str(path), str(go)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for path in ready]
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in ready):  # each has imported mlflow
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert len(runs) == 2 and all(len(client.get_metric_history(r.info.run_id, "loss")) == 30 for r in runs)
    assert not (tmp_path / "mlruns").exists() and not (ROOT / "mlruns").exists()


def test_without_mlflow_a_config_that_names_it_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    config = write_config(tmp_path, "sqlite:///unused.db")
    assert run_cli(train.main, ["-c", str(config)]) == 2
    assert capsys.readouterr().err == ("error: loggers.0: the 'mlflow' logger needs mlflow, which is not installed; "
                                       f"pip install -r requirements-mlflow.txt ({config} line 1)\n")
    assert not (tmp_path / "saved").exists()
