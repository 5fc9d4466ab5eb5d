"""The per-frame video scores of the spatiotemporal forecasting tables (OpenSTL's, on values in [0, 1]):

- MSE and MAE of a frame: the squared (absolute) errors summed over its pixels
  and channels, averaged over frames and sequences (so Moving MNIST's 29.80 is
  about 0.0073 a pixel);
- PSNR of a frame: `-10 log10` of its per-pixel mean squared error, averaged;
- SSIM of a frame: scikit-image's `structural_similarity` of the prediction
  clipped to [0, 1] against the truth (`data_range` 1), averaged.

Sums per lead time, so a split streamed batch by batch scores as a whole.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

NAMES = ("mse_per_frame", "mae_per_frame", "psnr", "ssim")
MIN_MSE = 1e-10  # a perfect frame's PSNR is 100 dB, not infinite


def frame_scores(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """`[4]` scores (NAMES) of one frame `[H, W, C]` of values in [0, 1]."""
    error = predicted.astype(np.float64) - truth.astype(np.float64)
    mse = float((error ** 2).mean())
    ssim = structural_similarity(truth.astype(np.float64), np.clip(predicted, 0.0, 1.0).astype(np.float64),
                                 data_range=1.0, channel_axis=-1)
    return np.array([(error ** 2).sum(), np.abs(error).sum(), -10.0 * np.log10(max(mse, MIN_MSE)), ssim])


class FrameScoreSums:
    """The scores of every frame, summed per lead time, of fields `[B, T, H, W, C]`."""

    def __init__(self, lead_times: int):
        self.sums = np.zeros((lead_times, len(NAMES)))
        self.frames = 0  # per lead time

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        for t in range(truth.shape[1]):
            self.sums[t] += sum(frame_scores(truth[b, t], predicted[b, t]) for b in range(len(truth)))
        self.frames += len(truth)

    def result(self) -> dict[str, list[float]]:
        """Each score per lead time."""
        means = self.sums / max(self.frames, 1)
        return {name: means[:, i].tolist() for i, name in enumerate(NAMES)}
