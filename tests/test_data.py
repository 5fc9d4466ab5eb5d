"""Phase 0: splits by sequence, training-only statistics, windows, static features, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regimen.core import files, folders, runs
from regimen.core.errors import UserError
from regimen.core.config_file import load_config
from regimen.data.preprocess import (ChannelStatistics, add_static_features, preprocess, window_index,
                                     window_starts)
from regimen.data.splits import Piece, split_sequences
from regimen.data.windows import WindowDataset


def test_window_index_equals_hand_computed_rows():
    assert window_starts(7, 3, 2).tolist() == [0, 2, 4]
    # sequences 2 (5 frames) then 0 (7 frames) stored end to end: rows 0-4, then 5-11
    index = window_index([Piece(2, 0, 5), Piece(0, 0, 7)], window=3, stride=2)
    assert index.tolist() == [[2, 0, 0], [2, 2, 2], [0, 0, 5], [0, 2, 7], [0, 4, 9]]
    # a piece that starts later in its sequence numbers its windows' first frames in the sequence
    assert window_index([Piece(1, 10, 15)], window=3, stride=2).tolist() == [[1, 10, 0], [1, 12, 2]]
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
    statistics = ChannelStatistics()
    for sequence in x:
        statistics.add(sequence)
    mean, std = statistics.result()
    np.testing.assert_allclose(mean, [1.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1e-6])


def test_streamed_statistics_equal_numpy_over_the_whole_array():
    x = (np.random.default_rng(0).normal(3.0, 2.0, size=(37, 6, 6, 3)) ** 3).astype(np.float32)
    statistics = ChannelStatistics()
    for start in range(0, len(x), 5):  # uneven chunks, the last one shorter
        statistics.add(x[start:start + 5])
    np.testing.assert_allclose(statistics.mean, x.mean(axis=(0, 1, 2), dtype=np.float64), rtol=1e-13)
    np.testing.assert_allclose(np.sqrt(statistics.m2 / statistics.count), x.std(axis=(0, 1, 2), dtype=np.float64),
                               rtol=1e-13)


def test_static_features():
    x = np.zeros((3, 5, 5, 1), dtype=np.float32)
    x[1, :, 2:] = 1.0  # a vertical edge appearing at t=1
    out, names = add_static_features(x, ["edges", "motion", "mask"])
    assert names == ["edges_0", "motion_0", "mask"] and out.shape == (3, 5, 5, 4)
    edges, motion, mask = out[..., 1], out[..., 2], out[..., 3]
    assert edges[0].max() == 0 and edges[1, :, 1:3].min() > 0 and edges[1, :, 4].max() == 0
    assert motion[0].max() == 0 and motion[1, 0, 2] == 1 and motion[2, 0, 2] == -1
    assert mask[0, 2, 2] == 1 and mask[0, 0, 0] == 0
    # in chunks, motion takes the frame before the chunk: the same channels as the whole sequence
    chunked = np.concatenate([add_static_features(x[:2], ["motion"])[0],
                              add_static_features(x[2:], ["motion"], previous=x[1])[0]])
    np.testing.assert_array_equal(chunked, add_static_features(x, ["motion"])[0])


def test_preprocess_writes_reproducible_files_with_training_statistics(write_config):
    config = load_config(write_config())
    folder, meta = preprocess(config)
    first = {name: (folder / name).read_bytes() for name in folders.contents(folder)}
    assert set(first) == {"meta.json", *(f"{s}.{a}.npy" for s in runs.SPLITS for a in ("X", "Y", "P", "windows"))}
    assert json.loads(first["meta.json"]) == meta
    for split in runs.SPLITS:
        for array, entry in meta["files"][split].items():
            assert files.sha256_file(runs.store_path(folder, split, array)) == entry["sha256"]

    # unchanged inputs: nothing is written again
    times = {name: (folder / name).stat().st_mtime_ns for name in first}
    assert preprocess(config)[1] == meta
    assert {name: (folder / name).stat().st_mtime_ns for name in first} == times
    # made again (another seed, then this one): byte-identical
    preprocess(load_config(write_config(), ["seed=7"]))
    preprocess(config)
    assert {name: (folder / name).read_bytes() for name in folders.contents(folder)} == first

    windows = {s: WindowDataset(folder, s, meta) for s in runs.SPLITS}
    sequences = [set(windows[s].sequence.tolist()) for s in runs.SPLITS]
    assert not (sequences[0] & sequences[1] or sequences[0] & sequences[2] or sequences[1] & sequences[2])
    assert [meta["splits"][s]["sequences"] for s in runs.SPLITS] == [len(s) for s in sequences]

    # Standardised with the training split's statistics: train is exactly (0, 1) once
    # windows are undone (stride 3 < window 4 repeats frames, so use first-window frames).
    from regimen.data.datasets import load_dataset
    raw = load_dataset(config.data, config.seed).X
    train_ids = sorted(sequences[0])
    mean, std = meta["normalisation"]["mean"][0], meta["normalisation"]["std"][0]
    assert mean == pytest.approx(float(raw[train_ids].mean()), rel=1e-5)
    assert std == pytest.approx(float(raw[train_ids].std()), rel=1e-5)
    window = windows["val"]
    seq, start = window.sequence[0], window.start[0]
    np.testing.assert_allclose(window[0]["x"][0], (raw[seq, start:start + 4] - mean) / std, rtol=1e-5, atol=1e-6)
    assert meta["baselines"]["smoothing_gap_points"] > 0
    assert meta["data_version"] and meta["seed"] == config.seed


def test_windows_keep_labels_and_soft_targets_aligned(write_config):
    config = load_config(write_config())
    folder, meta = preprocess(config)
    from regimen.data.datasets import load_dataset
    raw = load_dataset(config.data, config.seed)
    split = WindowDataset(folder, "train", meta)
    for i in range(len(split)):
        seq, start = split.sequence[i], split.start[i]
        window = split[i]
        np.testing.assert_array_equal(window["y"][0], raw.Y[seq, start:start + 4])
        np.testing.assert_array_equal(window["p"][0], raw.P[seq, start:start + 4])


def test_an_unreadable_archive_is_refused_before_the_processed_folder_is_claimed(write_config, tmp_path, monkeypatch):
    """Claiming creates the folder and its lock file: a refusal must not even do that for a moment,
    since other runs read data.root meanwhile."""
    (tmp_path / "blocker.txt").write_text("not an archive")
    config = load_config(write_config({"data": {"dataset": "npz", "path": str(tmp_path / "blocker.txt")}}))
    claimed = []
    monkeypatch.setattr(folders, "claim", lambda folder, flag: claimed.append(folder))
    with pytest.raises(UserError, match="not a readable .npz file"):
        preprocess(config)
    assert claimed == []
