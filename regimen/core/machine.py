"""What this machine offers a run: the cores this process may use, and memory (so that one value in
a config cannot ask for more than there is)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
from pathlib import Path
from typing import Optional

from regimen.core.errors import UserError

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")
CGROUP_CPU = Path("/sys/fs/cgroup/cpu.max")  # "<quota> <period>" in microseconds, or "max <period>"
chosen_threads: Optional[tuple[int, str]] = None  # what `cli.apply_machine` set: (threads, why)


MAX_PATH, MAX_NAME = 4096, 255  # Linux's PATH_MAX and NAME_MAX, in bytes


def path_problem(text: str) -> Optional[str]:
    """What keeps `text` from being a path the file system takes, or None."""
    if "\0" in text:
        return "holds a NUL character; expected a file system path"
    if not 0 < len(text.encode()) <= MAX_PATH:
        return f"expected a path of 1 to {MAX_PATH} bytes"
    if any(len(part.encode()) > MAX_NAME for part in text.split("/")):
        return f"has a name longer than {MAX_NAME} bytes; expected a file system path"
    return None


def threads_to_use(setting: Optional[int]) -> tuple[int, str]:
    """Threads for torch, and why: the config's `threads`, else the cores this process may use.

    torch's default (every core of the machine) collapses when the cores are shared: a laptop with
    a browser, a cluster node with other jobs, or the slots of a search.
    """
    if setting:
        return setting, "threads in the config"
    limits = {"CPU affinity": len(os.sched_getaffinity(0))}
    try:
        quota, period = CGROUP_CPU.read_text().split()
        if quota != "max":
            limits["cgroup CPU quota"] = max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        limits["OMP_NUM_THREADS"] = int(os.environ["OMP_NUM_THREADS"])
    why = min(limits, key=limits.get)
    return limits[why], why


def shared_cores_hint(threads: int, load: Optional[float] = None) -> Optional[str]:
    """A warning when other jobs keep the cores busy: several torch threads then wait on each other
    (an epoch 3.8x slower beside one busy process, bench/threads.py). The thread count itself never
    follows the load: the same config gives the same numbers whatever else runs."""
    load = os.getloadavg()[0] if load is None else load
    others = load - 1.0  # this process is one of the load's runnable tasks
    if threads < 2 or others < 0.5 or others + threads <= (os.cpu_count() or 1):
        return None
    return (f"other jobs keep about {others:.1f} of the {os.cpu_count()} cores busy (load average {load:.1f}): "
            f"{threads} threads will wait on them; set threads: 1 in the config if an epoch is slow")


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


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the process that started it dies (a killed evolve.py,
    Dask worker or torchrun agent leaves no orphan training on)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
