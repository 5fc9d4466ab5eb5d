"""Forecast verification against hand-computed values on a 4x4 example and against pysteps."""

from __future__ import annotations

import numpy as np
import pytest

from regimen.scores.verification import VerificationSums

OBSERVED = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
FORECAST = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def scored(observed, forecast, thresholds, scales, valid=None) -> dict:
    sums = VerificationSums(thresholds, scales, observed.shape[1])
    sums.add(observed, forecast, valid)
    return sums.result()["by_threshold"]


def test_scores_by_hand_on_a_4x4_example():
    result = scored(OBSERVED[None, None], FORECAST[None, None], [1], [1, 3])["1"]
    # hits (0,1) (1,1); misses (0,0) (1,0); false alarms (0,2) (1,2); 10 correct negatives
    assert (result["hits"], result["misses"], result["false_alarms"], result["correct_negatives"]) == (2, 2, 2, 10)
    assert result["csi"] == pytest.approx(1 / 3) and result["pod"] == 0.5 and result["far"] == 0.5
    assert result["bias"] == 1.0
    assert result["hss"] == pytest.approx(2 * (2 * 10 - 2 * 2) / (4 * 12 + 4 * 12))
    assert result["csi_pool4"] == 1.0 and result["csi_pool16"] == 1.0  # one block, an event in both
    assert result["fss"]["1"] == pytest.approx(1 - (4 - 2 * 2 + 4) / (4 + 4))  # sums f^2 4, fo 2, o^2 4
    assert 0 < result["fss"]["3"] < 1 and result["fss"]["3"] > result["fss"]["1"]  # nearer at a larger scale
    assert result["frame"]["csi"] == [pytest.approx(1 / 3)]


def test_a_threshold_counts_values_equal_to_it_as_events_and_no_event_gives_none():
    result = scored(np.full((1, 1, 2, 2), 2.0), np.full((1, 1, 2, 2), 2.0), [2.0, 5.0], [1])
    assert result["2"]["csi"] == 1.0 and result["2"]["hits"] == 4
    assert result["5"]["csi"] is None and result["5"]["fss"]["1"] is None and result["5"]["correct_negatives"] == 4


def test_masked_pixels_change_no_score():
    rng = np.random.default_rng(1)
    observed, forecast = rng.random((2, 3, 8, 8)), rng.random((2, 3, 8, 8))
    valid = rng.random(observed.shape) > 0.2
    clean = scored(observed, forecast, [0.5], [1, 3], valid)
    garbage = np.where(valid, observed, rng.random(observed.shape) * 100)
    assert scored(garbage, np.where(valid, forecast, -garbage), [0.5], [1, 3], valid) == clean


def test_equal_pysteps_on_random_fields_with_masks():
    verification = pytest.importorskip(
        "pysteps.verification", reason="pysteps is a test reference: pip install -r requirements-pysteps.txt")
    rng = np.random.default_rng(2)
    observed = rng.gamma(0.6, 20.0, size=(3, 4, 20, 24))
    forecast = observed * rng.lognormal(0, 0.5, size=observed.shape)
    valid = rng.random(observed.shape) > 0.2
    thresholds, scales = [5.0, 16.0, 40.0], [1, 4, 9]
    ours = scored(observed, forecast, thresholds, scales, valid)
    for threshold in thresholds:
        mine = ours[str(int(threshold))]
        overall = verification.det_cat_fct_init(threshold)
        for t in range(observed.shape[1]):
            table = verification.det_cat_fct_init(threshold)
            for accumulate in (table, overall):
                verification.det_cat_fct_accum(accumulate, forecast[:, t][valid[:, t]], observed[:, t][valid[:, t]])
            theirs = verification.det_cat_fct_compute(table, ["csi", "pod", "far", "bias", "hss"])
            for name in ("csi", "pod", "far", "bias", "hss"):
                assert mine["frame"][name][t] == pytest.approx(theirs[name.upper()], rel=1e-9, abs=1e-12)
        theirs = verification.det_cat_fct_compute(overall, ["csi", "pod", "far", "bias", "hss"])
        for name in ("csi", "pod", "far", "bias", "hss"):
            assert mine[name] == pytest.approx(theirs[name.upper()], rel=1e-9, abs=1e-12)
        for scale in scales:
            every = verification.fss_init(threshold, scale)
            for t in range(observed.shape[1]):
                frame = verification.fss_init(threshold, scale)
                for window in range(observed.shape[0]):
                    masked = [np.where(valid[window, t], field[window, t], np.nan) for field in (forecast, observed)]
                    for accumulate in (frame, every):
                        verification.fss_accum(accumulate, *masked)
                assert mine["frame"]["fss"][str(scale)][t] == pytest.approx(verification.fss_compute(frame),
                                                                                 rel=1e-9)
            assert mine["fss"][str(scale)] == pytest.approx(verification.fss_compute(every), rel=1e-9)
