"""Keep freed memory in the process, so large tensors stop paying page faults on every step.

glibc serves big allocations with fresh `mmap`s and returns them on free; each
new mapping then faults on first touch of every 4 KiB page. For PyTorch on the
CPU that is most of the time of a ConvLSTM step here: a convolution writing
33 MB ran 7x faster once freed memory was kept (PyTorch's CPU performance guide
recommends jemalloc or tcmalloc for the same reason; `mallopt` needs no install).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # allocations below 1 GiB come from the heap; free space is kept up to 1 GiB


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds. Returns False where glibc is not the C library."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
