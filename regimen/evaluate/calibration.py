"""Phase 5's calibration of class probabilities, fitted on the validation split.

Two calibrators, both stored as plain arrays (`calibration.npz`), never as a
pickled estimator:

- temperature scaling: one scalar `T`, `softmax(log p / T)`, fitted by LBFGS on
  the NLL (it never changes the predicted label);
- isotonic regression: one `sklearn.isotonic.IsotonicRegression` per class on
  one-vs-rest targets (`out_of_bounds="clip"`), rows renormalised; the fitted
  step function is kept as its thresholds and applied with `np.interp`, which
  is what the estimator's `predict` computes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from regimen.core.config import CALIBRATIONS
from regimen.core.errors import UserError
from regimen.scores.metrics import TINY, calibration


@dataclass
class Calibrator:
    """A fitted calibrator: `method` and its arrays."""

    method: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for `probs` `[N, K]`."""
        if self.method == "temperature":
            logits = torch.from_numpy(np.log(np.clip(probs, TINY, None)))
            return F.softmax(logits / float(self.arrays["temperature"][0]), dim=1).numpy()
        if self.method == "isotonic":
            columns = [np.interp(probs[:, k], self.arrays[f"x_{k}"], self.arrays[f"y_{k}"])
                       for k in range(probs.shape[1])]
            out = np.stack(columns, axis=1) + TINY
            return out / out.sum(axis=1, keepdims=True)
        return probs

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, method=np.array(self.method), **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, path) -> "Calibrator":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            method = str(arrays.pop("method"))
        except Exception as error:
            raise UserError(f"{path}: not a readable calibration file ({type(error).__name__}: {error})") from None
        if method not in CALIBRATIONS[1:]:
            raise UserError(f"{path}: unknown calibration method {method!r}")
        return cls(method, arrays)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """The temperature minimising the NLL of `softmax(log probs / T)` (LBFGS on log T)."""
    logits = torch.from_numpy(np.log(np.clip(probs, TINY, None))).double()
    target = torch.from_numpy(labels).long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return Calibrator("temperature", {"temperature": np.array([float(log_t.detach().exp())])})


def fit_isotonic(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """One isotonic map per class from `p_k` to the frequency of class k. scikit-learn is imported
    here, where a map is fitted: applying one (a bundle, `Calibrator`) needs only its arrays."""
    from sklearn.isotonic import IsotonicRegression

    arrays = {}
    for k in range(probs.shape[1]):
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        model.fit(probs[:, k], (labels == k).astype(np.float64))
        arrays[f"x_{k}"], arrays[f"y_{k}"] = model.X_thresholds_, model.y_thresholds_
    return Calibrator("isotonic", arrays)


def choose_calibrator(probs: np.ndarray, labels: np.ndarray, method: str, bins: int) -> tuple[Calibrator, dict]:
    """Fit the configured calibrator on validation probabilities `[N, K]`; `auto` keeps the one
    with the lower validation ECE. Returns it and the validation ECE of every candidate."""
    if method == "none":
        return Calibrator("none"), {}
    candidates = {name: fit(probs, labels) for name, fit in
                  (("temperature", fit_temperature), ("isotonic", fit_isotonic))
                  if method in ("auto", name)}
    report = {"uncalibrated": _ece(probs, labels, bins)}
    report.update({name: _ece(c(probs), labels, bins) for name, c in candidates.items()})
    chosen = min(candidates, key=lambda name: report[name])
    return candidates[chosen], report


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    return calibration(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)["ece"]
