"""How hand-off files are written and read.

Writes go to a temporary file in the same folder and are renamed into place,
so a process killed at any moment leaves the last good file, never a torn
one. Reads are checked: a damaged file is named, with the phase that writes it
again. Checkpoints load with `weights_only=True`; `pgm_params.pkl` through a
restricted unpickler that runs no code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regimen.core.errors import UserError
from regimen.core.folders import TEMPORARY_MARK

CHECKPOINT_FORMAT = 1
LIBRARIES = ("torch", "numpy", "scikit-learn", "deap", "cma", "pyyaml")


def damaged(path: Path, writer: str, error: BaseException | str) -> UserError:
    """The one message for a hand-off file that cannot be read: which file, why, who writes it again."""
    reason = error if isinstance(error, str) else (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(f"{path}: damaged ({reason[:120]}); {writer} writes it again")


def read_json(path: Path, writer: str) -> Any:
    """A JSON hand-off file, or a UserError naming it and its writer."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(path, writer, error) from None


# --------------------------------------------------------------------------- atomic, reproducible writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide files from a shared cluster


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{TEMPORARY_MARK}")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)
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


# --------------------------------------------------------------------------- checkpoints


def checkpoint_bytes(payload: dict) -> bytes:
    """A checkpoint's bytes with the format header; it must load with `weights_only=True`."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, payload: dict) -> None:
    """`torch.save` a checkpoint atomically."""
    atomic_write_bytes(path, checkpoint_bytes(payload))


# Which script writes a checkpoint of each kind again when it is damaged.
CHECKPOINT_WRITERS = {"convlstm": "train_convlstm.py", "features": "train_convlstm.py", "joint": "train_joint.py",
                      "model": "export.py"}


def load_checkpoint(path: Path, flag: str, kinds: tuple[str, ...]) -> dict:
    """A checkpoint written by `save_checkpoint` whose `kind` is one of `kinds`.

    Read with `weights_only=True`: tensors and plain containers only, no code.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; expected a checkpoint file")
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    writer = " or ".join(dict.fromkeys(CHECKPOINT_WRITERS[kind] for kind in kinds))
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has lost its directory
        raise UserError(f"{flag} {path}: damaged or not a regimen checkpoint (not a whole torch.save archive); "
                        f"{writer} writes it again")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object: no checkpoint of ours holds one
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({refused.group(1)})" if refused else ""
        raise UserError(f"{flag} {path}: holds Python objects{what} that a regimen checkpoint never holds; "
                        "refused to load them") from None
    except Exception as error:  # torch raises many types for a truncated file or one that is no checkpoint
        raise UserError(f"{flag} {path}: damaged or not a regimen checkpoint ({_first_line(error)}); "
                        f"{writer} writes it again") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "kind" not in payload:
        raise UserError(f"{flag} {path}: not a regimen checkpoint (no format {CHECKPOINT_FORMAT} header)")
    if payload["kind"] not in kinds:
        raise UserError(f"{flag} {path}: holds a {payload['kind']} checkpoint; "
                        f"expected {' or '.join(kinds)}")
    return payload


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:120]


# --------------------------------------------------------------------------- PGM parameters


REFUSED = "refusing to load"


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays, nothing else.

    Any other global (the way a malicious pickle reaches `os.system`) is refused
    before it is looked up, so no code from the file ever runs.
    """

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{REFUSED} {module}.{name}")
        return super().find_class(module, name)


def pgm_params_bytes(params: dict) -> bytes:
    return pickle.dumps(params, protocol=4)


def save_pgm_params(path: Path, params: dict) -> None:
    atomic_write_bytes(path, pgm_params_bytes(params))


def load_pgm_params(path: Path, flag: str) -> dict:
    """PGM parameters through the restricted unpickler; a refused or broken file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        with open(path, "rb") as handle:
            params = _PlainUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        if not str(error).startswith(REFUSED):
            raise damaged(path, "fit_pgm.py (or train_joint.py, for a joint run)", error) from None
        raise UserError(f"{flag} {path}: not a plain PGM parameter file ({error}); "
                        "only containers, numbers, strings and numpy arrays are loaded") from None
    except Exception as error:  # a truncated or foreign file: pickle raises many types
        raise damaged(path, "fit_pgm.py (or train_joint.py, for a joint run)", error) from None
    if not isinstance(params, dict) or "type" not in params or "params" not in params:
        raise UserError(f"{flag} {path}: not a regimen PGM parameter file (no type/params)")
    return params


# --------------------------------------------------------------------------- metrics, history, provenance


def csv_text(rows: list[dict]) -> str:
    """Rows of equal keys as CSV text with a header ("" for no rows)."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_history(path: Path) -> list[dict]:
    """The epoch records of a run folder's history.jsonl."""
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(path, "the phase that made this run (train_convlstm.py or train_joint.py)", error) from None


def write_history(path: Path, records: list[dict]) -> None:
    """All epoch records as JSON lines, rewritten whole so a resumed run never repeats a line."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_metrics(path: Path) -> dict:
    """A run folder's metrics.json: one section per phase that wrote into the folder."""
    writer = "every phase that ran in this folder (move it away first)"
    metrics = read_json(path, writer)
    if not isinstance(metrics, dict):
        raise damaged(path, writer, "not a mapping of sections")
    return metrics


def check_metrics(path: Path) -> None:
    """A run folder's metrics.json, which each phase adds a section to, must be readable before work starts."""
    if Path(path).is_file():
        read_metrics(path)


def update_metrics(path: Path, section: str, payload: dict) -> None:
    """Set one phase's section of a run folder's metrics.json, keeping the other phases'."""
    path = Path(path)
    metrics = read_metrics(path) if path.is_file() else {}
    metrics[section] = payload
    atomic_write_json(path, metrics)


def provenance(config_hash: str, seed: int, meta: dict, device: str, started: float,
               ended: float) -> dict:
    """How a metrics.json was made: enough to reproduce it."""
    return {
        "seed": seed,
        "config_hash": config_hash,
        "data_version": meta["data_version"],
        "dataset": meta["name"],
        "split_sizes": meta["splits"],
        "git_commit": _git_commit(),
        "libraries": {"python": platform.python_version(),
                      **{name: _version(name) for name in LIBRARIES}},
        "device": device,
        "threads": torch.get_num_threads(),
        "wall_time_s": round(ended - started, 3),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The project's commit, with "+dirty" when tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
