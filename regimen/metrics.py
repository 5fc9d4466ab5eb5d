"""Task metrics computed from labels and predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix


def mean_iou(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean intersection over union across classes, in [0, 1].

    Classes absent from both truth and prediction are left out of the mean.
    """
    matrix = confusion_matrix(truth.ravel(), predicted.ravel(), labels=np.arange(num_classes))
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())
