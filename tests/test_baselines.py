"""evaluate.py's baselines for tagging data: hmmlearn's Gaussian HMM with every parameter counted
from the training labels, and the per-frame Gaussian classifier, against hmmlearn called directly."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import ok, tiny_config
from hmmlearn.hmm import GaussianHMM
from sklearn.metrics import accuracy_score, f1_score

from regimen.core.config_file import load_config
from regimen.data.preprocess import preprocess
from regimen.evaluate.baselines import RIDGE, fit_from_labels, gaussian_baselines, left_out_because, whole_sequences

K, F = 3, 3


def sticky_gaussian_hmm(rng, sequences: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a sticky 3-state chain (stay 0.9) and 3 Gaussian features per frame."""
    means = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, -0.5], [-0.5, 1.0, 1.0]])
    y = np.zeros((sequences, frames), np.int64)
    y[:, 0] = rng.integers(0, K, sequences)
    for t in range(1, frames):
        move = rng.random(sequences) > 0.9
        y[:, t] = np.where(move, rng.integers(0, K, sequences), y[:, t - 1])
    x = means[y] + rng.normal(scale=0.8, size=(sequences, frames, F))
    return x, y


@pytest.fixture(scope="module")
def sensors(tmp_path_factory):
    """Processed non-grid tagging data drawn from a Gaussian HMM: (config path, folder, meta)."""
    folder = tmp_path_factory.mktemp("sensors")
    x, y = sticky_gaussian_hmm(np.random.default_rng(0), 20, 24)
    np.savez(folder / "sensors.npz", X=x, Y=y)
    config = tiny_config(folder, {"data": {"dataset": "npz", "path": str(folder / "sensors.npz"), "task": "tagging",
                                           "T_window": 6, "stride": 6}})
    processed, meta = preprocess(load_config(config))
    return config, processed, meta


def test_the_parameters_are_the_training_labels_counts(sensors):
    _, folder, meta = sensors
    train = whole_sequences(folder, "train", meta)
    model = fit_from_labels(train, K)
    x = np.concatenate([s[0] for s in train])
    y = np.concatenate([s[1] for s in train])
    counts = np.zeros((K, K))
    for _, labels in train:
        for a, b in zip(labels[:-1], labels[1:]):
            counts[a, b] += 1
    np.testing.assert_allclose(model.transmat_, counts / counts.sum(1, keepdims=True))
    np.testing.assert_allclose(model.startprob_, np.bincount([s[1][0] for s in train], minlength=K) / len(train))
    for k in range(K):
        np.testing.assert_allclose(model.means_[k], x[y == k].mean(0))
        np.testing.assert_allclose(model.covars_[k], np.cov(x[y == k].T, bias=True) + RIDGE * np.eye(F))


def direct_model(train, startprob, transmat) -> GaussianHMM:
    """hmmlearn's GaussianHMM given the class Gaussians directly (numpy's covariances)."""
    x, y = np.concatenate([s[0] for s in train]), np.concatenate([s[1] for s in train])
    model = GaussianHMM(K, covariance_type="full", init_params="", params="")
    model.startprob_, model.transmat_, model.n_features = startprob, transmat, F
    model.means_ = np.stack([x[y == k].mean(0) for k in range(K)])
    model.covars_ = np.stack([np.cov(x[y == k].T, bias=True) + RIDGE * np.eye(F) for k in range(K)])
    return model


def test_both_baselines_equal_hmmlearn_called_directly(sensors):
    """The HMM decodes each whole test sequence; the per-frame classifier is the HMM whose start and
    every transition row are the class frequencies (then Viterbi decodes frame by frame)."""
    _, folder, meta = sensors
    train, test = whole_sequences(folder, "train", meta), whole_sequences(folder, "test", meta)
    fitted = fit_from_labels(train, K)
    priors = np.bincount(np.concatenate([s[1] for s in train]), minlength=K) / sum(len(s[1]) for s in train)
    models = {"gaussian_hmm": direct_model(train, fitted.startprob_, fitted.transmat_),
              "gaussian_classifier": direct_model(train, priors, np.tile(priors, (K, 1)))}
    x, truth = np.concatenate([s[0] for s in test]), np.concatenate([s[1] for s in test])
    report = gaussian_baselines(folder, meta, "test")
    for name, model in models.items():
        predicted = model.predict(x, [len(s[1]) for s in test])
        assert report[name]["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
        assert report[name]["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert report["gaussian_hmm"]["accuracy"] > report["gaussian_classifier"]["accuracy"]  # sticky regimes


def test_evaluate_reports_the_baselines_beside_the_model(sensors, tmp_path):
    config, folder, meta = sensors
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "run"), "--set", "training.epochs=1",
       "--set", "model.pgm.type=hmm")
    done = ok("evaluate.py", "--config", config, "--ckpt", str(tmp_path / "run" / "best.pt"),
              "--set", "model.pgm.type=hmm")
    section = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluate_test"]
    assert section["baselines"] == gaussian_baselines(folder, meta, "test")
    assert "test baseline gaussian_hmm: accuracy" in done.stderr
    ok("evaluate.py", "--config", config, "--ckpt", str(tmp_path / "run" / "best.pt"), "--split", "val",
       "--set", "model.pgm.type=hmm", "--set", "evaluation.baselines=false")
    assert "baselines" not in json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluate_val"]


@pytest.mark.parametrize("meta, why", [
    ({"task": "tagging", "masks": None, "shapes": {"train": {"X": [40, 8, 12, 12, 1]}}}, "a frame has 144 values, above 64"),
    ({"task": "tagging", "masks": {"mask": "M"}, "shapes": {"train": {"X": [40, 8, 1, 1, 3]}}}, "missing frames"),
])
def test_grids_and_masked_frames_leave_the_baselines_out(tmp_path, caplog, meta, why):
    with caplog.at_level(logging.INFO):
        assert gaussian_baselines(tmp_path, meta, "test") is None
    assert why in caplog.text


def test_a_frame_of_64_values_in_windows_of_8_frames_keeps_the_baselines():
    """The limit is on a frame's values, not a window's: 8 x 8 grids in windows of 8 frames qualify."""
    assert left_out_because({"task": "tagging", "masks": None, "shapes": {"train": {"X": [2520, 8, 8, 8, 1]}}}) is None
    assert left_out_because({"task": "tagging", "masks": None, "shapes": {"train": {"X": [2520, 8, 8, 9, 1]}}}) == \
        "a frame has 72 values, above 64"
