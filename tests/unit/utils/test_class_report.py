"""Tests for utils/class_report.py: test.py's per-class table and confusion matrix, against scikit-learn."""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from trainer.trainer import evaluate
from utils.class_report import format_table, report_metrics, take_report

CLASSES = 4


def batches(sizes=(7, 13, 5, 1, 9)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uneven batches of (logits, class); class 3 is never predicted right, so some precisions are 0/0."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        target = torch.randint(0, CLASSES, (n,), generator=generator)
        logits = torch.randn(n, CLASSES, generator=generator) + 2.0 * nn.functional.one_hot(target, CLASSES)
        logits[:, 3] = -10.0
        out.append((logits, target))
    return out


def evaluated(data, classes=None) -> dict:
    metrics = report_metrics(*data[0])
    step = lambda output, target: (nn.functional.cross_entropy(output, target), output)  # noqa: E731
    return evaluate(nn.Identity(), data, step, metrics, torch.device("cpu"), classes=classes)


def test_the_table_and_matrix_equal_sklearn_over_all_samples():
    data = batches()
    results = evaluated(data, classes=["a", "b", "c", "d"])
    report = take_report(results, ["a", "b", "c", "d"])
    assert results == {"loss": pytest.approx(results["loss"])}  # the report's values were taken out
    output, target = torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])
    predicted = output.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(target, predicted, labels=range(CLASSES),
                                                                     zero_division=0)
    assert list(report["per_class"]) == ["a", "b", "c", "d"]
    for i, row in enumerate(report["per_class"].values()):
        assert row == {"precision": pytest.approx(precision[i], abs=1e-6), "recall": pytest.approx(recall[i], abs=1e-6),
                       "f1": pytest.approx(f1[i], abs=1e-6), "support": int(support[i])}
    assert report["per_class"]["d"]["precision"] == 0 and report["per_class"]["d"]["support"] > 0
    assert report["confusion_matrix"] == {"classes": ["a", "b", "c", "d"],
                                          "matrix": confusion_matrix(target, predicted).tolist()}
    lines = format_table(report["per_class"])
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"] and len(lines) == 1 + CLASSES
    assert lines[1].split()[0] == "a" and lines[1].split()[-1] == str(int(support[0]))


def test_without_class_names_the_classes_are_their_indices():
    report = take_report(evaluated(batches()), None)
    assert list(report["per_class"]) == ["0", "1", "2", "3"] == report["confusion_matrix"]["classes"]


@pytest.mark.parametrize("output, target", [
    (torch.randn(8, 1), torch.randn(8, 1)),  # regression
    (torch.randn(8, 3), torch.randn(8, 3)),  # float targets (an autoencoder, soft labels)
    (torch.randn(8, 1), torch.zeros(8, dtype=torch.long)),  # one output: not class scores
    (torch.randn(8, 5, 6), torch.zeros(8, dtype=torch.long)),  # shapes that do not pair
    ((torch.randn(8, 3), torch.randn(8, 3)), torch.zeros(8, dtype=torch.long)),  # not a tensor
])
def test_no_report_for_what_is_not_classification(output, target):
    assert report_metrics(output, target) == {}
    assert take_report({"loss": 1.0}, None) == {}


def test_segmentation_outputs_are_classified_per_pixel():
    output, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    metrics = report_metrics(output, target)
    matrix = metrics["class_report/confusion_matrix"](output, target)
    assert int(matrix.sum()) == 2 * 4 * 4
