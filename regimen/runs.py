"""Every hand-off file's name and format, written atomically.

Phases talk only through files, and only this module names them. Writes go
to a temporary file in the same folder and are renamed into place, so a process
killed at any moment leaves the last good file, never a torn one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regimen.cli import UserError
from regimen.config import Config

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
CHECKPOINT_FORMAT = 1
LIBRARIES = ("torch", "numpy", "scikit-learn", "deap", "cma", "pyyaml")


# --------------------------------------------------------------------------- processed data (phase 0)


def dataset_name(config: Config) -> str:
    """The processed folder's name: the built-in dataset's, or the npz file's stem."""
    if config.data.dataset == "npz":
        return Path(config.data.path).stem
    return config.data.dataset


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


def refuse_file(folder: Path, key: str) -> Path:
    """A UserError when `folder` is an existing file; checked before any work, so nothing is written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key} {folder}: is a file; expected a folder")
    return folder


def ensure_writable_dir(folder: Path, key: str) -> Path:
    """Create `folder` (and parents) or raise a UserError naming the config key."""
    folder = refuse_file(folder, key)
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


# --------------------------------------------------------------------------- run folders (phases 1-3)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder; the only place their names are spelled."""

    root: Path

    @property
    def checkpoint(self) -> Path:  # the last epoch, resumable
        return self.root / "ckpt.pt"

    @property
    def best(self) -> Path:  # the weights with the best validation metric
        return self.root / "best.pt"

    @property
    def features(self) -> Path:
        return self.root / "features.pt"

    @property
    def pgm_params(self) -> Path:
        return self.root / "pgm_params.pkl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def plots(self) -> Path:  # evaluate.py's pictures
        return self.root / "plots"

    def create(self, flag: str) -> "RunFolder":
        ensure_writable_dir(self.root, flag)
        return self


@dataclass(frozen=True)
class BundleFolder:
    """The files of an export bundle (`export.py --out`); `MANIFEST.json` lists the others' sha256."""

    root: Path

    FILES = ("model.pt", "pgm_params.pkl", "config.yaml", "calibration.npz", "metrics.json")

    @property
    def model(self) -> Path:  # network weights and what rebuilds them, input preparation
        return self.root / "model.pt"

    @property
    def pgm_params(self) -> Path:
        return self.root / "pgm_params.pkl"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def manifest(self) -> Path:
        return self.root / "MANIFEST.json"


def run_folder_of(path: Path) -> RunFolder:
    """The run folder holding a file such as `features.pt` or `ckpt.pt`."""
    return RunFolder(Path(path).parent)


def checkpoint_bytes(payload: dict) -> bytes:
    """A checkpoint's bytes with the format header; it must load with `weights_only=True`."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, payload: dict) -> None:
    """`torch.save` a checkpoint atomically."""
    atomic_write_bytes(path, checkpoint_bytes(payload))


def load_checkpoint(path: Path, flag: str, kinds: tuple[str, ...]) -> dict:
    """A checkpoint written by `save_checkpoint` whose `kind` is one of `kinds`.

    Read with `weights_only=True`: tensors and plain containers only, no code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{flag} {path}: not a readable regimen checkpoint ({reason[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "kind" not in payload:
        raise UserError(f"{flag} {path}: not a regimen checkpoint (no format {CHECKPOINT_FORMAT} header)")
    if payload["kind"] not in kinds:
        raise UserError(f"{flag} {path}: holds a {payload['kind']} checkpoint; "
                        f"expected {' or '.join(kinds)}")
    return payload


def load_features(path: Path, flag: str) -> dict:
    """The unaries and labels per split that phase 1 wrote."""
    return load_checkpoint(path, flag, ("features",))


# --------------------------------------------------------------------------- PGM parameters


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays, nothing else.

    Any other global (the way a malicious pickle reaches `os.system`) is refused
    before it is looked up, so no code from the file ever runs.
    """

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
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
        raise UserError(f"{flag} {path}: not a plain PGM parameter file ({error}); "
                        "only containers, numbers, strings and numpy arrays are loaded") from None
    except Exception as error:
        raise UserError(f"{flag} {path}: unreadable ({type(error).__name__}: {error})") from None
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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_history(path: Path, records: list[dict]) -> None:
    """All epoch records as JSON lines, rewritten whole so a resumed run never repeats a line."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def update_metrics(path: Path, section: str, payload: dict) -> None:
    """Set one phase's section of a run folder's metrics.json, keeping the other phases'."""
    path = Path(path)
    metrics = {}
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path}: not valid JSON; move it away to write new metrics") from None
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
