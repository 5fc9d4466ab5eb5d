"""Readers: a dataset as sequences of frames, read a chunk of frames at a time.

Phase 0 never holds a whole archive: it asks a reader for its sequences (name,
length, start time) and then for frames `[t0, t1)` of one sequence at a time.
Every reader checks on opening all that needs no pixel values (files, datasets
or variables, dims and shapes, catalog rows, label folders); the values
themselves (finite inputs, integer labels in range) are checked by
`check_chunk` as phase 0 reads them, before it has written anything.

`open_reader(data, seed)` picks the reader of `data.dataset`: the built-in
generators and the npz file are read into memory (`ArraysReader`), the
archives (`hdf5`, `xarray`, `frames`) lazily.
"""

from __future__ import annotations

import glob
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from regimen.core.config import NEXT_FRAME, DataConfig
from regimen.core.errors import UserError


@dataclass
class Sequence:
    """One sequence of frames: how messages name it, its length, its start time (ISO 8601) and,
    where the data says, the time of each frame (`regimen.data.splits.frame_times`: float64, `time_kind`
    "date" or "number")."""

    name: str
    frames: int
    time: Optional[str] = None
    times: Optional[np.ndarray] = None
    time_kind: Optional[str] = None


@dataclass
class Reader(ABC):
    """What phase 0 needs of a dataset; subclasses fill it in and implement `read`.

    Attributes:
        task, num_classes, class_names, channel_names: as in meta.json; `num_classes` None for a
            classification archive means "the largest training label + 1".
        sequences: every sequence, in the order their indices (`sequence` in the window index) follow.
        spatial_invariant: False where flips and rotations change the label.
        params: what meta.json records of the source.
        baselines: simple scores of the data (the built-in storms), for meta.json.
        sources: the files read, whose sizes and times tell whether phase 0 has work to do.
    """

    task: str
    num_classes: Optional[int]
    class_names: list[str]
    channel_names: list[str]
    sequences: list[Sequence]
    spatial_invariant: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    @abstractmethod
    def read(self, index: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Frames `[start, stop)` of sequence `index`: `X` float32 `[t, H, W, C]`, `Y` (int64
        `[t, H, W]` or `[t]`, float32 `[t, H, W, C']`), optional `P` float32 `[..., K]` and optional
        `M` bool `[t, H, W]` or `[t]`, True where observed (`data.mask`)."""


def open_reader(data: DataConfig, seed: int) -> Reader:
    """The reader of `data.dataset`, with every check that needs no pixel values done."""
    if data.dataset == "hdf5":
        from regimen.data.readers.hdf5 import HDF5Reader
        return HDF5Reader(data)
    if data.dataset == "xarray":
        from regimen.data.readers.xarray_archive import XarrayReader
        return XarrayReader(data)
    if data.dataset == "frames":
        from regimen.data.readers.frames import FramesReader
        return FramesReader(data)
    from regimen.data.readers.arrays import ArraysReader
    return ArraysReader(data, seed)


def archive_names(data: DataConfig, channels: int, channel: str) -> dict[str, Any]:
    """An archive's task, classes (`data.num_classes`, else counted by phase 0) and names: classes
    by number, channels `channel` or `channel_0`, `channel_1`, ..."""
    classes = None if data.task == "regression" else data.num_classes
    return {"task": data.task, "num_classes": classes,
            "class_names": [str(i) for i in range(classes)] if classes else [],
            "channel_names": [f"{channel}_{i}" if channels > 1 else channel for i in range(channels)]}


def archive_files(path: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files `data.path` names: a file, the files with `suffixes` in a folder, or a glob's
    matches; sorted, at least one."""
    if glob.has_magic(path):
        found = sorted(Path(p) for p in glob.glob(path))
        if not found:
            raise UserError(f"data.path: {path} matches no file; expected {what}")
        return found
    root = Path(path)
    if not root.exists():
        raise UserError(f"data.path: {path} not found")
    if root.is_dir() and root.suffix not in suffixes:
        found = sorted(p for p in root.iterdir() if p.suffix in suffixes)
        if not found:
            raise UserError(f"data.path: {path} holds no {' or '.join(suffixes)} file; expected {what}")
        return found
    return [root]


def stored_targets(data: DataConfig) -> list[tuple[str, str]]:
    """`(role, name)` of the arrays an archive stores beside its inputs: the labels (unless they are
    the next frames), the soft targets and the mask, when configured."""
    return [(role, name) for role, name in (("labels", data.labels), ("soft_targets", data.soft_targets),
                                            ("mask", data.mask))
            if name is not None and name != NEXT_FRAME]


def check_chunk(name: str, chunk: dict[str, np.ndarray], task: str, num_classes: Optional[int]) -> None:
    """The values of frames read from `name`: finite inputs (and regression targets), integer
    labels in `[0, num_classes)` (`>= 0` while the classes are still counted), soft targets that
    are distributions. A UserError naming the first bad value."""
    _require_finite(name, "inputs", chunk["X"])
    y = chunk["Y"]
    if task == "regression":
        _require_finite(name, "targets", y)
    else:
        limit = num_classes if num_classes is not None else np.iinfo(np.int64).max
        bad = (y < 0) | (y >= limit)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UserError(f"{name}: label {int(y[where])} at frame index {where}; expected labels in "
                            f"[0, {num_classes if num_classes is not None else 'K'}) (data.num_classes)")
    p = chunk.get("P")
    if p is not None:
        _require_finite(name, "soft targets", p)
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
            raise UserError(f"{name}: soft targets must be class distributions (non-negative, summing to 1)")


def integer_labels(name: str, y: np.ndarray) -> np.ndarray:
    """Labels as int64; a UserError for values that are not whole numbers."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise UserError(f"{name}: labels of dtype {y.dtype} hold non-integer values; expected integer class labels")


def _require_finite(name: str, what: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{name}: {what} hold {int(bad.sum())} NaN/Inf value(s), the first at frame index {where}; "
                        "data.missing: mask takes them for missing pixels")
