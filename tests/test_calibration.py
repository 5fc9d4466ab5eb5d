"""Temperature scaling and isotonic calibration: they fit, store as arrays and lower the ECE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from regimen.evaluate.calibration import Calibrator, choose_calibrator, fit_isotonic, fit_temperature
from regimen.core.errors import UserError
from regimen.scores.metrics import calibration


def overconfident(n=20_000, k=3, seed=0):
    """Labels drawn from softmax(z), probabilities reported as softmax(3 z): over-confident by T = 3."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in true_p])
    sharp = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    return sharp, labels


def ece(probs, labels):
    return calibration(probs.max(1), probs.argmax(1) == labels, 15)["ece"]


def test_temperature_recovers_the_sharpening_and_keeps_the_labels():
    probs, labels = overconfident()
    calibrator = fit_temperature(probs, labels)
    assert calibrator.arrays["temperature"][0] == pytest.approx(3.0, rel=0.05)
    calibrated = calibrator(probs)
    assert np.allclose(calibrated.sum(1), 1) and (calibrated.argmax(1) == probs.argmax(1)).all()
    assert ece(calibrated, labels) < ece(probs, labels) / 3


def test_isotonic_arrays_predict_what_sklearn_predicts():
    probs, labels = overconfident(seed=1)
    calibrator = fit_isotonic(probs, labels)
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, 1], labels == 1)
    grid = np.linspace(-0.5, 1.5, 101)  # also outside the fitted range: clipped
    assert np.allclose(np.interp(grid, calibrator.arrays["x_1"], calibrator.arrays["y_1"]), model.predict(grid))
    calibrated = calibrator(probs)
    assert np.allclose(calibrated.sum(1), 1)
    assert ece(calibrated, labels) < ece(probs, labels) / 3


def test_auto_keeps_the_lower_validation_ece_and_round_trips_through_npz(tmp_path):
    probs, labels = overconfident(seed=2)
    chosen, report = choose_calibrator(probs, labels, "auto", 15)
    assert set(report) == {"uncalibrated", "temperature", "isotonic"}
    assert report[chosen.method] == min(report["temperature"], report["isotonic"])
    path = tmp_path / "calibration.npz"
    path.write_bytes(chosen.to_npz())
    loaded = Calibrator.from_npz(path)
    assert loaded.method == chosen.method and np.array_equal(loaded(probs), chosen(probs))
    none, report = choose_calibrator(probs, labels, "none", 15)
    assert none(probs) is probs and report == {}


def test_a_calibration_file_with_an_object_array_is_refused(tmp_path):
    path = tmp_path / "calibration.npz"
    np.savez(path, method=np.array("temperature"), temperature=np.array([object()], dtype=object))
    with pytest.raises(UserError, match="not a readable calibration file"):
        Calibrator.from_npz(path)
