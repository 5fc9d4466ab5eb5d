"""The processed data on disk: per split, its frames end to end in `.npy` files, and a window index.

A split is four arrays in `data/processed/<name>/` (names from `regimen.core.runs`):

- `<split>.X.npy` float32 `[F, H, W, C]`: the normalised frames of the split's
  sequences, one sequence after the other (F frames in all);
- `<split>.Y.npy` the labels of those frames, `<split>.P.npy` the soft targets (optional);
- `<split>.windows.npy` int64 `[W, 3]`: per window its sequence (index in the
  source), first frame within the sequence and first row in `X`.

A window is `T_window` consecutive rows, so it is read with one `pread` per
array: no split is ever loaded whole, and the frames a window shares with its
neighbours are stored once. Files are written sequentially with their sha256
computed on the way, into temporary names that `commit` renames.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from regimen.core import runs
from regimen.core.errors import UserError
from regimen.core.files import FILE_MODE, sha256_file
from regimen.core.folders import TEMPORARY_MARK

STORE_VERSION = 1  # of this layout, in meta.json: data of another layout is made again, never misread
# Files up to this size (a split's, or one array's) are checked against their sha256 whenever they are
# opened; beyond it only their size: re-hashing a large archive at every phase would cost more than the phase.
VERIFY_BYTES = 1 << 30


class ArrayWriter:
    """One `.npy` file written front to back: its header, then rows as they come."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.shape, self.dtype = Path(path), shape, np.dtype(dtype)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                             suffix=f".{TEMPORARY_MARK}")
        self.temporary = Path(temporary)
        self.out = os.fdopen(handle, "wb")
        os.fchmod(self.out.fileno(), FILE_MODE)
        self.digest, self.rows = hashlib.sha256(), 0
        self._write(_header(self.dtype, shape))

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows {rows.shape} do not fit {self.shape} after {self.rows} rows")
        self._write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def _write(self, payload: bytes) -> None:
        self.out.write(payload)
        self.digest.update(payload)

    def close(self) -> dict:
        """Flush to disk; returns the file's sha256 and size (it keeps its temporary name)."""
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} of {self.shape[0]} rows written")
        self.out.flush()
        os.fsync(self.out.fileno())
        size = self.out.tell()
        self.out.close()
        return {"sha256": self.digest.hexdigest(), "bytes": size}

    def commit(self) -> None:
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        if not self.out.closed:
            self.out.close()
        self.temporary.unlink(missing_ok=True)


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


class ArrayFile:
    """Rows of a C-ordered `.npy` file read with `pread`, opened on first use (so that a
    DataLoader worker opens its own), or the whole array when `in_memory`."""

    def __init__(self, path: Path, in_memory: bool = False):
        self.path, self.in_memory = Path(path), in_memory
        self._fd: Optional[int] = None
        self._array: Optional[np.ndarray] = None
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran:
            raise UserError(f"{self.path}: a Fortran-ordered array; tools/preprocess.py writes it again")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows `[start, start + count)`, a new array."""
        if self.in_memory:
            if self._array is None:
                self._array = np.load(self.path, allow_pickle=False)
            return self._array[start:start + count].copy()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = count * self.row_bytes
        payload = os.pread(self._fd, size, self.offset + start * self.row_bytes)
        if len(payload) != size:
            raise UserError(f"{self.path}: ends before row {start + count}; tools/preprocess.py writes it again")
        return np.frombuffer(payload, self.dtype).reshape(count, *self.shape[1:]).copy()

    def __getstate__(self) -> dict:  # a worker process opens the file itself
        return {**self.__dict__, "_fd": None, "_array": None}

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def split_files(folder: Path, split: str, with_soft_targets: bool) -> dict[str, Path]:
    arrays = [a for a in runs.STORE_ARRAYS if a != "P" or with_soft_targets]
    return {array: runs.store_path(folder, split, array) for array in arrays}


def verify(folder: Path, split: str, recorded: dict) -> None:
    """Each file of a split has the size meta.json recorded and, up to `VERIFY_BYTES` a split, its sha256."""
    checked = sum(entry["bytes"] for entry in recorded.values()) <= VERIFY_BYTES
    for array, entry in recorded.items():
        verify_file(runs.store_path(folder, split, array), entry, checked, runs.META_FILE, "tools/preprocess.py")


def verify_file(path: Path, entry: dict, with_sha256: bool, record: str, writer: str) -> None:
    """A file has the size (and sha256) that `record` lists; else a UserError naming the script that
    writes it."""
    if not path.is_file():
        raise UserError(f"{path} not found; run {writer} first")
    if path.stat().st_size != entry["bytes"] or (with_sha256 and sha256_file(path) != entry["sha256"]):
        raise UserError(f"{path}: damaged (its size or sha256 differs from {record}'s); {writer} writes it again")
