"""NetCDF and Zarr archives read through xarray (an optional extra: requirements-xarray.txt).

`data.path` names a NetCDF file, a Zarr store (a `.zarr` folder), a folder of
them or a glob. `data.inputs` is the variable, `data.dims` says which of its
dims are time, y, x and (optionally) channel and sequence: without a sequence
dim each file is one (long) sequence. The labels are a variable with the same
dims (less channel for classes, less y and x for tagging) or `next_frame`. A
time coordinate must increase; it gives each frame's time (`data.split_by: time`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from regimen.core.config import NEXT_FRAME, DataConfig
from regimen.core.errors import UserError
from regimen.data.readers import Reader, Sequence, archive_files, archive_names, integer_labels, stored_targets
from regimen.data.splits import format_time, frame_times
from regimen.data.values import as_float32

SUFFIXES = (".nc", ".nc4", ".cdf", ".zarr")


def _xarray():
    try:
        import xarray
    except ImportError:
        raise UserError("data.dataset: xarray needs the optional extra: pip install -r requirements-xarray.txt") \
            from None
    return xarray


class XarrayReader(Reader):
    def __init__(self, data: DataConfig):
        self.data, self.dims = data, data.dims
        self._open: dict[Path, object] = {}
        self.events: list[tuple[Path, Optional[int]]] = []
        sequences, grid = [], None
        shift = data.target_shift if data.labels == NEXT_FRAME else 0
        for path in archive_files(data.path, SUFFIXES, "NetCDF files or Zarr stores"):
            variable = self._variable(path, data.inputs, "inputs")
            sizes = self._check_dims(path, data.inputs, variable, self._input_dims())
            frame = (sizes[self.dims.y], sizes[self.dims.x], sizes.get(self.dims.channel, 1))
            if grid is not None and frame != grid[0]:
                raise UserError(f"{path}: variable '{data.inputs}' has y, x, channel sizes {frame}; expected "
                                f"{grid[0]} as in {grid[1]}")
            grid = grid or (frame, path)
            self._check_targets(path, sizes)
            times, kind = self._times(path) or (None, None)
            count = sizes.get(self.dims.sequence, 1) if self.dims.sequence else 1
            for index in range(count):
                self.events.append((path, index if self.dims.sequence else None))
                name = f"{path}: '{data.inputs}'" + (f" {self.dims.sequence} {index}" if self.dims.sequence else "")
                frames = sizes[self.dims.time] - shift
                sequences.append(Sequence(name, frames, None if times is None else format_time(times[0], kind),
                                          None if times is None else times[:frames], kind))
        super().__init__(**archive_names(data, grid[0][2], data.inputs), sequences=sequences,
                         params={"dataset": "xarray", "path": data.path, "inputs": data.inputs, "labels": data.labels},
                         sources=sorted(set(path for path, _ in self.events)))

    # ------------------------------------------------------------------ checks

    def _dataset(self, path: Path):
        if path not in self._open:
            xarray = _xarray()
            zarr = path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists()
            try:
                self._open[path] = xarray.open_dataset(path, engine="zarr" if zarr else None, chunks=None)
            except Exception as error:  # the backends raise many kinds for an unreadable file
                first_line = (str(error).splitlines() or [""])[0]
                raise UserError(f"{path}: not a readable {'Zarr store' if zarr else 'NetCDF file'} "
                                f"({type(error).__name__}: {first_line})") from None
        return self._open[path]

    def _variable(self, path: Path, name: str, role: str):
        dataset = self._dataset(path)
        if name not in dataset.data_vars:
            raise UserError(f"{path}: no variable '{name}' ({role}, data.{role}); found: "
                            f"{', '.join(map(str, dataset.data_vars)) or 'none'}")
        return dataset[name]

    def _input_dims(self) -> list[str]:
        d = self.dims
        return [name for name in (d.sequence, d.time, d.y, d.x, d.channel) if name is not None]

    def _check_dims(self, path: Path, name: str, variable, expected: list[str]) -> dict[str, int]:
        """The variable's sizes by dim, when its dims are exactly `expected` (in any order)."""
        if sorted(map(str, variable.dims)) != sorted(expected):
            raise UserError(f"{path}: variable '{name}' has dims {tuple(map(str, variable.dims))}; expected "
                            f"{tuple(expected)} in any order (data.dims names time, y, x, channel, sequence)")
        return {str(dim): int(size) for dim, size in variable.sizes.items()}

    def _target_dims(self, role: str = "labels") -> list[str]:
        """The dims of the labels (soft targets add one, the classes) or of the mask."""
        d = self.dims
        if role == "mask" and self.data.task != "tagging":
            return [name for name in self._input_dims() if name != d.channel]
        if self.data.task == "regression":
            return self._input_dims()
        kept = (d.sequence, d.time) if self.data.task == "tagging" else (d.sequence, d.time, d.y, d.x)
        return [name for name in kept if name is not None]

    def _check_targets(self, path: Path, sizes: dict[str, int]) -> None:
        for role, name in stored_targets(self.data):
            variable = self._variable(path, name, role)
            extra = [str(dim) for dim in variable.dims if dim not in self._target_dims(role)]
            if role == "soft_targets" and len(extra) == 1:  # the class dim, whatever its name
                dims = [*self._target_dims(), extra[0]]
            else:
                dims = self._target_dims(role)
                if (self.data.task == "regression" and role == "labels" and self.dims.channel is None
                        and len(extra) == 1):
                    dims = [*dims, extra[0]]  # a target with channels for inputs without
            found = self._check_dims(path, name, variable, dims)
            for dim in dims:
                if dim in sizes and dim != self.dims.channel and found[dim] != sizes[dim]:
                    raise UserError(f"{path}: variable '{name}' has {dim} size {found[dim]}; expected "
                                    f"{sizes[dim]} as '{self.data.inputs}'")

    def _times(self, path: Path) -> Optional[tuple[np.ndarray, str]]:
        """The file's times (`regimen.data.splits.frame_times`), after checking that they increase."""
        dataset = self._dataset(path)
        if self.dims.time not in dataset.coords:
            return None
        values = dataset[self.dims.time].values
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number)
                                    or np.issubdtype(values.dtype, np.datetime64)):
            raise UserError(f"{path}: coordinate '{self.dims.time}' has dtype {values.dtype}; expected times")
        steps = np.diff(values)
        if (steps <= steps.dtype.type(0)).any():
            where = int(np.argmax(steps <= steps.dtype.type(0)))
            raise UserError(f"{path}: time coordinate '{self.dims.time}' does not increase: {values[where]} is "
                            f"followed by {values[where + 1]} (index {where + 1}); expected increasing times")
        return frame_times(values, f"{path}: coordinate '{self.dims.time}'")

    # ------------------------------------------------------------------ reading

    def read(self, index: int, start: int, stop: int) -> dict[str, np.ndarray]:
        path, event = self.events[index]
        next_frame = self.data.labels == NEXT_FRAME
        extra = self.data.target_shift if next_frame else 0
        x = as_float32(f"{path}", f"'{self.data.inputs}'",
                       self._frames(path, self.data.inputs, event, start, stop + extra))
        chunk = {"X": x[:len(x) - extra], "Y": x[extra:].copy()} if next_frame else {"X": x}
        if self.data.mask:  # of the frames predicted: the next ones for next_frame
            chunk["M"] = self._frames(path, self.data.mask, event, start + extra, stop + extra)[..., 0] != 0
        if next_frame:
            return chunk
        y = self._frames(path, self.data.labels, event, start, stop)
        chunk["Y"] = as_float32(f"{path}", f"'{self.data.labels}'", y) if self.data.task == "regression" else \
            integer_labels(f"{path}: '{self.data.labels}'", y[..., 0])
        if self.data.soft_targets:
            chunk["P"] = self._frames(path, self.data.soft_targets, event, start, stop).astype(np.float32)
        return chunk

    def _frames(self, path: Path, name: str, event: Optional[int], start: int, stop: int) -> np.ndarray:
        """Frames `[start, stop)` of one sequence as `[t, (y, x,) last]` (last: channel or class; 1 if none)."""
        variable = self._variable(path, name, name)
        selection = {self.dims.time: slice(start, stop)}
        if event is not None:
            selection[self.dims.sequence] = event
        block = variable.isel(selection)
        order = [d for d in (self.dims.time, self.dims.y, self.dims.x) if d in block.dims]
        last = [str(d) for d in block.dims if d not in order]
        values = block.transpose(*order, *last).values
        return values if last else values[..., None]
