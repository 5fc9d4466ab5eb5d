"""Scratch arrays on disk: what a computation too large for memory keeps between its passes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class DiskArray:
    """An array in a raw file of its own, read and written by slices of its first axis (`rows`) or of
    its second within one index of the first (`frames`), each one `pread` or `pwrite`: what it holds
    stays on disk. (A memory map's touched pages would count in the process's memory.)"""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.dtype, self.shape = np.dtype(dtype), tuple(int(n) for n in shape)
        self.frame_bytes = int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize
        self.row_bytes = self.shape[1] * self.frame_bytes
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, self.shape[0] * self.row_bytes)  # sparse until written

    def rows(self, first: int, end: int) -> np.ndarray:
        """`array[first:end]`."""
        return self._read(first * self.row_bytes, (end - first, *self.shape[1:]))

    def set_rows(self, first: int, values: np.ndarray) -> None:
        """`array[first:first + len(values)] = values`."""
        self._write(first * self.row_bytes, values)

    def frames(self, index: int, first: int, end: int) -> np.ndarray:
        """`array[index, first:end]`."""
        return self._read(index * self.row_bytes + first * self.frame_bytes, (end - first, *self.shape[2:]))

    def set_frames(self, index: int, first: int, values: np.ndarray) -> None:
        """`array[index, first:first + len(values)] = values`."""
        self._write(index * self.row_bytes + first * self.frame_bytes, values)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:  # an exception between opening and `close` leaks no descriptor
        self.close()

    def _read(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        buffer = bytearray(int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize)
        view, done = memoryview(buffer), 0
        while done < len(buffer):  # one call moves at most about 2 GiB
            done += os.preadv(self.fd, [view[done:]], offset + done)
        return np.frombuffer(buffer, dtype=self.dtype).reshape(shape)

    def _write(self, offset: int, values: np.ndarray) -> None:
        view, done = memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B"), 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
