"""Task metrics computed from labels and predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def mean_iou(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean intersection over union across classes, in [0, 1].

    Classes absent from both truth and prediction are left out of the mean.
    """
    matrix = confusion_matrix(truth.ravel(), predicted.ravel(), labels=np.arange(num_classes))
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())


# What early stopping and the evolution optimise, per task, and whether higher is better.
MAIN_METRIC = {"segmentation": ("miou", True), "tagging": ("accuracy", True), "regression": ("rmse", False)}


def label_metrics(truth: np.ndarray, predicted: np.ndarray, num_classes: int, task: str) -> dict:
    """Accuracy and mIoU (segmentation) or macro F1 (tagging), as fractions."""
    truth, predicted = truth.ravel(), predicted.ravel()
    metrics = {"accuracy": float(accuracy_score(truth, predicted))}
    if task == "segmentation":
        metrics["miou"] = mean_iou(truth, predicted, num_classes)
    else:
        metrics["macro_f1"] = float(f1_score(truth, predicted, labels=np.arange(num_classes),
                                             average="macro", zero_division=0))
    return metrics


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    error = predicted.astype(np.float64) - truth.astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}
