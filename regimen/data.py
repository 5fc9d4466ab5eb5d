"""Phase 0: split by sequence, add static features, normalise, cut windows, write.

`preprocess(config)` turns a `Dataset` into `data/processed/<name>/` with
`{train,val,test}.npz` and `meta.json`. Every input problem is found before
anything is written; the writes are atomic and byte-reproducible.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from regimen import files, folders, runs
from regimen.errors import UserError
from regimen.progress import track
from regimen.runs import dataset_name
from regimen.config import Config
from regimen.datasets import load_dataset

# Derivative along H, smoothing along W; its transpose the other way round.
SOBEL_H = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=np.float32)


def split_sequences(num_sequences: int, fractions: list[float], seed: int) -> dict[str, np.ndarray]:
    """Shuffle sequence indices and deal them to train/val/test (sorted within each).

    Raises:
        UserError: when a split would be empty.
    """
    order = np.random.default_rng(seed).permutation(num_sequences)
    n_val = int(round(fractions[1] * num_sequences))
    n_test = int(round(fractions[2] * num_sequences))
    n_train = num_sequences - n_val - n_test
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, size in sizes.items():
        if size <= 0:
            raise UserError(f"data.splits = {fractions}: split '{split}' gets {size} of "
                            f"{num_sequences} sequences; every split needs at least one")
    bounds = np.cumsum([0, n_train, n_val, n_test])
    return {split: np.sort(order[bounds[i]:bounds[i + 1]]) for i, split in enumerate(runs.SPLITS)}


def add_static_features(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Append precomputed channels to `x` `[N, T, H, W, C]`.

    - edges: spatial gradient magnitude (Sobel) of each input channel;
    - motion: difference to the previous frame of each channel (0 at t=0);
    - mask: 1 inside the domain disc (a radar's range ring), 0 outside.
    """
    extra, channel_names = [], []
    c = x.shape[-1]
    for name in names:
        if name == "edges":
            # Sobel within each frame and channel only (ndimage.sobel would smooth over N, T, C).
            gy = ndimage.correlate(x, SOBEL_H[None, None, :, :, None], mode="nearest")
            gx = ndimage.correlate(x, SOBEL_H.T[None, None, :, :, None], mode="nearest")
            extra.append(np.hypot(gx, gy))
            channel_names += [f"edges_{i}" for i in range(c)]
        elif name == "motion":
            extra.append(np.diff(x, axis=1, prepend=x[:, :1]))
            channel_names += [f"motion_{i}" for i in range(c)]
        elif name == "mask":
            n, t, h, w, _ = x.shape
            yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
            disc = (yy ** 2 + xx ** 2 <= (min(h, w) / 2) ** 2).astype(np.float32)
            extra.append(np.broadcast_to(disc[None, None, :, :, None], (n, t, h, w, 1)))
            channel_names.append("mask")
    if not extra:
        return x, []
    return np.concatenate([x, *[e.astype(np.float32) for e in extra]], axis=-1), channel_names


def channel_statistics(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every training frame and pixel (std >= 1e-6)."""
    mean = x_train.mean(axis=(0, 1, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 1, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def window_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
    """First frame of each sliding window that fits in `num_frames`."""
    return np.arange(0, num_frames - window + 1, stride)


def cut_windows(arrays: dict[str, np.ndarray], sequences: np.ndarray, window: int,
                stride: int) -> dict[str, np.ndarray]:
    """Windows of the given sequences: each array `[N, T, ...]` -> `[W, window, ...]`.

    Adds `sequence` (source sequence index) and `start` (first frame) per window,
    so every window can be traced back and no window crosses a split.
    """
    num_frames = next(iter(arrays.values())).shape[1]
    starts = window_starts(num_frames, window, stride)
    seq_of = np.repeat(sequences, len(starts))
    start_of = np.tile(starts, len(sequences))
    frames = start_of[:, None] + np.arange(window)  # (W, window)
    out = {key: a[seq_of[:, None], frames] for key, a in arrays.items()}
    out["sequence"] = seq_of.astype(np.int64)
    out["start"] = start_of.astype(np.int64)
    return out


def preprocess(config: Config) -> tuple[Path, dict]:
    """Phase 0 from config to files. Returns the output folder and its meta."""
    data = config.data
    folder = folders.check_output(runs.processed_dir(data.root, dataset_name(config)), runs.PROCESSED, "data.root")
    folders.claim(folder, "data.root")
    dataset = load_dataset(data, config.seed)
    n, t = dataset.X.shape[:2]
    if data.T_window > t:
        raise UserError(f"data.T_window = {data.T_window}: must be <= the {t} frames of each sequence")
    parts = split_sequences(n, data.splits, config.seed)

    x, static_names = add_static_features(dataset.X, data.static_features)
    if data.normalize:
        mean, std = channel_statistics(x[parts["train"]])
    else:
        mean, std = np.zeros(x.shape[-1], np.float32), np.ones(x.shape[-1], np.float32)
    x = (x - mean) / std
    arrays = {"X": x.astype(np.float32), "Y": dataset.Y}
    if dataset.P is not None:
        arrays["P"] = dataset.P

    payloads, shapes, sizes = {}, {}, {}
    for split in track(runs.SPLITS, "windows", "splits"):
        windows = cut_windows(arrays, parts[split], data.T_window, data.stride)
        payloads[split] = files.npz_bytes(windows)
        shapes[split] = {key: list(a.shape) for key, a in windows.items() if key in ("X", "Y", "P")}
        sizes[split] = {"sequences": int(len(parts[split])), "windows": int(len(windows["X"]))}
    hashes = {split: files.sha256_bytes(payload) for split, payload in payloads.items()}
    meta = {
        "name": dataset_name(config),
        "dataset": data.dataset,
        "task": dataset.task,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "channel_names": dataset.channel_names + static_names,
        "static_features": list(data.static_features),
        "spatial_invariant": dataset.spatial_invariant,
        "T_window": data.T_window,
        "stride": data.stride,
        "normalisation": {"applied": data.normalize, "mean": mean.tolist(), "std": std.tolist(),
                          "from": "train split"},
        "shapes": shapes,
        "splits": sizes,
        "sha256": hashes,
        "data_version": hashlib.sha256("".join(hashes[s] for s in runs.SPLITS).encode()).hexdigest(),
        "generator": dataset.params,
        "seed": config.seed,
        "baselines": dataset.baselines,
    }

    for split, payload in payloads.items():
        files.atomic_write_bytes(runs.split_path(folder, split), payload)
    files.atomic_write_json(runs.meta_path(folder), meta)  # last: it vouches for the splits
    return folder, meta
