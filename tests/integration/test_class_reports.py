"""Per-class results end to end: metrics.jsonl by class name, the confusion matrix as a TensorBoard image each
epoch, HParams over the scalar values only, and test.py's per-class table and confusion matrix checked against
scikit-learn on predictions made apart from the project."""
from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import test as test_script
import train
from conftest import ROOT, events, read_metrics, run_dir, tiny_config
from fake_data import write_image_folder

pytestmark = pytest.mark.slow  # each test trains through train.main

F1_PER_CLASS = {"type": "F1Score", "args": {"task": "multiclass", "num_classes": 10, "average": None}, "name": "f1"}
CM = {"type": "ConfusionMatrix", "args": {"task": "multiclass", "num_classes": 10}, "name": "cm"}


def hparams_metrics(log_dir) -> set[str]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events(log_dir).SummaryMetadata("_hparams_/experiment").plugin_data.content
    return {m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos}


def test_digits_confusion_matrix_and_per_class_table_equal_sklearn(tmp_path, capsys):
    config = tiny_config(tmp_path / "saved", tensorboard=True)
    config["metrics"] = ["accuracy", F1_PER_CLASS, CM]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", "run"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")

    rows = read_metrics(log_dir)
    assert [len(row["val_cm"]) for row in rows] == [10, 10] and len(rows[-1]["f1"]) == 10
    for phase in ("train", "valid"):
        assert [e.step for e in events(log_dir / phase).Images("cm")] == [1, 2]
        assert "cm" not in events(log_dir / phase).Tags()["scalars"]
    metrics = hparams_metrics(log_dir)
    assert {"final/val_accuracy", "final/loss", "best/val_loss"} <= metrics
    assert not {"final/cm", "final/val_cm", "final/f1", "final/val_f1"} & metrics

    capsys.readouterr()
    results = test_script.main(["-r", str(ckpt_dir / "checkpoint-epoch2.pth")])
    out = capsys.readouterr().out
    assert "Per class:" in out and out.count("\n    9 ") == 1

    # The same predictions made apart from the project: the checkpoint's weights in a fresh model, scikit-learn.
    from data_loader.data_loaders import DigitsDataLoader
    from model.model import DigitsModel

    model = DigitsModel(**config["arch"]["args"]).eval()
    model.load_state_dict(torch.load(ckpt_dir / "checkpoint-epoch2.pth", weights_only=True)["state_dict"])
    x, y = DigitsDataLoader(training=False).dataset.tensors
    with torch.no_grad():
        predicted = model(x).argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=range(10), zero_division=0)
    table = results["class_report"]["per_class"]
    assert list(table) == [str(i) for i in range(10)] and results["n_samples"] == len(y) == sum(support)
    assert [row["precision"] for row in table.values()] == pytest.approx(precision.tolist(), abs=1e-6)
    assert [row["recall"] for row in table.values()] == pytest.approx(recall.tolist(), abs=1e-6)
    assert [row["f1"] for row in table.values()] == pytest.approx(f1.tolist(), abs=1e-6)
    assert [row["support"] for row in table.values()] == support.tolist()
    matrix = results["class_report"]["confusion_matrix"]["matrix"]
    assert matrix == confusion_matrix(y, predicted).tolist() == results["cm"]
    assert results["f1"] == pytest.approx(f1.tolist(), abs=1e-6)
    saved = json.loads((ckpt_dir / "test_results.json").read_text())
    assert saved["class_report"]["per_class"] == table
    assert saved["class_report"]["confusion_matrix"]["classes"] == [str(i) for i in range(10)]


def test_class_names_of_an_image_folder_label_results_and_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "data/image_folder/train", {"cat": 8, "dog": 6, "emu": 6})
    write_image_folder(tmp_path / "data/image_folder/test", {"cat": 3, "emu": 2})
    f1 = {**F1_PER_CLASS, "args": {**F1_PER_CLASS["args"], "num_classes": 3}}
    cm = {**CM, "args": {**CM["args"], "num_classes": 3}}
    train.main(["-c", str(ROOT / "configs/image_folder.json"), "--run-id", "x", f"trainer.save_dir={tmp_path}",
                "trainer.epochs=1", "trainer.verbosity=0", "data_loader.args.num_workers=0",
                "arch.args.blocks=(cnf8 m) d", f"metrics={json.dumps(['accuracy', f1, cm])}"])
    ckpt_dir, log_dir = run_dir(tmp_path, "x", "ImageFolder_CNN")
    row = read_metrics(log_dir)[0]
    assert list(row["f1"]) == list(row["val_f1"]) == ["cat", "dog", "emu"]
    assert len(row["val_cm"]) == 3
    results = test_script.main(["-r", str(ckpt_dir)])
    report = results["class_report"]
    assert list(report["per_class"]) == ["cat", "dog", "emu"] == report["confusion_matrix"]["classes"]
    assert [r["support"] for r in report["per_class"].values()] == [3, 0, 2]
    assert list(results["f1"]) == ["cat", "dog", "emu"]
