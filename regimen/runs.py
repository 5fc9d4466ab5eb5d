"""Every hand-off file's name and format, written atomically.

Phases talk only through files, and only this module names them. Writes go
to a temporary file in the same folder and are renamed into place, so a process
killed at any moment leaves the last good file, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from regimen.cli import UserError

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


# --------------------------------------------------------------------------- processed data (phase 0)


def processed_dir(root: str | Path, name: str) -> Path:
    """Where phase 0 writes the windows of dataset `name`."""
    return Path(root) / "processed" / name


def split_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}.npz"


def meta_path(folder: Path) -> Path:
    return Path(folder) / META_FILE


def load_split(folder: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of one processed split (`X`, `Y`, optional `P`, `sequence`, `start`)."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    path = split_path(folder, split)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def load_meta(folder: Path) -> dict:
    path = meta_path(folder)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- atomic, reproducible writes


def ensure_writable_dir(folder: Path, key: str) -> Path:
    """Create `folder` (and parents) or raise a UserError naming the config key."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}: cannot create folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{key}: folder {folder} is not writable")
    return folder


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz whose bytes depend only on the arrays.

    `numpy.savez` stamps each member with the current time; a fixed timestamp
    makes re-running phase 0 leave byte-identical files (same data version).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
