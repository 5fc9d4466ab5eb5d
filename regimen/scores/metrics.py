"""Task metrics from labels, predictions and probabilities: the training loop's few and evaluate.py's suite."""

from __future__ import annotations

import numpy as np

# The training loop's metrics (`label_metrics`, `mean_iou`) use numpy only: phase scripts start
# again for every evolution trial, and importing scikit-learn and SciPy costs about 0.5 s there.
# evaluate.py's suite imports them where it needs them.

TINY = 1e-12  # probabilities are clipped here before a log


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int, valid: np.ndarray | None = None
              ) -> np.ndarray:
    """Counts `[true class, predicted class]` (scikit-learn's `confusion_matrix` with all labels) of
    the nodes `valid` marks (all without it)."""
    if valid is not None:
        truth, predicted = truth[valid], predicted[valid]
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

    def add(self, truth: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None) -> None:
        """One batch: labels `[B, T(, H, W)]` or values `[B, T, H, W, C]`; `valid` `[B, T(, H, W)]`:
        the nodes scored (None: all)."""
        if self.matrix is not None:
            self.matrix += confusion(truth, predicted, self.num_classes, valid)
            return
        error = predicted.astype(np.float64) - truth.astype(np.float64)
        if valid is not None:
            error = error[valid]  # (nodes, C)
        self.squared += float((error ** 2).sum())
        self.absolute += float(np.abs(error).sum())
        self.count += error.size

    def merge(self, other: "MetricSums") -> None:
        """Add the sums of another part of the split (another process's windows)."""
        if self.matrix is not None:
            self.matrix += other.matrix
        self.squared += other.squared
        self.absolute += other.absolute
        self.count += other.count

    def result(self) -> dict:
        if self.matrix is not None:
            return confusion_metrics(self.matrix, self.task)
        return {"rmse": float(np.sqrt(self.squared / self.count)), "mae": self.absolute / self.count}


# --------------------------------------------------------------------------- the full suite (evaluate.py)
#
# evaluate.py and export.py see a split batch by batch: every score below is a sum over nodes or
# windows (a confusion matrix, calibration bins, boundary and flicker counts, error sums), so the
# batched result equals the whole split's. The AUROC alone needs every score at once: it is
# computed on the nodes of the windows the caller samples (all of them, up to a cap).


class ReportSums:
    """`class_report` plus `calibration`, `boundary_f1` and `flicker` of one predictor, or
    `regression_report`, summed over batches of windows.

    Args:
        task, num_classes: the data's.
        bins: calibration bins; tolerance: boundary tolerance in nodes.
    """

    def __init__(self, task: str, num_classes: int | None, bins: int, tolerance: int):
        self.task = task
        if task == "regression":
            self.errors = RegressionSums()
            return
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.probabilities = ProbabilitySums(num_classes, bins)
        self.axes = (2, 3) if task == "segmentation" else (1,)
        self.tolerance = tolerance
        self.edges = np.zeros(4, np.int64)  # predicted, true, predicted near a true one, true near a predicted one
        self.changes = np.zeros(4, np.int64)  # changed where stable, stable, changed, pairs

    def add(self, truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray | None = None,
            soft: np.ndarray | None = None, sampled: np.ndarray | None = None, valid: np.ndarray | None = None
            ) -> None:
        """One batch of windows: `truth` and `predicted` labels `[B, T(, H, W)]` with `probs` (class
        axis last), or regression values `[B, T, H, W, C]`; `soft` targets like `probs`; `sampled`:
        which windows `[B]` count for the AUROC (None: all); `valid` `[B, T(, H, W)]`: the nodes
        scored (None: all). A missing node counts in no score, nor as a boundary or flicker's
        neighbour."""
        if self.task == "regression":
            self.errors.add(truth, predicted, valid)
            return
        k = len(self.matrix)
        self.matrix += confusion(truth, predicted, k, valid)
        nodes = None if sampled is None else np.repeat(sampled, truth[0].size)
        flat = (truth.ravel(), probs.reshape(-1, k), None if soft is None else soft.reshape(-1, k), nodes)
        if valid is not None:
            kept = valid.ravel()
            flat = tuple(None if a is None else a[kept] for a in flat)
        self.probabilities.add(*flat)
        self.edges += boundary_counts(truth, predicted, self.axes, self.tolerance, valid)
        self.changes += flicker_counts(truth, predicted, valid)

    def result(self) -> dict:
        if self.task == "regression":
            return self.errors.result()
        probabilities = self.probabilities.result()
        return {**class_scores(self.matrix), **{key: probabilities[key] for key in ("auroc", "kl", "nll")},
                "calibration": probabilities["calibration"],
                "boundary": boundary_scores(self.edges, self.tolerance), "temporal": flicker_scores(self.changes)}


def class_report(truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray, num_classes: int,
                 soft: np.ndarray | None = None) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, mIoU, the confusion matrix and the
    `probability_metrics` (AUROC, KL, NLL).

    Args:
        truth, predicted: labels `[N]` (nodes: pixels or frames).
        probs: the predictor's class probabilities `[N, K]` (rows sum to 1).
        soft: target distributions `[N, K]` for the KL divergence; one-hot of `truth` when None.
    """
    return {**class_scores(confusion(truth, predicted, num_classes)),
            **probability_metrics(truth, probs, num_classes, soft)}


def class_scores(matrix: np.ndarray) -> dict:
    """The label scores of a confusion matrix `[true, predicted]`, as scikit-learn's
    `accuracy_score` and `precision_recall_fscore_support` (zero_division=0) give them."""
    tp = np.diag(matrix).astype(np.float64)
    true, predicted = matrix.sum(1), matrix.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = np.divide(tp, true, out=np.zeros(len(tp)), where=true > 0)
    f1 = np.divide(2 * tp, true + predicted, out=np.zeros(len(tp)), where=true + predicted > 0)
    return {
        "accuracy": float(tp.sum() / matrix.sum()),
        "miou": confusion_metrics(matrix, "segmentation")["miou"],
        "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                      "support": true.tolist()},
        "confusion": matrix.tolist(),
    }


class ProbabilitySums:
    """`calibration` and `probability_metrics` of class probabilities that arrive batch by batch:
    the calibration bins, the summed KL and NLL, and the sampled nodes' scores for the AUROC."""

    def __init__(self, num_classes: int, bins: int):
        self.num_classes, self.bins = num_classes, bins
        self.count, self.hits, self.sure = np.zeros(bins, np.int64), np.zeros(bins), np.zeros(bins)
        self.kl = self.nll = 0.0
        self.nodes = 0
        self.sampled: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, truth: np.ndarray, probs: np.ndarray, soft: np.ndarray | None = None,
            sampled: np.ndarray | None = None) -> None:
        """Nodes `truth` `[N]` with `probs` and `soft` `[N, K]`; `sampled`: which nodes `[N]` count
        for the AUROC (None: all)."""
        from scipy.special import xlogy

        confidence = probs.max(axis=1)
        index = np.minimum((confidence * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.hits += np.bincount(index, weights=(probs.argmax(axis=1) == truth).astype(np.float64),
                                 minlength=self.bins)
        self.sure += np.bincount(index, weights=confidence.astype(np.float64), minlength=self.bins)
        # In float64: a float32 sum over a split's nodes would depend on how it was batched.
        target = (soft if soft is not None else np.eye(self.num_classes)[truth]).astype(np.float64)
        log_q = np.log(np.clip(probs, TINY, None).astype(np.float64))
        # batchmean: summed over classes, averaged over nodes (torch's kl_div(reduction="batchmean")).
        self.kl += float((xlogy(target, target) - target * log_q).sum(axis=1).sum())
        self.nll -= float(log_q[np.arange(len(truth)), truth].sum())
        self.nodes += len(truth)
        self.sampled.append((truth, probs) if sampled is None else (truth[sampled], probs[sampled]))

    def result(self) -> dict:
        truth = np.concatenate([t for t, _ in self.sampled]) if self.sampled else np.zeros(0, np.int64)
        probs = (np.concatenate([p for _, p in self.sampled]) if self.sampled
                 else np.zeros((0, self.num_classes)))
        return {"auroc": auroc_ovr(truth, probs), "kl": self.kl / self.nodes, "nll": self.nll / self.nodes,
                "calibration": calibration_scores(self.count, self.hits, self.sure)}


def probability_metrics(truth: np.ndarray, probs: np.ndarray, num_classes: int,
                        soft: np.ndarray | None = None) -> dict:
    """One-vs-rest AUROC, KL divergence (against `soft`, else one-hot) and NLL of probabilities `[N, K]`."""
    sums = ProbabilitySums(num_classes, 1)
    sums.add(truth, probs, soft)
    return {key: value for key, value in sums.result().items() if key != "calibration"}


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
    return calibration_scores(np.bincount(index, minlength=bins),
                              np.bincount(index, weights=correct.astype(np.float64), minlength=bins),
                              np.bincount(index, weights=confidence.astype(np.float64), minlength=bins))


def calibration_scores(count: np.ndarray, hits: np.ndarray, sure: np.ndarray) -> dict:
    """`calibration` from each bin's node count, correct nodes and summed confidence."""
    bins = len(count)
    filled = count > 0
    accuracy = np.divide(hits, count, out=np.zeros(bins), where=filled)
    mean_confidence = np.divide(sure, count, out=np.zeros(bins), where=filled)
    gap = np.abs(accuracy - mean_confidence)
    return {"ece": float((count * gap).sum() / count.sum()), "mce": float(gap[filled].max()),
            "bins": bins, "reliability": {"count": count.tolist(), "accuracy": accuracy.tolist(),
                                          "confidence": mean_confidence.tolist()}}


def boundaries(labels: np.ndarray, axes: tuple[int, ...], valid: np.ndarray | None = None) -> np.ndarray:
    """Nodes whose label differs from the next node along any of `axes` (both sides marked); with
    `valid`, only between two valid nodes."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in axes:
        n = labels.shape[axis]
        change = np.take(labels, range(1, n), axis) != np.take(labels, range(n - 1), axis)
        if valid is not None:
            change &= np.take(valid, range(1, n), axis) & np.take(valid, range(n - 1), axis)
        pad_before = [(0, 0)] * labels.ndim
        pad_after = [(0, 0)] * labels.ndim
        pad_before[axis], pad_after[axis] = (1, 0), (0, 1)
        edge |= np.pad(change, pad_before) | np.pad(change, pad_after)
    return edge


def boundary_f1(truth: np.ndarray, predicted: np.ndarray, axes: tuple[int, ...], tolerance: int) -> dict:
    """Boundary precision, recall and F1 with a tolerance of `tolerance` nodes along `axes`.

    A predicted boundary node counts as right when a true one lies within the
    tolerance (a square window), and the other way round for recall. Both without
    any boundary: F1 = 1. Windows never see each other: the axes are within a window.
    """
    return boundary_scores(boundary_counts(truth, predicted, axes, tolerance), tolerance)


def boundary_counts(truth: np.ndarray, predicted: np.ndarray, axes: tuple[int, ...], tolerance: int,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """Predicted and true boundary nodes, and of each those near one of the other: `[4]` (`valid`:
    the nodes scored, see `boundaries`)."""
    from scipy import ndimage

    true_edge, pred_edge = boundaries(truth, axes, valid), boundaries(predicted, axes, valid)
    size = [2 * tolerance + 1 if axis in axes else 1 for axis in range(truth.ndim)]
    near_true = ndimage.maximum_filter(true_edge, size=size, mode="constant")
    near_pred = ndimage.maximum_filter(pred_edge, size=size, mode="constant")
    return np.array([pred_edge.sum(), true_edge.sum(), (pred_edge & near_true).sum(), (true_edge & near_pred).sum()],
                    np.int64)


def boundary_scores(counts: np.ndarray, tolerance: int) -> dict:
    n_pred, n_true, right, found = (int(c) for c in counts)
    if n_pred == 0 and n_true == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tolerance": tolerance}
    precision = right / n_pred if n_pred else 0.0
    recall = found / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tolerance": tolerance}


def flicker(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Temporal consistency of labels `[N, T, ...]`: how often a node's predicted label changes
    from one frame to the next where the true label does not (`flicker`, lower is better)."""
    return flicker_scores(flicker_counts(truth, predicted))


def flicker_counts(truth: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Frame-to-frame pairs (of two valid nodes, with `valid`): predicted changes where the truth is
    stable, stable ones, predicted changes, all: `[4]`."""
    pairs = np.ones(truth[:, 1:].shape, bool) if valid is None else valid[:, 1:] & valid[:, :-1]
    stable = (truth[:, 1:] == truth[:, :-1]) & pairs
    changed = (predicted[:, 1:] != predicted[:, :-1]) & pairs
    return np.array([(changed & stable).sum(), stable.sum(), changed.sum(), pairs.sum()], np.int64)


def flicker_scores(counts: np.ndarray) -> dict:
    flickers, stable, changed, pairs = (int(c) for c in counts)
    return {"flicker": flickers / max(stable, 1), "predicted_change_rate": changed / pairs,
            "true_change_rate": 1 - stable / pairs}


class RegressionSums:
    """`regression_report` of values that arrive batch by batch `[B, T, ...]`: error sums, per-frame
    sums, and the truth's count, mean and squared deviations (merged as in `ChannelStatistics`)."""

    def __init__(self):
        self.squared = self.absolute = self.frame_squared = self.frame_absolute = 0.0
        self.count = self.frames = 0
        self.mean = self.deviations = 0.0

    def add(self, truth: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None) -> None:
        """`valid` `[B, T, H, W]`: the pixels scored (None: all); a missing pixel adds no error and
        is not part of the truth's variance."""
        error = predicted.astype(np.float64) - truth.astype(np.float64)
        if valid is not None:
            error = error * valid[..., None]
            truth = truth[valid]
        frames = error.reshape(error.shape[0] * error.shape[1], -1)
        self.squared += float((error ** 2).sum())
        self.absolute += float(np.abs(error).sum())
        self.frame_squared += float((frames ** 2).sum(axis=1).sum())
        self.frame_absolute += float(np.abs(frames).sum(axis=1).sum())
        self.frames += len(frames)
        values = truth.astype(np.float64).ravel()
        if not values.size:  # every pixel of the batch missing
            return
        mean, deviations, n = float(values.mean()), float(((values - values.mean()) ** 2).sum()), values.size
        total = self.count + n
        delta = mean - self.mean
        self.deviations += deviations + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def result(self) -> dict:
        """RMSE, MAE, R2 (1 - residual / total sum of squares; 1 or 0 on a constant truth, as
        scikit-learn's `r2_score`), and OpenSTL's per-frame MSE and MAE."""
        if self.deviations > 0:
            r2 = 1 - self.squared / self.deviations
        else:
            r2 = 1.0 if self.squared == 0 else 0.0
        return {"rmse": float(np.sqrt(self.squared / self.count)), "mae": self.absolute / self.count, "r2": r2,
                "mse_per_frame": self.frame_squared / self.frames, "mae_per_frame": self.frame_absolute / self.frames}


def regression_report(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE and R2 over every value, and OpenSTL's per-frame MSE and MAE.

    Args:
        truth, predicted: `[N, T, ...]`. OpenSTL sums the errors over a frame's
            values and averages over frames, so those numbers compare with its tables.
    """
    sums = RegressionSums()
    sums.add(truth, predicted)
    return sums.result()
