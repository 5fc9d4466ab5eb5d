"""Built-in datasets: generated, seeded, no download (your own npz is read by `regimen.data.npz`).

Every loader returns a `Dataset` whose arrays follow the project's layout:
`X` float32 `[N, T, H, W, C]`; `Y` int64 `[N, T, H, W]` (segmentation), `[N, T]`
(tagging) or float32 `[N, T, H, W, C']` (regression); optional soft targets `P`
float32 `[..., K]`. Generators are vectorised numpy, driven by one
`numpy.random.Generator`, so the same seed gives byte-identical arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from regimen.core.config import DataConfig
from regimen.core.progress import track
from regimen.scores.metrics import mean_iou

log = logging.getLogger(__name__)

STORM_THRESHOLDS = (0.3, 1.0)  # rain intensity separating none | light | heavy
DIGIT_INK = 0.3  # canvas intensity above which a pixel belongs to a digit
REGIME_NAMES = ("drift east", "drift south", "diffusion", "drift west")


@dataclass
class Dataset:
    """Arrays of one dataset before splitting, with what describes them."""

    X: np.ndarray
    Y: np.ndarray
    task: str
    num_classes: Optional[int]
    class_names: list[str]
    channel_names: list[str]
    P: Optional[np.ndarray] = None
    # False where flips/rotations change the label (a drift east becomes a drift west).
    spatial_invariant: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)


def load_dataset(data: DataConfig, seed: int) -> Dataset:
    """Generate the configured built-in dataset (`storms`, `digits`, `regimes`)."""
    rng = np.random.default_rng(seed)
    generate = {"storms": make_storms, "digits": make_digits, "regimes": make_regimes}[data.dataset]
    dataset = generate(data, rng)
    dataset.params["seed"] = seed
    return dataset


# --------------------------------------------------------------------------- storms


def make_storms(data: DataConfig, rng: np.random.Generator) -> Dataset:
    """Rain cells that advect with a per-sequence wind, grow and decay.

    The clean field is a sum of Gaussian cells whose amplitude follows a
    Gaussian life curve in time; labels are its classes none / light / heavy.
    The observation adds static ground clutter and strong per-pixel noise, so a
    per-frame threshold is poor and spatio-temporal context pays.
    """
    gen, storm = data.generator, data.generator.storms
    n, t, h, w, m = gen.num_sequences, gen.sequence_length, gen.height, gen.width, storm.num_cells
    scale = min(h, w) / 32.0
    # Cell parameters, shape [N, M] (wind shared by the cells of a sequence).
    wind = rng.uniform(-1.0, 1.0, size=(n, 1, 2)) * scale
    velocity = wind + rng.normal(0.0, 0.3 * scale, size=(n, m, 2))
    start = rng.uniform(0.0, 1.0, size=(n, m, 2)) * np.array([h, w])
    peak = rng.uniform(0.6, 2.5, size=(n, m))
    peak_time = rng.uniform(-0.25 * t, 1.25 * t, size=(n, m))
    lifetime = rng.uniform(0.25 * t, 1.0 * t, size=(n, m))
    radius = rng.uniform(2.5, 6.0, size=(n, m)) * scale
    clutter = (rng.random((n, h, w)) < storm.clutter_fraction) * rng.uniform(0.8, 2.0, size=(n, h, w))

    frames = np.arange(t + 1, dtype=np.float64)  # one extra frame: the next-frame target
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    clean = np.empty((n, t + 1, h, w), dtype=np.float32)
    chunk = 16
    for lo in track(range(0, n, chunk), "storms", "chunks"):
        sl = slice(lo, lo + chunk)
        # shape: (chunk, T+1, M)
        envelope = np.exp(-0.5 * ((frames[None, :, None] - peak_time[sl, None]) / lifetime[sl, None]) ** 2)
        cy = start[sl, None, :, 0] + velocity[sl, None, :, 0] * frames[None, :, None]
        cx = start[sl, None, :, 1] + velocity[sl, None, :, 1] * frames[None, :, None]
        r = radius[sl, None] * (0.6 + 0.4 * envelope)
        # shape: (chunk, T+1, M, H, W)
        d2 = (yy - cy[..., None, None]) ** 2 + (xx - cx[..., None, None]) ** 2
        cells = (peak[sl, None] * envelope)[..., None, None] * np.exp(-d2 / (2 * r[..., None, None] ** 2))
        clean[sl] = cells.sum(axis=2)

    noise = rng.normal(0.0, storm.noise_std, size=(n, t, h, w))
    observed = (clean[:, :t] + clutter[:, None] + noise).astype(np.float32)
    labels = storm_classes(clean[:, :t])
    if data.task == "regression":
        target, num_classes, soft = clean[:, data.target_shift:t + data.target_shift, ..., None], None, None
    else:
        target, num_classes, soft = labels, 3, storm_soft_targets(clean[:, :t])
    return Dataset(
        X=observed[..., None], Y=target, P=soft, task=data.task, num_classes=num_classes,
        class_names=["none", "light", "heavy"] if num_classes else [],
        channel_names=["reflectivity"],
        params={"dataset": "storms", "num_sequences": n, "sequence_length": t, "height": h,
                "width": w, "num_cells": m, "noise_std": storm.noise_std,
                "clutter_fraction": storm.clutter_fraction, "thresholds": list(STORM_THRESHOLDS)},
        baselines=storm_baselines(observed, labels),
    )


def storm_classes(intensity: np.ndarray) -> np.ndarray:
    """Class 0 none, 1 light, 2 heavy, by the two intensity thresholds."""
    return np.digitize(intensity, STORM_THRESHOLDS).astype(np.int64)


def storm_soft_targets(intensity: np.ndarray, softness: float = 0.1) -> np.ndarray:
    """Class distribution of a clean intensity: logistic steps at the thresholds.

    Returns float32 `[..., 3]`, non-negative, summing to 1.
    """
    above_light = 1.0 / (1.0 + np.exp(-(intensity - STORM_THRESHOLDS[0]) / softness))
    above_heavy = 1.0 / (1.0 + np.exp(-(intensity - STORM_THRESHOLDS[1]) / softness))
    return np.stack([1.0 - above_light, above_light - above_heavy, above_heavy], -1).astype(np.float32)


def storm_baselines(observed: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """mIoU (in points) of thresholding one noisy frame vs. a 3x3x3 space-time mean.

    Args:
        observed: noisy intensity `[N, T, H, W]`.
        labels: classes of the clean field `[N, T, H, W]`.
    """
    per_frame = mean_iou(labels, storm_classes(observed), 3)
    smoothed = ndimage.uniform_filter(observed, size=(1, 3, 3, 3), mode="nearest")
    smooth = mean_iou(labels, storm_classes(smoothed), 3)
    return {"threshold_per_frame_miou": round(100 * per_frame, 2),
            "threshold_smoothed_miou": round(100 * smooth, 2),
            "smoothing_gap_points": round(100 * (smooth - per_frame), 2)}


# --------------------------------------------------------------------------- digits


def make_digits(data: DataConfig, rng: np.random.Generator) -> Dataset:
    """scikit-learn's handwritten digits moving and bouncing on a canvas.

    Segmentation labels each pixel with background (0) or its digit + 1 (the
    brighter digit wins where two overlap); tagging labels each frame with the
    digit nearest the canvas centre; regression targets the next clean frame.
    """
    from sklearn.datasets import load_digits

    gen, cfg = data.generator, data.generator.digits
    n, t, h, w, d = gen.num_sequences, gen.sequence_length, gen.height, gen.width, cfg.num_digits
    bank = load_digits()
    side = 8 * cfg.digit_scale
    # shape: (1797, side, side), intensities in [0, 1]
    images = np.kron(bank.images / 16.0, np.ones((cfg.digit_scale, cfg.digit_scale)))
    choice = rng.integers(0, len(images), size=(n, d))
    classes = bank.target[choice]  # shape: (N, D)
    room = np.array([h - side, w - side], dtype=np.float64)
    start = rng.uniform(0.0, 1.0, size=(n, d, 2)) * room
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, d))
    speed = rng.uniform(1.0, 2.5, size=(n, d)) * min(h, w) / 32.0
    velocity = np.stack([np.sin(angle), np.cos(angle)], -1) * speed[..., None]

    # Bouncing between 0 and room is a triangle wave of the unbounded path.
    frames = np.arange(t + 1, dtype=np.float64)
    path = start[:, None] + velocity[:, None] * frames[None, :, None, None]  # (N, T+1, D, 2)
    folded = np.mod(path, 2 * room)
    position = np.rint(room - np.abs(folded - room)).astype(np.int64)

    layers = _paint_digits(images[choice], position, h, w)  # (D, N, T+1, H, W)
    canvas = layers.max(axis=0)  # (N, T+1, H, W)
    owner = layers.argmax(axis=0)
    segmentation = np.where(canvas > DIGIT_INK,
                            np.take_along_axis(classes[:, None, None, None, :] + 1,
                                               owner[..., None], -1)[..., 0], 0)

    centre = position[:, :t] + side / 2.0 - np.array([h, w]) / 2.0  # (N, T, D, 2)
    nearest = np.argmin((centre ** 2).sum(-1), axis=-1)  # (N, T)
    tags = np.take_along_axis(classes[:, None, :], nearest[..., None], -1)[..., 0]

    observed = canvas[:, :t] + rng.normal(0.0, cfg.noise_std, size=(n, t, h, w))
    if data.task == "segmentation":
        target, num_classes = segmentation[:, :t].astype(np.int64), 11
        names = ["background"] + [str(i) for i in range(10)]
    elif data.task == "tagging":
        target, num_classes, names = tags.astype(np.int64), 10, [str(i) for i in range(10)]
    else:
        shift = data.target_shift
        target, num_classes, names = canvas[:, shift:t + shift, ..., None].astype(np.float32), None, []
    return Dataset(
        X=observed[..., None].astype(np.float32), Y=target, task=data.task,
        num_classes=num_classes, class_names=names, channel_names=["intensity"],
        params={"dataset": "digits", "num_sequences": n, "sequence_length": t, "height": h,
                "width": w, "num_digits": d, "digit_scale": cfg.digit_scale,
                "noise_std": cfg.noise_std},
    )


def _paint_digits(patches: np.ndarray, position: np.ndarray, h: int, w: int) -> np.ndarray:
    """One layer per digit: `patches` `[N, D, side, side]` placed at `position` `[N, T+1, D, 2]`
    (top-left corners) on an `h x w` canvas; returns `[D, N, T+1, H, W]`."""
    n, d, side = patches.shape[0], patches.shape[1], patches.shape[2]
    frames = position.shape[1]
    offsets = np.arange(side)
    layers = np.zeros((d, n, frames, h, w), dtype=np.float32)
    nn, tt = np.meshgrid(np.arange(n), np.arange(frames), indexing="ij")
    for k in track(range(d), "digits", "digits"):
        rows = position[:, :, k, 0, None, None] + offsets[:, None]  # (N, T+1, side, 1)
        cols = position[:, :, k, 1, None, None] + offsets[None, :]  # (N, T+1, 1, side)
        layers[k, nn[..., None, None], tt[..., None, None], rows, cols] = patches[:, k, None]
    return layers


# --------------------------------------------------------------------------- regimes


def make_regimes(data: DataConfig, rng: np.random.Generator) -> Dataset:
    """A random field whose dynamics switch by a sticky hidden Markov chain.

    Regimes: drift east, drift south, diffusion, drift west (the first
    `num_regimes`). The label of frame t is the regime that produced it from
    frame t-1, so it can be read only from two frames: temporal context pays.
    """
    gen, cfg = data.generator, data.generator.regimes
    n, t, h, w, k = gen.num_sequences, gen.sequence_length, gen.height, gen.width, cfg.num_regimes
    transition = np.full((k, k), (1.0 - cfg.stay_prob) / (k - 1))
    np.fill_diagonal(transition, cfg.stay_prob)
    # shape: (N, T+1); step s produces frame s from frame s-1 (frame -1 is the seed field).
    regime = np.empty((n, t + 1), dtype=np.int64)
    regime[:, 0] = rng.integers(0, k, size=n)
    cumulative = transition.cumsum(axis=1)
    for s in range(1, t + 1):
        u = rng.random(n)[:, None]
        regime[:, s] = np.minimum((u > cumulative[regime[:, s - 1]]).sum(axis=1), k - 1)

    def smooth_noise() -> np.ndarray:
        white = rng.normal(size=(n, h, w))
        return _standardise(ndimage.gaussian_filter(white, sigma=(0, 1.5, 1.5), mode="wrap"))

    field_ = smooth_noise()
    frames = np.empty((n, t + 1, h, w), dtype=np.float32)
    for s in track(range(t + 1), "regimes", "frames"):
        # shape: (N, H, W); 5-point Laplacian on the torus, over the grid axes only
        laplacian = (np.roll(field_, 1, 1) + np.roll(field_, -1, 1) + np.roll(field_, 1, 2)
                     + np.roll(field_, -1, 2) - 4 * field_)
        candidates = [np.roll(field_, 1, axis=2), np.roll(field_, 1, axis=1),
                      field_ + 0.25 * laplacian, np.roll(field_, -1, axis=2)]
        field_ = np.choose(regime[:, s, None, None], candidates[:k])
        field_ = _standardise(field_ + 0.1 * smooth_noise())
        frames[:, s] = field_
    observed = frames[:, 1:] + rng.normal(0.0, cfg.noise_std, size=(n, t, h, w))
    return Dataset(
        X=observed[..., None].astype(np.float32), Y=regime[:, 1:], task="tagging", num_classes=k,
        class_names=list(REGIME_NAMES[:k]), channel_names=["field"], spatial_invariant=False,
        params={"dataset": "regimes", "num_sequences": n, "sequence_length": t, "height": h,
                "width": w, "num_regimes": k, "stay_prob": cfg.stay_prob,
                "noise_std": cfg.noise_std},
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per sequence (axis 0), over the grid."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return (x - mean) / np.maximum(std, 1e-8)


# --------------------------------------------------------------------------- your own npz
