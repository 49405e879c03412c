"""What users see in TensorBoard, read from a real `tensorboard` server through its HTTP data API: train and
validation curves of a metric on one chart (sibling runs train/ and valid/), and runs compared by their
hyperparameters and final and best values in the HParams dashboard."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

import train
from conftest import free_port, read_metrics, run_dir, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_logging")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same config with different learning rates, the second stopped after epoch 1 and resumed."""
    tmp_path = tmp_path_factory.mktemp("tb")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tmp_path / "saved", monitor="max val_accuracy", log_step=2)))
    train.main(["-c", str(config), "--run-id", "fast", "--lr", "0.01"])
    train.main(["-c", str(config), "--run-id", "slow", "--lr", "0.001", "trainer.epochs=1"])
    train.main(["-r", str(run_dir(tmp_path / "saved", "slow")[0]), "trainer.epochs=2"])
    return tmp_path / "saved" / "log" / "Digits_CNN"


@pytest.fixture(scope="module")
def server(runs):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--host",
                                "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/data/runs", timeout=5)
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "tensorboard did not start"
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def get(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_train_and_validation_of_each_metric_are_two_curves_of_one_chart(server, runs):
    assert sorted(get(f"{server}/data/runs")) == sorted(["fast", "fast/train", "fast/valid", "slow", "slow/train",
                                                         "slow/valid"])
    tags = get(f"{server}/data/plugin/scalars/tags")
    assert {"loss", "accuracy", "top_k_acc"} <= set(tags["fast/train"]) & set(tags["fast/valid"])
    assert "loss_step" in tags["fast/train"] and "loss_step" not in tags["fast/valid"]
    for run_id in ("fast", "slow"):  # the resumed run's curves go on in the same directories, each epoch once
        rows = read_metrics(runs / run_id)
        for phase, prefix in (("train", ""), ("valid", "val_")):
            points = get(f"{server}/data/plugin/scalars/scalars?run={run_id}/{phase}&tag=loss")
            assert [step for _, step, _ in points] == [1, 2]
            assert [value for _, _, value in points] == pytest.approx([r[f"{prefix}loss"] for r in rows], rel=1e-6)


def test_runs_are_compared_by_their_hyperparameters_and_final_and_best_values(server, runs):
    experiment = get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert hparams["optimizer.args.lr"]["type"] == "DATA_TYPE_FLOAT64" and "arch.type" in hparams
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"final/val_accuracy", "final/loss", "best/val_accuracy"} <= metrics
    groups = get(f"{server}/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                  "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
        "sliceSize": 10})["sessionGroups"]
    assert sorted((g["name"], g["hparams"]["optimizer.args.lr"]) for g in groups) == [("fast", 0.01), ("slow", 0.001)]
    for group in groups:
        rows = read_metrics(runs / group["name"])
        values = {m["name"]["tag"]: m["value"] for m in group["sessions"][0]["metricValues"]}
        assert values["final/val_accuracy"] == pytest.approx(rows[-1]["val_accuracy"], rel=1e-6)
        assert values["best/val_accuracy"] == pytest.approx(max(r["val_accuracy"] for r in rows), rel=1e-6)
