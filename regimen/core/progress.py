"""Progress of long loops: a tqdm bar on a terminal, and elsewhere (nohup, a batch scheduler, a log
file) a log line at a steady interval saying what is done, the rate and the time left, so that slow
is never mistaken for hung."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

log = logging.getLogger("progress")
Item = TypeVar("Item")

INTERVAL_S = 30.0  # seconds between progress lines without a terminal; the scripts set config.progress_interval_s


def track(items: Iterable[Item], desc: str, unit: str, total: Optional[int] = None) -> Iterator[Item]:
    """Iterate `items`, showing progress: a bar when stderr is a terminal, else timed log lines."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False)
        return
    started = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item  # the caller has finished the item when it asks for the next one
        now = time.monotonic()
        if now - last >= INTERVAL_S:
            last = now
            rate = done / max(now - started, 1e-9)
            left = f", about {(total - done) / rate:.0f} s left" if total else ""
            log.info("%s: %d/%s %s, %.2f %s/s%s", desc, done, total or "?", unit, rate, unit, left)
