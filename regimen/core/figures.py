"""Matplotlib for files only (no screen needed), and the one way every figure is written."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from regimen.core import folders  # noqa: E402


def save_figure(fig, path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{folders.TEMPORARY_MARK}{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
        plt.close(fig)
