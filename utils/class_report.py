"""test.py's per-class report for classification: precision, recall, F1 and support by class name, and the
confusion matrix, from torchmetrics metrics updated with every batch of the split (exact over all of its samples)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

PREFIX = "class_report/"  # the report's metrics among the configured ones while the split is evaluated
COLUMNS = ("precision", "recall", "f1", "support")


def report_metrics(output: Any, target: Any) -> dict[str, Any]:
    """The torchmetrics metrics whose results make the report, keyed under PREFIX, for a classification batch
    (scores (N, C, ...) and integer class indices (N, ...)); {} for any other task (regression, autoencoders)."""
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.is_floating_point()
            and output.dim() >= 2 and output.shape[1] >= 2 and not target.is_floating_point()
            and target.shape == output.shape[:1] + output.shape[2:]):
        return {}
    from torchmetrics.classification import (MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision,
                                             MulticlassRecall)

    c = output.shape[1]
    return {PREFIX + "precision": MulticlassPrecision(c, average=None),
            PREFIX + "recall": MulticlassRecall(c, average=None),
            PREFIX + "f1": MulticlassF1Score(c, average=None),
            PREFIX + "confusion_matrix": MulticlassConfusionMatrix(c)}


def take_report(results: dict, classes: Sequence[str] | None) -> dict:
    """Move the report's values out of results into {"per_class": {class name: {precision, recall, f1, support}},
    "confusion_matrix": {"classes": [...], "matrix": rows (true class) of columns (predicted class)}}."""
    values = {key[len(PREFIX):]: results.pop(key) for key in [k for k in results if k.startswith(PREFIX)]}
    if not values:
        return {}
    matrix = values.pop("confusion_matrix")
    names = list(classes) if classes and len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
    columns = {key: list(v.values()) if isinstance(v, dict) else v for key, v in values.items()}
    columns["support"] = [sum(row) for row in matrix]
    per_class = {name: {key: columns[key][i] for key in COLUMNS} for i, name in enumerate(names)}
    return {"per_class": per_class, "confusion_matrix": {"classes": names, "matrix": matrix}}


def format_table(per_class: dict[str, dict]) -> list[str]:
    """The per-class table as console lines."""
    width = max([len("class"), *(len(name) for name in per_class)])
    lines = [f"    {'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}"]
    for name, row in per_class.items():
        lines.append(f"    {name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>9.4f}  {row['f1']:>9.4f}  "
                     f"{row['support']:>8d}")
    return lines
