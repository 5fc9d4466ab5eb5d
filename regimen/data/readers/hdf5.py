"""HDF5 archives (h5py): one dataset of inputs per file, optionally an event catalog.

The inputs' axes are `data.format`, any order of T, H, W, optional N (the
events of the file) and optional C (channels): SEVIR's `vil` is `NHWT`. The
labels (`data.labels`) and soft targets (`data.soft_targets`) are datasets of
the same file with the same axes, less C for class labels, less H and W too
for tagging; `next_frame` takes the inputs' next frame as the target. Without
a catalog every event of every file is a sequence; a catalog CSV
(`data.catalog`) lists the events instead: file, index along N and start time.
The frames' times, for `data.split_by: time`, are a dataset `data.times` of the
same file, (T) or (N, T), numbers or ISO 8601 text; failing that, every frame
of a catalog event takes its start time.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from regimen.core.config import NEXT_FRAME, DataConfig
from regimen.core.errors import UserError
from regimen.data.readers import Reader, Sequence, archive_files, archive_names, integer_labels, stored_targets
from regimen.data.splits import format_time, frame_times, parse_time
from regimen.data.values import as_float32

SUFFIXES = (".h5", ".hdf5", ".he5")


class HDF5Reader(Reader):
    def __init__(self, data: DataConfig):
        self.data, self.axes = data, data.format
        self._open: dict[Path, h5py.File] = {}
        if data.catalog.path:  # the catalog names the files, under data.path
            shapes = {}
            events = self._catalog(data, shapes)
        else:
            shapes = {path: self._input_shape(path)
                      for path in archive_files(data.path, SUFFIXES, "HDF5 files (.h5, .hdf5)")}
            events = [(path, index, None) for path, shape in shapes.items() for index in range(shape.get("N", 1))]
        grids = {}
        for path in dict.fromkeys(path for path, _, _ in events):
            shape = shapes[path]
            grids.setdefault((shape["H"], shape["W"], shape.get("C", 1)), path)
            self._check_targets(path, shape)
        if len(grids) > 1:
            (first, a), (second, b) = list(grids.items())[:2]
            raise UserError(f"{b}: dataset '{data.inputs}' has frames of H, W, C = {second}; expected {first} "
                            f"as in {a}")
        shift = data.target_shift if data.labels == NEXT_FRAME else 0
        self.events = [(path, index) for path, index, _ in events]
        sequences = [self._sequence(path, index, shapes[path], shapes[path]["T"] - shift, time)
                     for path, index, time in events]
        super().__init__(**archive_names(data, shapes[events[0][0]].get("C", 1), data.inputs), sequences=sequences,
                         params={"dataset": "hdf5", "path": data.path, "format": self.axes, "inputs": data.inputs,
                                 "labels": data.labels},
                         sources=sorted(set(path for path, _ in self.events)) + (
                             [Path(data.catalog.path)] if data.catalog.path else []))

    # ------------------------------------------------------------------ checks

    def _file(self, path: Path) -> h5py.File:
        if path not in self._open:
            try:
                self._open[path] = h5py.File(path, "r")
            except OSError as error:
                raise UserError(f"{path}: not a readable HDF5 file ({error})") from None
        return self._open[path]

    def _dataset(self, path: Path, name: str, role: str) -> h5py.Dataset:
        handle = self._file(path)
        found = handle.get(name)
        if not isinstance(found, h5py.Dataset):
            names = []
            handle.visititems(lambda key, item: names.append(key) if isinstance(item, h5py.Dataset) else None)
            raise UserError(f"{path}: no dataset '{name}' ({role}, data.{role}); found: {', '.join(names) or 'none'}")
        return found

    def _input_shape(self, path: Path) -> dict[str, int]:
        dataset = self._dataset(path, self.data.inputs, "inputs")
        if dataset.ndim != len(self.axes):
            raise UserError(f"{path}: dataset '{self.data.inputs}' has shape {dataset.shape}; data.format "
                            f"{self.axes} expects rank {len(self.axes)}")
        if not np.issubdtype(dataset.dtype, np.number):
            raise UserError(f"{path}: dataset '{self.data.inputs}' has dtype {dataset.dtype}; expected numbers")
        return dict(zip(self.axes, dataset.shape))

    def _target_axes(self, role: str) -> str:
        if role == "soft_targets":
            return self._target_axes("labels") + "K"
        if role == "mask" and self.data.task != "tagging":
            return self.axes.replace("C", "")
        if self.data.task == "tagging":
            return "".join(a for a in self.axes if a in "NT")
        if self.data.task == "segmentation":
            return self.axes.replace("C", "")
        return self.axes

    def _check_targets(self, path: Path, shape: dict[str, int]) -> None:
        for role, name in stored_targets(self.data):
            dataset = self._dataset(path, name, role)
            axes = self._target_axes(role)
            if role == "labels" and self.data.task == "regression" and dataset.ndim == len(axes) - 1:
                axes = axes.replace("C", "")  # a single-channel target without its C axis
            free = "CK" if self.data.task == "regression" and role == "labels" else "K"  # a target's own channels
            expected = tuple(-1 if a in free else shape[a] for a in axes)
            if dataset.ndim != len(axes) or any(e not in (-1, s) for e, s in zip(expected, dataset.shape)):
                shown = tuple(a if e == -1 else e for a, e in zip(axes, expected))
                raise UserError(f"{path}: dataset '{name}' ({role}) has shape {dataset.shape}; expected "
                                f"{shown} (axes {axes}, from '{self.data.inputs}' {tuple(shape.values())})")

    def _catalog(self, data: DataConfig, shapes: dict) -> list[tuple[Path, int, Optional[str]]]:
        """(file, index, time) of each catalog row, each checked against its file."""
        catalog, root = Path(data.catalog.path), Path(data.path)
        if not root.is_dir():
            raise UserError(f"data.path: {root} {'is not a folder' if root.exists() else 'not found'}; with "
                            "data.catalog, the folder that the catalog's file names start from")
        try:
            with open(catalog, newline="") as handle:
                rows = list(csv.DictReader(handle))
                columns = rows[0].keys() if rows else []
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise UserError(f"data.catalog.path: {catalog}: not a readable CSV file ({error})") from None
        if not rows:
            raise UserError(f"data.catalog.path: {catalog} lists no event; expected a header and one row per event")
        for key in ("file", "index", "time"):
            column = getattr(data.catalog, key)
            if column is not None and column not in columns:
                raise UserError(f"{catalog}: no column '{column}' (data.catalog.{key}); found: {', '.join(columns)}")
        events = []
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            where = f"{catalog} line {number}"
            path = root / row[data.catalog.file]
            if not path.is_file():
                raise UserError(f"{where}: file {path} not found")
            if path not in shapes:
                shapes[path] = self._input_shape(path)
            try:
                index = int(row[data.catalog.index])
            except ValueError:
                raise UserError(f"{where}: index {row[data.catalog.index]!r} is not an integer") from None
            count = shapes[path].get("N", 1)
            if not 0 <= index < count:
                raise UserError(f"{where}: index {index}, but {path} holds {count} event(s) along N of "
                                f"'{data.inputs}' (0 to {count - 1})")
            events.append((path, index, _time(row, data.catalog.time, where)))
        return events

    def _sequence(self, path: Path, index: int, shape: dict[str, int], frames: int, time: Optional[str]) -> Sequence:
        """One event, with its frames' times: from the dataset `data.times`, else its catalog time
        for every frame (the event is placed whole), else none."""
        name = f"{path}: '{self.data.inputs}' event {index}"
        if self.data.times is None:
            if time is None:
                return Sequence(name, frames)
            return Sequence(name, frames, time, np.full(frames, parse_time(time, "date", name)), "date")
        dataset = self._dataset(path, self.data.times, "times")
        axes = "NT" if "N" in shape else "T"
        expected = tuple(shape[a] for a in axes)
        if dataset.shape != expected:
            raise UserError(f"{path}: dataset '{self.data.times}' (times) has shape {dataset.shape}; expected "
                            f"{expected} (axes {axes} of '{self.data.inputs}')")
        values = dataset[index] if axes == "NT" else dataset[()]
        if values.dtype.kind in "SOU":  # ISO 8601 text
            try:
                values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], "datetime64[ms]")
            except ValueError:
                raise UserError(f"{path}: dataset '{self.data.times}' (times) holds text that is not ISO 8601 "
                                "dates and times") from None
        times, kind = frame_times(values, f"{path}: dataset '{self.data.times}' event {index}")
        return Sequence(name, frames, format_time(times[0], kind), times[:frames], kind)

    # ------------------------------------------------------------------ reading

    def read(self, index: int, start: int, stop: int) -> dict[str, np.ndarray]:
        path, event = self.events[index]
        next_frame = self.data.labels == NEXT_FRAME
        extra = self.data.target_shift if next_frame else 0
        x = as_float32(f"{path}", f"'{self.data.inputs}'",
                       self._frames(path, self.data.inputs, self.axes, event, start, stop + extra))
        chunk = {"X": x[:len(x) - extra], "Y": x[extra:].copy()} if next_frame else {"X": x}
        if self.data.mask:  # of the frames predicted: the next ones for next_frame
            mask = self._frames(path, self.data.mask, self._target_axes("mask"), event, start + extra, stop + extra)
            chunk["M"] = mask[..., 0] != 0
        if next_frame:
            return chunk
        labels = self._dataset(path, self.data.labels, "labels")
        axes = self._target_axes("labels")
        if self.data.task == "regression":
            axes = axes if labels.ndim == len(axes) else axes.replace("C", "")
            chunk["Y"] = as_float32(f"{path}", f"'{self.data.labels}'",
                                    self._frames(path, self.data.labels, axes, event, start, stop))
        else:
            y = self._frames(path, self.data.labels, axes, event, start, stop)[..., 0]
            chunk["Y"] = integer_labels(f"{path}: '{self.data.labels}'", y)
        if self.data.soft_targets:
            p = self._frames(path, self.data.soft_targets, self._target_axes("soft_targets"), event, start, stop)
            chunk["P"] = p.astype(np.float32)
        return chunk

    def _frames(self, path: Path, name: str, axes: str, event: int, start: int, stop: int) -> np.ndarray:
        """Frames `[start, stop)` of one event, as `[t, (H, W,) C or K]` (C 1 when the axes lack it)."""
        selection = tuple(event if a == "N" else slice(start, stop) if a == "T" else slice(None) for a in axes)
        block = self._dataset(path, name, "inputs")[selection]
        kept = [a for a in axes if a != "N"]
        order = [a for a in "THWCK" if a in kept]
        block = np.transpose(block, [kept.index(a) for a in order])
        return block if order[-1] in "CK" else block[..., None]


def _time(row: dict, column: Optional[str], where: str) -> Optional[str]:
    if column is None:
        return None
    try:
        return datetime.fromisoformat(row[column].strip()).isoformat()
    except ValueError:
        raise UserError(f"{where}: time {row[column]!r} is not an ISO 8601 date and time") from None
