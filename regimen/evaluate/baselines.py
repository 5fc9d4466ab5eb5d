"""The baselines a tagging model must beat, fitted on the processed inputs of whole sequences.

`gaussian_hmm`: hmmlearn's `GaussianHMM` with full covariances, every parameter
counted from the training labels (start and transition frequencies, each
class's mean and covariance), decoding each whole sequence by Viterbi.
`gaussian_classifier`: the same class Gaussians and class frequencies, frame
by frame, without time. What thirty lines of hmmlearn give a user with sensor
data, reported beside the model so it shows whether the stack earns its keep.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from regimen.core import runs
from regimen.data.store import ArrayFile
from regimen.scores.metrics import label_metrics

if TYPE_CHECKING:  # hmmlearn (and scikit-learn under it) is imported where a baseline is fitted: 2 s of every
    from hmmlearn.hmm import GaussianHMM  # evaluate.py's start otherwise, for tagging data only

log = logging.getLogger(__name__)

MAX_FEATURES = 64  # per frame: a full covariance of more (a grid's pixels) is neither estimable nor a fair peer
RIDGE = 1e-6  # added to each covariance's diagonal, so a class seen in few frames still has an inverse


def whole_sequences(folder: Path, split: str, meta: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each sequence of a processed split: its inputs `[t, F]` (float64, a frame's values
    flattened) and labels `[t]`."""
    x, y = (ArrayFile(runs.store_path(folder, split, key)) for key in ("X", "Y"))
    pieces = meta["sequences"][split]
    return [(x.rows(p["offset"], p["frames"]).reshape(p["frames"], -1).astype(np.float64),
             y.rows(p["offset"], p["frames"]).astype(np.int64)) for p in pieces]


def fit_from_labels(sequences: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> GaussianHMM:
    """A `GaussianHMM` whose every parameter is counted from labelled sequences: start and
    transition frequencies (a class never left gets a uniform row), class means and covariances
    (maximum likelihood, plus `RIDGE` on the diagonal; an unseen class gets the overall ones)."""
    from hmmlearn.hmm import GaussianHMM

    features = sequences[0][0].shape[1]
    starts = np.bincount([labels[0] for _, labels in sequences], minlength=num_classes).astype(np.float64)
    moves = np.zeros((num_classes, num_classes))
    for _, labels in sequences:
        np.add.at(moves, (labels[:-1], labels[1:]), 1.0)
    rows = moves.sum(1, keepdims=True)
    x = np.concatenate([inputs for inputs, _ in sequences])
    y = np.concatenate([labels for _, labels in sequences])
    means, covariances = np.empty((num_classes, features)), np.empty((num_classes, features, features))
    for k in range(num_classes):
        frames = x[y == k] if (y == k).any() else x
        means[k] = frames.mean(0)
        covariances[k] = np.cov(frames, rowvar=False, bias=True).reshape(features, features)
    model = GaussianHMM(num_classes, covariance_type="full", init_params="", params="")
    model.startprob_ = starts / starts.sum()
    model.transmat_ = np.where(rows > 0, moves / np.maximum(rows, 1.0), 1.0 / num_classes)
    model.n_features = features  # hmmlearn sets it when it fits; here nothing is fitted
    model.means_, model.covars_ = means, covariances + RIDGE * np.eye(features)
    return model


def frame_by_frame(model: GaussianHMM, priors: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """The per-frame Gaussian classifier: argmax_k log prior_k + log N(x; mean_k, cov_k), `[t]`."""
    from scipy.stats import multivariate_normal

    log_likelihood = np.stack([multivariate_normal(mean, cov).logpdf(inputs).reshape(-1)
                               for mean, cov in zip(model.means_, model.covars_)], axis=1)  # [t, K]
    with np.errstate(divide="ignore"):  # a class never seen in training has prior 0
        return (np.log(priors)[None, :] + log_likelihood).argmax(1)


def left_out_because(meta: dict) -> Optional[str]:
    """Why the baselines do not apply to processed data (None: they do). `meta["shapes"]` holds
    the windows' shapes `[N, T, H, W, C]`: a frame is what follows T."""
    features = int(np.prod(meta["shapes"]["train"]["X"][2:]))
    if meta["task"] != "tagging":
        return "they tag frames"
    if meta.get("masks"):
        return "the data has missing frames"
    return f"a frame has {features} values, above {MAX_FEATURES}" if features > MAX_FEATURES else None


def gaussian_baselines(folder: Path, meta: dict, split: str) -> Optional[dict]:
    """Accuracy and macro F1 (and the rest of `label_metrics`) of both baselines on `split`, fitted
    on the training split; None (with a log line) where they do not apply."""
    why = left_out_because(meta)
    if why is not None:
        log.info("evaluation.baselines: the Gaussian HMM and classifier are left out: %s", why)
        return None
    k = meta["num_classes"]
    train = whole_sequences(folder, "train", meta)
    model = fit_from_labels(train, k)
    training_labels = np.concatenate([labels for _, labels in train])
    priors = np.bincount(training_labels, minlength=k) / len(training_labels)
    sequences = whole_sequences(folder, split, meta)
    truth = np.concatenate([labels for _, labels in sequences])
    decoded = np.concatenate([model.predict(inputs) for inputs, _ in sequences])
    per_frame = np.concatenate([frame_by_frame(model, priors, inputs) for inputs, _ in sequences])
    return {"gaussian_hmm": label_metrics(truth, decoded, k, "tagging"),
            "gaussian_classifier": label_metrics(truth, per_frame, k, "tagging")}
