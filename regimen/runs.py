"""Every hand-off file's name and format, written atomically.

Phases talk only through files, and only this module names them. Writes go
to a temporary file in the same folder and are renamed into place, so a process
killed at any moment leaves the last good file, never a torn one. Reads go
through checked readers: a damaged file is named, with the phase that writes
it again.
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regimen.config import Config
from regimen.errors import UserError
from regimen.folders import FolderKind

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
CHECKPOINT_FORMAT = 1
LIBRARIES = ("torch", "numpy", "scikit-learn", "deap", "cma", "pyyaml")


# --------------------------------------------------------------------------- processed data (phase 0)


def dataset_name(config: Config) -> str:
    """The processed folder's name: the built-in dataset's, or for an npz file its stem (letters,
    digits, '_', '-' and '.' kept) and a digest of its full path, so no file name can climb out of
    the processed folder, take a built-in dataset's place, or share a folder with another file."""
    if config.data.dataset == "npz":
        path = Path(config.data.path).resolve()
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip(".")[:64] or "data"
        return f"{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return config.data.dataset


def processed_dir(root: str | Path, name: str) -> Path:
    """Where phase 0 writes the windows of dataset `name`."""
    return Path(root) / "processed" / name


def split_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}.npz"


def meta_path(folder: Path) -> Path:
    return Path(folder) / META_FILE


PROCESSED = FolderKind("a processed data folder", (META_FILE, *(f"{split}.npz" for split in SPLITS)),
                       writers="tools/preprocess.py")
META_KEYS = ("name", "task", "num_classes", "T_window", "stride", "static_features", "sha256", "data_version",
             "splits", "normalisation", "channel_names", "class_names", "spatial_invariant")


def load_meta(folder: Path) -> dict:
    path = meta_path(folder)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    meta = read_json(path, "tools/preprocess.py")
    missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise UserError(f"{path}: damaged (no {', '.join(missing)}); tools/preprocess.py writes it again")
    return meta


def load_split(folder: Path, split: str, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of one processed split (`X`, `Y`, optional `P`, `sequence`, `start`), checked
    against the sha256 that meta.json recorded for it."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    path = split_path(folder, split)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    payload = path.read_bytes()
    if sha256_bytes(payload) != meta["sha256"].get(split):
        raise UserError(f"{path}: damaged (its sha256 differs from {META_FILE}'s); tools/preprocess.py "
                        "writes it again")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # numpy and zipfile raise many types for a broken archive
        raise damaged(path, "tools/preprocess.py", error) from None


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


def refuse_file(folder: Path, key: str) -> Path:
    """A UserError when `folder` is an existing file; checked before any work, so nothing is written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key} {folder}: is a file; expected a folder")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide files from a shared cluster


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


# --------------------------------------------------------------------------- output folders


# Phases 1-3, fit_pgm.py and evaluate.py; ckpt.pt first: it is what --resume takes.
RUN = FolderKind("a run folder", ("ckpt.pt", "best.pt", "features.pt", "pgm_params.pkl", "metrics.json",
                                "history.jsonl", "log.txt", "config.yaml", "learning_curve.png"), ("plots",),
                 writers="train_convlstm.py, fit_pgm.py, train_joint.py, evaluate.py")
CMAES_TABLE, CMAES_PLOT = "cmaes.csv", "cmaes_loss.png"
CMAES = FolderKind("a CMA-ES folder", (*RUN.files, CMAES_TABLE, CMAES_PLOT), RUN.folders,
                   writers="evolve.py --strategy cmaes, evaluate.py")
BUNDLE = FolderKind("an export bundle", ("MANIFEST.json", "model.pt", "pgm_params.pkl", "config.yaml",
                                      "calibration.npz", "metrics.json"), writers="export.py")
SEARCH = FolderKind("a search folder", ("state.json", "config.yaml", "trials.csv", "logbook.csv",
                                      "hall_of_fame.json", "pareto.json", "fitness.png", "pareto.png"),
                    ("trials", "best", "data", ".best-tmp"), writers="evolve.py")
PICTURES = FolderKind("a pictures folder", (), writers="tools/visualize.py")


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

    def check_metrics(self) -> None:
        """metrics.json, which each phase adds a section to, must be readable before the work starts."""
        if self.metrics.is_file():
            read_metrics(self.metrics)


@dataclass(frozen=True)
class BundleFolder:
    """The files of an export bundle (`export.py --out`); `MANIFEST.json` lists the others' sha256."""

    root: Path

    FILES = BUNDLE.files[1:]

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


class SearchFolder:
    """The files of an evolve.py output folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.state = self.root / "state.json"
        self.trials = self.root / "trials"
        self.trials_csv = self.root / "trials.csv"
        self.logbook = self.root / "logbook.csv"
        self.hall_of_fame = self.root / "hall_of_fame.json"
        self.pareto = self.root / "pareto.json"
        self.best = self.root / "best"
        self.best_staging = self.root / ".best-tmp"
        self.data = self.root / "data"
        self.fitness_plot = self.root / "fitness.png"
        self.pareto_plot = self.root / "pareto.png"

    def trial(self, generation: int, index: int) -> Path:
        return self.trials / f"g{generation}" / f"i{index}"


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


def load_features(path: Path, flag: str) -> dict:
    """The unaries and labels per split that phase 1 wrote."""
    return load_checkpoint(path, flag, ("features",))


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
