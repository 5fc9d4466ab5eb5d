"""What phase 0 records of forecast windows (`data.forecast`): a window of T_in + T_out frames
yields its inputs from the first T_in and its targets from the last T_out (`regimen.data.windows`),
and the time between frames gives lead times in minutes."""

from __future__ import annotations

from typing import Optional

import numpy as np

from regimen.core.config import DataConfig
from regimen.data.readers import Reader


def window_frames(data: DataConfig, array: str) -> int:
    """The frames of one array that a window yields: a forecast's inputs `X` are its first T_in,
    its targets (`Y`, `P`, `M`) its last T_out (`regimen.data.windows`)."""
    if not data.forecast:
        return data.T_window
    return data.forecast.input_frames if array == "X" else data.forecast.output_frames


def forecast_meta(data: DataConfig, reader: Reader) -> Optional[dict]:
    """What meta.json records of a forecast: T_in, T_out and the time between frames (the median
    step of every sequence's frame times: seconds for dates, the coordinate's units for numbers;
    None without times), from which evaluate.py gives lead times in minutes."""
    if not data.forecast:
        return None
    steps = [np.diff(s.times) for s in reader.sequences if s.times is not None and len(s.times) > 1]
    kinds = {s.time_kind for s in reader.sequences if s.times is not None}
    step = float(np.median(np.concatenate(steps))) if steps and len(kinds) == 1 else None
    return {"input_frames": data.forecast.input_frames, "output_frames": data.forecast.output_frames,
            "frame_step": step, "frame_step_unit": ("seconds" if kinds == {"date"} else "time coordinate")
            if step is not None else None}
