"""The forecasts to beat, on the same windows and masks as the model: persistence and extrapolation.

- persistence holds the last observed frame's targets (its values, or its
  labels) for every lead time;
- extrapolation advects the last observed frame along the motion of the T_in
  observed input frames, by pysteps' semi-Lagrangian scheme. The motion is
  pysteps' Proesmans optical flow (no OpenCV needed; up to its 6 pyramid
  levels, as many as the grid allows) of each consecutive pair of observed
  frames (the first input channel), averaged. Labels are advected
  as one-hot fields and the most likely class is taken (a pixel that nothing
  reaches is class 0); values that nothing reaches take the field's minimum.

pysteps is optional (requirements-pysteps.txt): without it extrapolation is
left out, with one log line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def persistence(last: np.ndarray, lead_times: int) -> np.ndarray:
    """The last observed frame's targets `[B, 1, ...]` held for `lead_times` frames `[B, T_out, ...]`."""
    return np.repeat(last, lead_times, axis=1)


def has_pysteps() -> bool:
    return importlib.util.find_spec("pysteps") is not None


def _pysteps():
    """pysteps' Proesmans motion and semi-Lagrangian extrapolation (its import prints a line about
    its configuration file: kept off our stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from pysteps.extrapolation.semilagrangian import extrapolate
        from pysteps.motion.proesmans import proesmans
    return proesmans, extrapolate


def motion_field(frames: np.ndarray) -> np.ndarray:
    """The motion `[2, H, W]` (pixels per frame, x then y, as pysteps) of observed frames `[T_in, H, W]`:
    the mean of Proesmans' flow over each consecutive pair; zero from a single frame."""
    proesmans, _ = _pysteps()
    frames = frames.astype(np.float64)
    if len(frames) < 2:
        return np.zeros((2, *frames.shape[1:]))
    # pysteps' pyramid halves the grid per level; a level smaller than a pixel corrupts its memory.
    levels = min(6, max(1, int(np.log2(min(frames.shape[1:])))))
    return np.mean([proesmans(frames[t:t + 2], num_levels=levels, verbose=False) for t in range(len(frames) - 1)],
                   axis=0)


def advect(field: np.ndarray, motion: np.ndarray, lead_times: int, outside: float) -> np.ndarray:
    """One field `[H, W]` moved along `motion` for `lead_times` steps `[T_out, H, W]`; what nothing
    reaches is `outside`."""
    _, extrapolate = _pysteps()
    moved = extrapolate(field.astype(np.float64), motion, lead_times, outval=np.nan)
    return np.where(np.isfinite(moved), moved, outside)


def extrapolation(observed: np.ndarray, last: np.ndarray, lead_times: int, num_classes: Optional[int]
                  ) -> np.ndarray:
    """Extrapolation forecasts of a batch.

    Args:
        observed: the observed input frames `[B, T_in, C, H, W]` (model layout; channel 0 moves).
        last: the last observed frame's labels `[B, 1, H, W]` or values `[B, 1, H, W, C]`.
        lead_times: T_out.
        num_classes: K for labels, None for values.

    Returns:
        Labels `[B, T_out, H, W]` (int64) or values `[B, T_out, H, W, C]` (float32).
    """
    forecasts = []
    for frames, target in zip(observed, last):
        motion = motion_field(frames[:, 0])
        if num_classes is not None:
            one_hot = np.eye(num_classes)[target[0]]  # (H, W, K)
            moved = np.stack([advect(one_hot[..., k], motion, lead_times, 0.0) for k in range(num_classes)])
            forecasts.append(moved.argmax(axis=0))  # (T_out, H, W)
        else:
            values = target[0]  # (H, W, C)
            forecasts.append(np.stack([advect(values[..., c], motion, lead_times, float(values[..., c].min()))
                                       for c in range(values.shape[-1])], axis=-1))
    stacked = np.stack(forecasts)
    return stacked.astype(np.int64) if num_classes is not None else stacked.astype(np.float32)
