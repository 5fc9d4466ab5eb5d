"""Task metrics from labels, predictions and probabilities: the training loop's few and evaluate.py's suite."""

from __future__ import annotations

import numpy as np

# The training loop's metrics (`label_metrics`, `mean_iou`) use numpy only: phase scripts start
# again for every evolution trial, and importing scikit-learn and SciPy costs about 0.5 s there.
# evaluate.py's suite imports them where it needs them.

TINY = 1e-12  # probabilities are clipped here before a log


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true class, predicted class]` (scikit-learn's `confusion_matrix` with all labels)."""
    pairs = truth.ravel().astype(np.int64) * num_classes + predicted.ravel().astype(np.int64)
    return np.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean intersection over union across classes, in [0, 1].

    Classes absent from both truth and prediction are left out of the mean.
    """
    return confusion_metrics(confusion(truth, predicted, num_classes), "segmentation")["miou"]


# What early stopping and the evolution optimise, per task, and whether higher is better.
MAIN_METRIC = {"segmentation": ("miou", True), "tagging": ("accuracy", True), "regression": ("rmse", False)}


def label_metrics(truth: np.ndarray, predicted: np.ndarray, num_classes: int, task: str) -> dict:
    """Accuracy and mIoU (segmentation) or macro F1 (tagging), as fractions."""
    return confusion_metrics(confusion(truth, predicted, num_classes), task)


def confusion_metrics(matrix: np.ndarray, task: str) -> dict:
    """`label_metrics` from the confusion matrix `[true class, predicted class]`."""
    tp = np.diag(matrix).astype(np.float64)
    metrics = {"accuracy": float(tp.sum() / matrix.sum())}
    if task == "segmentation":
        union = matrix.sum(0) + matrix.sum(1) - tp
        present = union > 0
        metrics["miou"] = float((tp[present] / union[present]).mean())
    else:  # F1 = 2 tp / (2 tp + fp + fn), 0 for a class never true nor predicted (zero_division=0)
        denominator = matrix.sum(0) + matrix.sum(1)
        metrics["macro_f1"] = float(np.mean(np.divide(2 * tp, denominator, out=np.zeros(len(matrix)),
                                                      where=denominator > 0)))
    return metrics


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    error = predicted.astype(np.float64) - truth.astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


class MetricSums:
    """`label_metrics` or `regression_metrics` of a split that arrives batch by batch: a confusion
    matrix, or the sums of squared and absolute errors (float64)."""

    def __init__(self, task: str, num_classes: int | None):
        self.task, self.num_classes = task, num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64) if task != "regression" else None
        self.squared = self.absolute = 0.0
        self.count = 0

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        if self.matrix is not None:
            self.matrix += confusion(truth, predicted, self.num_classes)
            return
        error = predicted.astype(np.float64) - truth.astype(np.float64)
        self.squared += float((error ** 2).sum())
        self.absolute += float(np.abs(error).sum())
        self.count += error.size

    def result(self) -> dict:
        if self.matrix is not None:
            return confusion_metrics(self.matrix, self.task)
        return {"rmse": float(np.sqrt(self.squared / self.count)), "mae": self.absolute / self.count}


# --------------------------------------------------------------------------- the full suite (evaluate.py)


def class_report(truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray, num_classes: int,
                 soft: np.ndarray | None = None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, mIoU, the confusion matrix and the
    `probability_metrics` (AUROC, KL, NLL).

    Args:
        truth, predicted: labels `[N]` (nodes: pixels or frames).
        probs: the predictor's class probabilities `[N, K]` (rows sum to 1).
        soft: target distributions `[N, K]` for the KL divergence; one-hot of `truth` when None.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=np.arange(num_classes), zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "miou": mean_iou(truth, predicted, num_classes),
        "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                      "support": support.tolist()},
        "confusion": confusion(truth, predicted, num_classes).tolist(),
        **probability_metrics(truth, probs, num_classes, soft),
    }


def probability_metrics(truth: np.ndarray, probs: np.ndarray, num_classes: int,
                        soft: np.ndarray | None = None) -> dict:
    """One-vs-rest AUROC, KL divergence (against `soft`, else one-hot) and NLL of probabilities `[N, K]`."""
    from scipy.special import xlogy

    target = soft if soft is not None else np.eye(num_classes)[truth]
    log_q = np.log(np.clip(probs, TINY, None))
    return {
        "auroc": auroc_ovr(truth, probs),
        # batchmean: summed over classes, averaged over nodes (torch's kl_div(reduction="batchmean")).
        "kl": float((xlogy(target, target) - target * log_q).sum(axis=1).mean()),
        "nll": float(-log_q[np.arange(len(truth)), truth].mean()),
    }


def auroc_ovr(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest AUROC over the classes that occur and do not cover every node.

    Equals scikit-learn's `roc_auc_score(multi_class="ovr")` when every class occurs;
    unlike it, a class absent from `truth` is left out rather than an error. None
    when no class can be scored.
    """
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(truth == k, probs[:, k]) for k in range(probs.shape[1])
              if 0 < np.count_nonzero(truth == k) < len(truth)]
    return float(np.mean(scores)) if scores else None


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> dict:
    """ECE, MCE and the reliability curve of top-label confidences, equal-width bins on [0, 1].

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b|; MCE = max_b over non-empty bins.
    """
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    sure = np.bincount(index, weights=confidence.astype(np.float64), minlength=bins)
    filled = count > 0
    accuracy = np.divide(hits, count, out=np.zeros(bins), where=filled)
    mean_confidence = np.divide(sure, count, out=np.zeros(bins), where=filled)
    gap = np.abs(accuracy - mean_confidence)
    return {"ece": float((count * gap).sum() / count.sum()), "mce": float(gap[filled].max()),
            "bins": bins, "reliability": {"count": count.tolist(), "accuracy": accuracy.tolist(),
                                          "confidence": mean_confidence.tolist()}}


def boundaries(labels: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Nodes whose label differs from the next node along any of `axes` (both sides marked)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in axes:
        n = labels.shape[axis]
        change = np.take(labels, range(1, n), axis) != np.take(labels, range(n - 1), axis)
        pad_before = [(0, 0)] * labels.ndim
        pad_after = [(0, 0)] * labels.ndim
        pad_before[axis], pad_after[axis] = (1, 0), (0, 1)
        edge |= np.pad(change, pad_before) | np.pad(change, pad_after)
    return edge


def boundary_f1(truth: np.ndarray, predicted: np.ndarray, axes: tuple[int, ...], tolerance: int) -> dict:
    """Boundary precision, recall and F1 with a tolerance of `tolerance` nodes along `axes`.

    A predicted boundary node counts as right when a true one lies within the
    tolerance (a square window), and the other way round for recall. Both without
    any boundary: F1 = 1.
    """
    from scipy import ndimage

    true_edge, pred_edge = boundaries(truth, axes), boundaries(predicted, axes)
    size = [2 * tolerance + 1 if axis in axes else 1 for axis in range(truth.ndim)]
    near_true = ndimage.maximum_filter(true_edge, size=size, mode="constant")
    near_pred = ndimage.maximum_filter(pred_edge, size=size, mode="constant")
    n_pred, n_true = int(pred_edge.sum()), int(true_edge.sum())
    if n_pred == 0 and n_true == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tolerance": tolerance}
    precision = float((pred_edge & near_true).sum() / n_pred) if n_pred else 0.0
    recall = float((true_edge & near_pred).sum() / n_true) if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tolerance": tolerance}


def flicker(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Temporal consistency of labels `[N, T, ...]`: how often a node's predicted label changes
    from one frame to the next where the true label does not (`flicker`, lower is better)."""
    stable = truth[:, 1:] == truth[:, :-1]
    changed = predicted[:, 1:] != predicted[:, :-1]
    return {"flicker": float((changed & stable).sum() / max(int(stable.sum()), 1)),
            "predicted_change_rate": float(changed.mean()), "true_change_rate": float(1 - stable.mean())}


def regression_report(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE and R2 over every value, and OpenSTL's per-frame MSE and MAE.

    Args:
        truth, predicted: `[N, T, ...]`. OpenSTL sums the errors over a frame's
            values and averages over frames, so those numbers compare with its tables.
    """
    from sklearn.metrics import r2_score

    error = predicted.astype(np.float64) - truth.astype(np.float64)
    frames = error.reshape(error.shape[0] * error.shape[1], -1)
    return {**regression_metrics(truth, predicted),
            "r2": float(r2_score(truth.ravel(), predicted.ravel())),
            "mse_per_frame": float((frames ** 2).sum(axis=1).mean()),
            "mae_per_frame": float(np.abs(frames).sum(axis=1).mean())}
