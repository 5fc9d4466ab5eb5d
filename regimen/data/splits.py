"""Which frames of which sequence each split holds: by whole sequence, or in time order.

A split is a list of `Piece`s, frames `[start, stop)` of one sequence. Split by
sequence (`data.split_by: sequence`), every piece is a whole sequence dealt at
random. Split by time, every frame is placed by its time: before the first cut
train, from the first to the second cut val, from the second on test, so every
validation frame is later than every training frame and every test frame
later than every validation frame. A long sequence is cut into a piece per
split, and windows are drawn within a piece, so none straddles a cut. The
cuts are `data.split_times` or the times that give `data.splits` of the
frames in order; `data.split_gap` leaves the last distinct times before each
cut to neither side.

Times are float64 seconds since 1970 for dates (`kind` "date") or the
coordinate's own numbers (`kind` "number").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from regimen.core.config import DataConfig
from regimen.core.errors import UserError

SPLITS = ("train", "val", "test")  # runs.SPLITS, in time order


@dataclass(frozen=True)
class Piece:
    """Frames `[start, stop)` of sequence `sequence`."""

    sequence: int
    start: int
    stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


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
    return {split: np.sort(order[bounds[i]:bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def by_sequence(lengths: list[int], fractions: list[float], seed: int) -> dict[str, list[Piece]]:
    """Whole sequences dealt at random to the splits."""
    parts = split_sequences(len(lengths), fractions, seed)
    return {split: [Piece(int(i), 0, lengths[i]) for i in parts[split]] for split in SPLITS}


def by_time(times: list[np.ndarray], kind: str, data: DataConfig) -> tuple[dict[str, list[Piece]], list[float]]:
    """Each sequence's frames placed by their times (`times[i]`: sequence i's, not decreasing).
    Returns the pieces (at least a window, `data.window` frames, each) and the two cuts.

    Raises:
        UserError: for a split time that is not a time of the data's kind, cuts out of order, or a
            split left without a window.
    """
    every = np.sort(np.concatenate(times))
    if data.split_times:
        cuts = [parse_time(text, kind, f"data.split_times[{i}]") for i, text in enumerate(data.split_times)]
        if not cuts[0] < cuts[1]:
            raise UserError(f"data.split_times = {data.split_times}: expected two increasing times, the start of "
                            "val and the start of test")
    else:
        n_val, n_test = (int(round(f * len(every))) for f in data.splits[1:])
        n_train = len(every) - n_val - n_test
        cuts = [float(every[min(n_train, len(every) - 1)]), float(every[min(n_train + n_val, len(every) - 1)])]
    distinct = np.unique(every)
    gap_starts = [float(distinct[max(0, np.searchsorted(distinct, cut) - data.split_gap)]) if data.split_gap else cut
                  for cut in cuts]
    bounds = {"train": (-np.inf, gap_starts[0]), "val": (cuts[0], gap_starts[1]), "test": (cuts[1], np.inf)}
    pieces: dict[str, list[Piece]] = {split: [] for split in SPLITS}
    for sequence, frame_times in enumerate(times):
        for split, (low, high) in bounds.items():
            start, stop = np.searchsorted(frame_times, [low, high])
            if stop - start >= data.window:
                pieces[split].append(Piece(sequence, int(start), int(stop)))
    for split in SPLITS:
        if not pieces[split]:
            low, high = bounds[split]
            raise UserError(f"data.split_by = time, cuts at {format_time(cuts[0], kind)} and "
                            f"{format_time(cuts[1], kind)} (data.split_times = {data.split_times}, data.split_gap = "
                            f"{data.split_gap}): split '{split}' gets no window of {data.window} frames{_forecast(data)} between "
                            f"{format_time(low, kind)} and {format_time(high, kind)}; the data's times run from "
                            f"{format_time(every[0], kind)} to {format_time(every[-1], kind)}")
    return pieces, cuts


def _forecast(data: DataConfig) -> str:
    return f" (data.forecast: {data.forecast.input_frames} in, {data.forecast.output_frames} out)" \
        if data.forecast else ""


def frame_times(values: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """A time coordinate as (float64 times, kind), checked to be dates or numbers that never decrease."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        seconds, kind = values.astype("datetime64[ms]").astype(np.int64) / 1000.0, "date"
    elif np.issubdtype(values.dtype, np.number):
        seconds, kind = values.astype(np.float64), "number"
    else:
        raise UserError(f"{where}: times of dtype {values.dtype}; expected dates or numbers")
    if not np.isfinite(seconds).all():
        raise UserError(f"{where}: the times hold NaT/NaN values")
    steps = np.diff(seconds)
    if (steps < 0).any():
        at = int(np.argmax(steps < 0))
        raise UserError(f"{where}: time {format_time(seconds[at], kind)} is followed by "
                        f"{format_time(seconds[at + 1], kind)} (index {at + 1}); expected times that never decrease")
    return seconds, kind


def parse_time(text: str, kind: str, key: str) -> float:
    """A configured time as the data's times: an ISO 8601 date for dates, a number for numbers."""
    try:
        if kind == "date":
            return np.datetime64(text, "ms").astype(np.int64) / 1000.0
        return float(text)
    except ValueError:
        expected = "an ISO 8601 date and time, e.g. 2019-06-01 or 2019-06-01T12:00" if kind == "date" else \
            "a number, as the data's time coordinate holds numbers"
        raise UserError(f"{key} = {text!r}: not a time; expected {expected}") from None


def format_time(value: float, kind: str) -> Optional[str]:
    """A time as meta.json and messages show it (None for an open end)."""
    if not np.isfinite(value):
        return None
    if kind == "date":
        return str(np.datetime64(int(round(value * 1000)), "ms").astype("datetime64[s]"))
    return repr(float(value))
