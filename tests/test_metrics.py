"""The evaluation metrics against hand-computed values on tiny examples, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, r2_score, roc_auc_score

from conftest import assert_same_figures
from regimen.scores.metrics import (RegressionSums, ReportSums, auroc_ovr, boundaries, boundary_f1, calibration,
                                    class_report, flicker, regression_report)

TRUTH = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 2, 0])
PROBS = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1],
                  [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])


def test_class_report_by_hand():
    report = class_report(TRUTH, PRED, PROBS, 3)
    assert report["accuracy"] == pytest.approx(4 / 6)
    # class 0: tp 1, predicted 2, true 2; class 1: tp 2, predicted 3, true 2; class 2: tp 1, predicted 1, true 2
    assert report["per_class"]["precision"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert report["per_class"]["recall"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert report["per_class"]["f1"] == pytest.approx([1 / 2, 4 / 5, 2 / 3])
    assert report["macro_f1"] == pytest.approx(f1_score(TRUTH, PRED, average="macro"))
    assert report["miou"] == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))  # tp / (tp + fp + fn)
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.4, 0.8, 0.6, 0.8, 0.3])))
    assert report["kl"] == pytest.approx(report["nll"])  # against one-hot targets KL is the NLL
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["auroc"] == pytest.approx(roc_auc_score(TRUTH, PROBS, multi_class="ovr"))


def test_kl_against_soft_targets_is_torch_batchmean():
    rng = np.random.default_rng(0)
    soft = rng.dirichlet(np.ones(3), size=6)
    report = class_report(TRUTH, PRED, PROBS, 3, soft)
    expected = F.kl_div(torch.log(torch.tensor(PROBS)), torch.tensor(soft), reduction="batchmean")
    assert report["kl"] == pytest.approx(float(expected))


def test_auroc_leaves_out_a_class_that_never_occurs():
    truth = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1]])
    # class 0: positives score 0.8, 0.3 vs negatives 0.4, 0.1 -> 3 of 4 pairs; class 1 the same by symmetry
    assert auroc_ovr(truth, probs) == pytest.approx(0.75)
    assert auroc_ovr(np.zeros(3, int), probs[:3]) is None


def test_ece_and_mce_by_hand():
    confidence = np.array([0.15, 0.15, 0.85, 0.95])
    correct = np.array([1, 0, 1, 1])
    result = calibration(confidence, correct, bins=10)
    # bin 1: confidence .15, accuracy .5 (gap .35, weight 2/4); bin 8: .85 vs 1 (.15); bin 9: .95 vs 1 (.05)
    assert result["ece"] == pytest.approx(0.5 * 0.35 + 0.25 * 0.15 + 0.25 * 0.05)
    assert result["mce"] == pytest.approx(0.35)
    assert result["reliability"]["count"] == [0, 2, 0, 0, 0, 0, 0, 0, 1, 1]


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.3, 1.0, 200_000)
    calibrated = rng.uniform(size=confidence.size) < confidence
    assert calibration(confidence, calibrated, 15)["ece"] < 0.01
    overconfident = rng.uniform(size=confidence.size) < confidence - 0.25
    assert calibration(confidence, overconfident, 15)["ece"] > 0.2


def test_boundaries_and_boundary_f1_with_tolerance():
    truth = np.zeros((1, 1, 4, 6), int)
    truth[..., 3:] = 1  # a vertical edge between columns 2 and 3
    assert boundaries(truth, (2, 3))[0, 0].tolist() == [[False, False, True, True, False, False]] * 4
    shifted = np.zeros_like(truth)
    shifted[..., 4:] = 1  # the same edge one column to the right
    exact = boundary_f1(truth, shifted, (2, 3), tolerance=0)
    # predicted edge pixels: columns 3, 4; true: 2, 3 -> column 3 matches on both sides
    assert exact["precision"] == pytest.approx(0.5) and exact["recall"] == pytest.approx(0.5)
    assert boundary_f1(truth, shifted, (2, 3), tolerance=1)["f1"] == pytest.approx(1.0)
    flat = np.zeros_like(truth)
    assert boundary_f1(flat, flat, (2, 3), 1)["f1"] == 1.0
    assert boundary_f1(truth, flat, (2, 3), 1)["f1"] == 0.0


def test_flicker_counts_changes_where_the_truth_is_stable():
    truth = np.array([[0, 0, 0, 1, 1]])
    predicted = np.array([[0, 1, 0, 1, 0]])
    result = flicker(truth, predicted)
    # truth stable at steps 0-1, 1-2, 3-4 (3); predicted changes at 0-1, 1-2, 3-4 and 2-3
    assert result["flicker"] == pytest.approx(3 / 3)
    assert result["predicted_change_rate"] == pytest.approx(4 / 4)
    assert result["true_change_rate"] == pytest.approx(1 / 4)
    assert flicker(truth, truth)["flicker"] == 0.0


def test_regression_report_by_hand_and_openstl_convention():
    truth = np.zeros((1, 2, 2, 2, 1))
    predicted = truth.copy()
    predicted[0, 0, 0, 0, 0] = 2.0  # frame 0: one error of 2; frame 1: none
    report = regression_report(truth + np.arange(8).reshape(truth.shape), predicted + np.arange(8).reshape(truth.shape))
    assert report["rmse"] == pytest.approx(np.sqrt(4 / 8))
    assert report["mae"] == pytest.approx(2 / 8)
    assert report["mse_per_frame"] == pytest.approx((4 + 0) / 2)  # summed over a frame, mean over frames
    assert report["mae_per_frame"] == pytest.approx((2 + 0) / 2)
    values = np.arange(8.0).reshape(truth.shape)
    assert report["r2"] == pytest.approx(r2_score(values.ravel(), (values + predicted).ravel()))


def test_report_sums_over_batches_equal_the_whole_split():
    """evaluate.py sums its metrics window batch by batch: the same figures as the whole split's."""
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, size=(7, 4, 6, 5))
    predicted = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 3, size=truth.shape))
    probs = rng.dirichlet(np.ones(3), size=truth.shape)
    soft = rng.dirichlet(np.ones(3), size=truth.shape)
    sums = ReportSums("segmentation", 3, bins=10, tolerance=1)
    for first in (0, 2, 3, 6):  # uneven batches of windows
        last = {0: 2, 2: 3, 3: 6, 6: 7}[first]
        sums.add(truth[first:last], predicted[first:last], probs[first:last], soft[first:last])
    streamed = sums.result()
    whole = {**class_report(truth.ravel(), predicted.ravel(), probs.reshape(-1, 3), 3, soft.reshape(-1, 3)),
             "calibration": calibration(probs.reshape(-1, 3).max(1), probs.reshape(-1, 3).argmax(1) == truth.ravel(), 10),
             "boundary": boundary_f1(truth, predicted, (2, 3), 1), "temporal": flicker(truth, predicted)}
    assert_same_figures(streamed, whole, rel=1e-12)
    assert streamed["per_class"]["f1"] == pytest.approx(f1_score(truth.ravel(), predicted.ravel(), average=None))


def test_the_auroc_of_sampled_windows_is_their_nodes_auroc():
    rng = np.random.default_rng(6)
    truth = rng.integers(0, 3, size=(6, 2, 4, 4))
    probs = rng.dirichlet(np.ones(3), size=truth.shape)
    sampled = np.array([True, False, True, True, False, False])
    sums = ReportSums("segmentation", 3, bins=10, tolerance=1)
    sums.add(truth[:3], truth[:3], probs[:3], sampled=sampled[:3])
    sums.add(truth[3:], truth[3:], probs[3:], sampled=sampled[3:])
    kept = truth[sampled].ravel()
    assert sums.result()["auroc"] == pytest.approx(roc_auc_score(kept, probs[sampled].reshape(-1, 3), multi_class="ovr"))
    assert sums.result()["nll"] == pytest.approx(class_report(truth.ravel(), truth.ravel(), probs.reshape(-1, 3), 3)["nll"])


def test_regression_sums_over_batches_equal_scikit_learn():
    rng = np.random.default_rng(7)
    truth = 100 + rng.normal(size=(5, 3, 4, 4, 2))  # far from 0: the R2's total sum of squares is merged, not E[y^2] - E[y]^2
    predicted = truth + 0.1 * rng.normal(size=truth.shape)
    sums = RegressionSums()
    for first in range(0, 5, 2):
        sums.add(truth[first:first + 2], predicted[first:first + 2])
    streamed = sums.result()
    assert streamed == pytest.approx(regression_report(truth, predicted), rel=1e-10)
    assert streamed["r2"] == pytest.approx(r2_score(truth.ravel(), predicted.ravel()), rel=1e-10)
