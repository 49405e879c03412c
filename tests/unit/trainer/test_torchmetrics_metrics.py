"""torchmetrics metrics named in config.json: exact over the epoch, validated like every other name, checkpointed."""
from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score
from torch import nn

import train
from conftest import read_metrics, run_dir, tiny_config
from tiny_trainers import build, resumed, sigterm_at
from trainer.trainer import evaluate
from utils.checkpoint import TRACKER, find_checkpoint
from utils.errors import run_cli
from utils.interrupt import StopTraining
from utils.registry import METRICS
from utils.tracker import split_metrics

CLASSES = 4


def metric(name: str, **args):
    return METRICS.get(name, "metrics.0")(**args)


def batches(sizes=(7, 13, 5, 1, 9), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of uneven size: (log-probabilities, class) with some signal in them."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        target = torch.randint(0, CLASSES, (n,), generator=generator)
        logits = torch.randn(n, CLASSES, generator=generator) + 1.5 * nn.functional.one_hot(target, CLASSES)
        out.append((torch.log_softmax(logits, 1), target))
    return out


def evaluated(metrics: dict, data) -> dict:
    """evaluate() over data, the model's output being the batch itself (log-probabilities, as DigitsModel gives)."""
    step = lambda output, target: (nn.functional.nll_loss(output, target), output)  # noqa: E731
    return evaluate(nn.Identity(), data, step, metrics, torch.device("cpu"))


def test_f1_macro_and_auroc_over_uneven_batches_equal_sklearn_on_all_samples():
    data = batches()
    log = evaluated({"accuracy": lambda o, t: (o.argmax(1) == t).float().mean(),
                     "f1_macro": metric("F1Score", task="multiclass", num_classes=CLASSES, average="macro"),
                     "auroc": metric("AUROC", task="multiclass", num_classes=CLASSES)}, data)
    output, target = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    assert list(log) == ["loss", "accuracy", "f1_macro", "auroc"]
    assert log["f1_macro"] == pytest.approx(f1_score(target, output.argmax(1), average="macro"), abs=1e-6)
    # log-probabilities: torchmetrics softmaxes values outside [0, 1], and softmax(log p) = p
    assert log["auroc"] == pytest.approx(roc_auc_score(target, output.exp(), multi_class="ovr"), abs=1e-6)
    assert log["accuracy"] == pytest.approx((output.argmax(1) == target).float().mean().item())


def test_non_scalar_results_are_nested_lists():
    data = batches()
    log = evaluated({"cm": metric("ConfusionMatrix", task="multiclass", num_classes=CLASSES),
                     "f1": metric("MulticlassF1Score", num_classes=CLASSES, average=None)}, data)
    output, target = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    assert log["cm"] == confusion_matrix(target, output.argmax(1)).tolist()
    assert all(isinstance(x, int) for row in log["cm"] for x in row)
    assert log["f1"] == pytest.approx(f1_score(target, output.argmax(1), average=None).tolist(), abs=1e-6)


def test_evaluate_starts_from_fresh_copies_of_the_built_metrics():
    built = {"f1": metric("MulticlassF1Score", num_classes=CLASSES)}
    first, second = evaluated(built, batches(seed=1)), evaluated(built, batches(seed=1))
    assert first == second
    assert split_metrics(built)[1]["f1"]._update_count == 0  # the built one is a template: never updated


def test_mid_epoch_resume_reports_the_numbers_of_a_straight_run(tmp_path):
    """The stateful metrics' states (sums and a 'cat' state) go into a mid-epoch checkpoint and come back."""
    metrics = {"f1": metric("MulticlassF1Score", num_classes=CLASSES, average="macro"),
               "auroc": metric("MulticlassAUROC", num_classes=CLASSES)}
    build(tmp_path / "straight", epochs=2, metrics=metrics).train()
    interrupted = build(tmp_path / "split", epochs=2, metrics=metrics)
    sigterm_at(interrupted, 7)  # 5 batches per epoch: in the middle of epoch 2
    with pytest.raises(StopTraining):
        interrupted.train()
    path, state = find_checkpoint(tmp_path / "split")
    assert set(state[TRACKER]["stateful"]) == {"f1", "auroc"}
    resumed(tmp_path / "split", path, epochs=2, metrics=metrics).train()
    straight, split = read_metrics(tmp_path / "straight", timing=False), read_metrics(tmp_path / "split", timing=False)
    assert straight == split and "f1" in straight[-1] and "val_auroc" in straight[-1]


def test_a_monitor_naming_a_non_scalar_metric_is_an_error(tmp_path):
    from utils.errors import UserError

    trainer = build(tmp_path, epochs=1, monitor="max val_cm",
                    metrics={"cm": metric("MulticlassConfusionMatrix", num_classes=CLASSES)})
    with pytest.raises(UserError, match="'val_cm' is not a single number"):
        trainer.train()


# ---- through train.py: validation, --list, monitoring ----

def run(tmp_path, capsys, metrics: list, **trainer) -> tuple[int, str]:
    config = tiny_config(tmp_path / "saved", **trainer)
    config["metrics"] = metrics
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code = run_cli(train.main, ["-c", str(path), "--run-id", "run"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ({"type": "F1Score", "args": {"task": "multiclass", "num_classes": 10, "averag": "macro"}},
     "error: metrics.1.args.averag: F1Score has no argument 'averag'. Did you mean 'average'?"),
    ({"type": "F1Scor", "args": {"task": "multiclass", "num_classes": 10}},
     "error: metrics.1.type: unknown metric 'F1Scor'. Did you mean 'F1Score'"),
    ({"type": "F1Score", "args": {"task": "multiclass"}},
     "error: metrics.1.args: F1Score refused {'task': 'multiclass'}: "),
    ({"type": "MulticlassF1Score", "args": {"num_classes": 10, "sync_on_compte": True}},
     "error: metrics.1.args.sync_on_compte: MulticlassF1Score has no argument 'sync_on_compte'. Did you mean "
     "'sync_on_compute'"),
])
def test_config_mistakes_are_one_error_line(tmp_path, capsys, spec, message):
    code, err = run(tmp_path, capsys, ["accuracy", spec])
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_list_metric_gives_the_users_names_then_torchmetrics(capsys):
    train.main(["--list", "metric"])
    names = capsys.readouterr().out.split()
    assert names[:2] == ["accuracy", "top_k_acc"]
    assert {"F1Score", "AUROC", "ConfusionMatrix", "MulticlassF1Score", "MeanAbsoluteError"} <= set(names)


@pytest.mark.slow
def test_train_monitors_a_torchmetrics_metric_and_stops_early(tmp_path, capsys):
    f1 = {"type": "F1Score", "args": {"task": "multiclass", "num_classes": 10, "average": "macro"}, "name": "f1_macro"}
    cm = {"type": "ConfusionMatrix", "args": {"task": "multiclass", "num_classes": 10}, "name": "cm"}
    code, err = run(tmp_path, capsys, ["accuracy", f1, cm], epochs=3, monitor="max val_f1_macro", early_stop=1)
    assert code == 0, err
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    rows = read_metrics(log_dir)
    assert 1 <= len(rows) <= 3 and all(0 <= row["val_f1_macro"] <= 1 for row in rows)
    assert len(rows[-1]["val_cm"]) == 10 and sum(map(sum, rows[-1]["val_cm"])) > 0
    assert (ckpt_dir / "model_best.pth").is_file()


def test_per_class_results_are_by_class_name_when_the_data_has_names():
    data = batches()
    names = ["cat", "dog", "bird", "fish"]
    metrics = {"f1": metric("MulticlassF1Score", num_classes=CLASSES, average=None),
               "cm": metric("ConfusionMatrix", task="multiclass", num_classes=CLASSES),
               "mae": metric("MeanAbsoluteError")}
    step = lambda output, target: (nn.functional.nll_loss(output, target), output)  # noqa: E731
    mae_free = {k: v for k, v in metrics.items() if k != "mae"}
    log = evaluate(nn.Identity(), data, step, mae_free, torch.device("cpu"), classes=names)
    output, target = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    expected = f1_score(target, output.argmax(1), average=None)
    assert list(log["f1"]) == names
    assert list(log["f1"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert log["cm"] == confusion_matrix(target, output.argmax(1)).tolist()  # a matrix stays a matrix
    fewer = evaluate(nn.Identity(), data, step, mae_free, torch.device("cpu"), classes=names[:3])
    assert isinstance(fewer["f1"], list)  # names that do not fit the result: left as a list


def test_arguments_are_validated_on_the_first_batch_only():
    """torchmetrics' checks of the targets read device values; the first batch is checked, the rest are not."""
    from utils.tracker import EpochMetrics

    metrics = EpochMetrics({"f1": metric("MulticlassF1Score", num_classes=CLASSES)}, torch.device("cpu"))
    with pytest.raises(ValueError, match="number of classes"):
        metrics.update(torch.randn(5, CLASSES + 1), torch.tensor([0, 1, 2, 3, 0]))
    metrics = EpochMetrics({"f1": metric("MulticlassF1Score", num_classes=CLASSES)}, torch.device("cpu"))
    metrics.update(*batches()[0])
    assert metrics.metrics["f1"].validate_args is False
    assert split_metrics({"f1": metric("MulticlassF1Score", num_classes=CLASSES)})[1]["f1"].validate_args


def test_classes_are_counted_on_the_device_with_the_same_results():
    """On a GPU torchmetrics' torch.bincount reads the batch's largest value (a host sync per batch); the count that
    replaces it while the metrics update gives the same numbers (forced on here, on the CPU)."""
    import importlib

    from utils.tracker import DeviceCounting, EpochMetrics, count_on_device

    stat_scores = importlib.import_module("torchmetrics.functional.classification.stat_scores")

    x = torch.tensor([0, 2, 2, 5, 1, -1, 7, 2])
    assert count_on_device(x, 6).tolist() == torch.bincount(x[(x >= 0) & (x < 6)], minlength=6).tolist()
    built = {"f1": metric("MulticlassF1Score", num_classes=CLASSES, average=None),
             "cm": metric("ConfusionMatrix", task="multiclass", num_classes=CLASSES),
             "auroc": metric("MulticlassAUROC", num_classes=CLASSES, thresholds=5)}
    plain, counted = (EpochMetrics(built, torch.device("cpu")) for _ in range(2))
    counted.counting = DeviceCounting(enabled=True)
    original = stat_scores._bincount
    for output, target in batches():
        plain.update(output, target)
        counted.update(output, target)
        assert stat_scores._bincount is original  # replaced only while the metrics update
    assert counted.result() == plain.result()
    with counted.counting:
        assert stat_scores._bincount is count_on_device
