"""Phase 0: splits by sequence, training-only statistics, windows, static features, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regimen import files, folders, processed, runs
from regimen.errors import UserError
from regimen.config_file import load_config
from regimen.data import (add_static_features, channel_statistics, cut_windows, preprocess,
                          split_sequences, window_starts)


def test_windows_equal_hand_computed_slices():
    x = np.arange(2 * 7 * 1 * 1 * 1).reshape(2, 7, 1, 1, 1)
    y = np.arange(2 * 7).reshape(2, 7) + 100
    assert window_starts(7, 3, 2).tolist() == [0, 2, 4]
    out = cut_windows({"X": x, "Y": y}, np.array([1]), window=3, stride=2)
    assert out["X"][:, :, 0, 0, 0].tolist() == [[7, 8, 9], [9, 10, 11], [11, 12, 13]]
    assert out["Y"].tolist() == [[107, 108, 109], [109, 110, 111], [111, 112, 113]]
    assert out["sequence"].tolist() == [1, 1, 1] and out["start"].tolist() == [0, 2, 4]
    # a window that would run past the end is not cut
    assert window_starts(7, 4, 4).tolist() == [0]
    assert window_starts(4, 4, 1).tolist() == [0]


def test_splits_are_disjoint_cover_everything_and_are_seeded():
    parts = split_sequences(20, [0.6, 0.2, 0.2], seed=3)
    ids = np.concatenate(list(parts.values()))
    assert sorted(ids.tolist()) == list(range(20))
    assert [len(parts[s]) for s in runs.SPLITS] == [12, 4, 4]
    again = split_sequences(20, [0.6, 0.2, 0.2], seed=3)
    assert all((parts[s] == again[s]).all() for s in runs.SPLITS)
    other = split_sequences(20, [0.6, 0.2, 0.2], seed=4)
    assert any((parts[s] != other[s]).any() for s in runs.SPLITS)


def test_an_empty_split_is_refused():
    with pytest.raises(UserError, match="split 'val' gets 0 of 3 sequences"):
        split_sequences(3, [0.8, 0.1, 0.1], seed=0)


def test_statistics_are_per_channel():
    x = np.zeros((2, 3, 4, 4, 2), dtype=np.float32)
    x[..., 1] = 5.0
    x[0, ..., 0] = 2.0
    mean, std = channel_statistics(x)
    np.testing.assert_allclose(mean, [1.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1e-6])


def test_static_features():
    x = np.zeros((1, 3, 5, 5, 1), dtype=np.float32)
    x[0, 1, :, 2:] = 1.0  # a vertical edge appearing at t=1
    out, names = add_static_features(x, ["edges", "motion", "mask"])
    assert names == ["edges_0", "motion_0", "mask"] and out.shape == (1, 3, 5, 5, 4)
    edges, motion, mask = out[..., 1], out[..., 2], out[..., 3]
    assert edges[0, 0].max() == 0 and edges[0, 1, :, 1:3].min() > 0 and edges[0, 1, :, 4].max() == 0
    assert motion[0, 0].max() == 0 and motion[0, 1, 0, 2] == 1 and motion[0, 2, 0, 2] == -1
    assert mask[0, 0, 2, 2] == 1 and mask[0, 0, 0, 0] == 0


def test_preprocess_writes_reproducible_files_with_training_statistics(write_config):
    config = load_config(write_config())
    folder, meta = preprocess(config)
    first = {name: (folder / name).read_bytes() for name in folders.contents(folder)}
    assert set(first) == {"train.npz", "val.npz", "test.npz", "meta.json"}
    assert json.loads(first["meta.json"]) == meta
    for split in runs.SPLITS:
        assert files.sha256_file(runs.split_path(folder, split)) == meta["sha256"][split]

    preprocess(config)
    assert {name: (folder / name).read_bytes() for name in folders.contents(folder)} == first  # byte-identical

    splits = {s: processed.load_split(folder, s, meta) for s in runs.SPLITS}
    sequences = [set(splits[s]["sequence"].tolist()) for s in runs.SPLITS]
    assert not (sequences[0] & sequences[1] or sequences[0] & sequences[2] or sequences[1] & sequences[2])
    assert [meta["splits"][s]["sequences"] for s in runs.SPLITS] == [len(s) for s in sequences]

    # Standardised with the training split's statistics: train is exactly (0, 1) once
    # windows are undone (stride 3 < window 4 repeats frames, so use first-window frames).
    from regimen.datasets import load_dataset
    raw = load_dataset(config.data, config.seed).X
    train_ids = sorted(sequences[0])
    mean, std = meta["normalisation"]["mean"][0], meta["normalisation"]["std"][0]
    assert mean == pytest.approx(float(raw[train_ids].mean()), rel=1e-5)
    assert std == pytest.approx(float(raw[train_ids].std()), rel=1e-5)
    window = splits["val"]
    seq, start = window["sequence"][0], window["start"][0]
    np.testing.assert_allclose(window["X"][0], (raw[seq, start:start + 4] - mean) / std, rtol=1e-5, atol=1e-6)
    assert meta["baselines"]["smoothing_gap_points"] > 0
    assert meta["data_version"] and meta["seed"] == config.seed


def test_windows_keep_labels_and_soft_targets_aligned(write_config):
    config = load_config(write_config())
    folder, meta = preprocess(config)
    from regimen.datasets import load_dataset
    raw = load_dataset(config.data, config.seed)
    split = processed.load_split(folder, "train", meta)
    for i in range(len(split["X"])):
        seq, start = split["sequence"][i], split["start"][i]
        np.testing.assert_array_equal(split["Y"][i], raw.Y[seq, start:start + 4])
        np.testing.assert_array_equal(split["P"][i], raw.P[seq, start:start + 4])
