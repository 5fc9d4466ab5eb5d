"""Scratch arrays on disk: slices of either axis read back what was written, as numpy would."""

from __future__ import annotations

import numpy as np

from regimen.core.disk_array import DiskArray


def test_rows_and_frames_round_trip_like_a_numpy_array(tmp_path):
    rng = np.random.default_rng(0)
    expected = np.zeros((4, 6, 3, 2), dtype=np.float32)
    array = DiskArray(tmp_path / "a", np.float32, expected.shape)
    rows = rng.normal(size=(2, 6, 3, 2))
    array.set_rows(1, rows)
    expected[1:3] = rows
    frames = rng.normal(size=(3, 3, 2))
    array.set_frames(3, 2, frames)
    expected[3, 2:5] = frames
    np.testing.assert_array_equal(array.rows(0, 4), expected)
    np.testing.assert_array_equal(array.frames(3, 1, 6), expected[3, 1:6])
    np.testing.assert_array_equal(array.frames(1, 4, 6), expected[1, 4:6])
    array.close()
    array.close()  # twice is harmless
