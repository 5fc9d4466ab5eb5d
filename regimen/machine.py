"""What this machine offers a run: memory, so that one value in a config cannot ask for more than there is."""

from __future__ import annotations

import os
from pathlib import Path

from regimen.errors import UserError

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


def memory_bytes() -> int:
    """Physical memory, or the cgroup's memory limit when that is lower (a container, a batch job)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = CGROUP_LIMIT.read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.1f} GiB"


def require_memory(nbytes: float, what: str) -> None:
    """A UserError when `what`, estimated at `nbytes`, would not fit in this machine's memory."""
    available = memory_bytes()
    if nbytes > available:
        raise UserError(f"{what} would take about {gib(nbytes)}, more than this machine's "
                        f"{gib(available)} of memory")
