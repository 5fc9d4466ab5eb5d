"""Time-ordered splits: on overlapping events cut from one record, a random split by sequence puts
test frames into training, the split by time never does, and no window straddles a cut."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import ok
from regimen.core import runs
from regimen.core.config import DataConfig
from regimen.core.errors import UserError
from regimen.data.splits import by_time, format_time

RECORD, EVENT, STEP, EVENTS = 120, 24, 12, 9  # one record of 120 frames, events of 24 starting every 12
START = np.datetime64("2021-05-01T00:00")
MINUTES = np.timedelta64(5, "m")


def overlapping_events(folder: Path) -> Path:
    """An HDF5 file of 9 events of 24 frames cut from one 5-minute record every 12 frames (so each
    event shares 12 frames with the next, as archives of sliding samples do). Frame t of the record
    holds the value t everywhere; its time (dataset `time`, ISO text) is START + 5 min * t."""
    starts = np.arange(EVENTS) * STEP
    frame = starts[:, None] + np.arange(EVENT)[None, :]  # [N, T] record frame of each event frame
    x = np.broadcast_to(frame[:, :, None, None, None], (EVENTS, EVENT, 4, 4, 1)).astype(np.float32)
    y = (np.arange(16).reshape(4, 4)[None, None] + frame[:, :, None, None]) % 2
    times = (START + frame * MINUTES).astype("datetime64[s]").astype(str).astype("S")
    path = folder / "record.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["Y"], f["time"] = x, y, times
    return path


def processed(tmp: Path, name: str, **data) -> tuple[Path, dict]:
    raw = {"data": {"root": str(tmp / name), "dataset": "hdf5", "path": str(overlapping_events(tmp)),
                    "times": "time", "num_classes": 2, "normalize": False, "T_window": 4, "stride": 2,
                    "splits": [0.6, 0.2, 0.2], **data}}
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    ok("tools/preprocess.py", "--config", str(config))
    folder = next((tmp / name / "processed").iterdir())
    return folder, json.loads(runs.meta_path(folder).read_text())


def stored_frames(folder: Path, split: str) -> np.ndarray:
    """The record frame (the stored value) of every frame a split stores."""
    return np.load(runs.store_path(folder, split, "X"))[:, 0, 0, 0].astype(int)


def window_frames(folder: Path, split: str) -> np.ndarray:
    """`[W, T_window]` the record frame of every frame of every window."""
    index = np.load(runs.store_path(folder, split, "windows"))
    return np.stack([stored_frames(folder, split)[row:row + 4] for row in index[:, 2]])


def test_a_random_split_leaks_test_frames_into_training_and_the_time_split_does_not(tmp_path):
    folder, meta = processed(tmp_path, "random", split_by="sequence")
    train, test = window_frames(folder, "train"), window_frames(folder, "test")
    assert set(test.ravel()) & set(train.ravel())  # a test window's frames are training frames too
    assert meta["time_ranges"]["test"]["first"] < meta["time_ranges"]["train"]["last"]

    folder, meta = processed(tmp_path, "time", split_by="time")
    frames = {split: window_frames(folder, split) for split in runs.SPLITS}
    assert frames["train"].max() < frames["val"].min() and frames["val"].max() < frames["test"].min()
    assert all((np.diff(f, axis=1) == 1).all() for f in frames.values())  # no window straddles a cut
    # cuts at the frames that give 60/20/20 of the 216 event frames in time order
    every = np.sort((np.arange(EVENTS)[:, None] * STEP + np.arange(EVENT)).ravel())
    cuts = [str(START + int(every[k]) * MINUTES) for k in (130, 173)]
    assert meta["time_ranges"]["cuts"] == [str(np.datetime64(c, "s")) for c in cuts]
    assert meta["time_ranges"]["train"]["last"] < meta["time_ranges"]["val"]["first"]
    assert meta["split_by"] == "time"
    # every frame before the first cut is stored for training, once per event that holds it
    assert sorted(set(stored_frames(folder, "train"))) == list(range(int(every[130])))


def test_split_times_and_a_gap_leave_the_frames_before_each_cut_out(tmp_path):
    folder, meta = processed(tmp_path, "gap", split_by="time", split_times=["2021-05-01T05:00", "2021-05-01T07:00"],
                             split_gap=3)
    frames = {split: set(stored_frames(folder, split)) for split in runs.SPLITS}
    # 05:00 is record frame 60, 07:00 frame 84: frames 57-59 and 81-83 belong to neither side
    assert max(frames["train"]) == 56 and min(frames["val"]) == 60
    assert max(frames["val"]) == 80 and min(frames["test"]) == 84
    assert meta["time_ranges"]["cuts"] == ["2021-05-01T05:00:00", "2021-05-01T07:00:00"]


def test_by_time_places_each_frame_by_its_time_and_drops_pieces_shorter_than_a_window():
    times = [np.arange(0.0, 10.0), np.arange(5.0, 12.0)]
    data = DataConfig(split_by="time", split_times=["6", "9"], T_window=2)
    pieces, cuts = by_time(times, "number", data)
    assert cuts == [6.0, 9.0]
    assert [(p.sequence, p.start, p.stop) for p in pieces["train"]] == [(0, 0, 6)]  # sequence 1: 1 frame, dropped
    assert [(p.sequence, p.start, p.stop) for p in pieces["val"]] == [(0, 6, 9), (1, 1, 4)]
    assert [(p.sequence, p.start, p.stop) for p in pieces["test"]] == [(1, 4, 7)]  # sequence 0: 1 frame, dropped
    with pytest.raises(UserError, match="split 'test' gets no window of 2 frames between 11.0 and None"):
        by_time(times, "number", DataConfig(split_by="time", split_times=["6", "11"], T_window=2))
    assert format_time(1.5e9, "date") == "2017-07-14T02:40:00"
