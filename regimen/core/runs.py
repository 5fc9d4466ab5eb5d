"""Every hand-off file's name, and the output folders that hold them.

Phases talk only through files, and only this module names them: the
processed data of phase 0, run folders (phases 1-3, fit_pgm.py, evaluate.py),
trial and search folders (evolve.py), CMA-ES folders and export bundles. How
the files are written and read is `regimen.core.files`; who may write a folder is
`regimen.core.folders`.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from regimen.core.config import FILE_DATASETS, DataConfig, digest
from regimen.core.folders import FolderKind, staging_names

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


# --------------------------------------------------------------------------- processed data (phase 0)


def dataset_name(data: DataConfig) -> str:
    """The processed folder's name: the built-in dataset's, or for the user's files (an npz, an
    archive) the path's stem (letters, digits, '_', '-' and '.' kept) and a digest of the reader and
    its full path, so no file name can climb out of the processed folder, take a built-in dataset's
    place, or share a folder with other data."""
    if data.dataset in FILE_DATASETS:
        path = str(Path(data.path).resolve()) if not glob.has_magic(data.path) else os.path.abspath(data.path)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem).lstrip(".")[:64] or "data"
        source = path if data.dataset == "npz" else f"{data.dataset}:{path}"
        return f"{stem}-{digest(source)[:8]}"
    return data.dataset


def processed_dir(root: str | Path, name: str) -> Path:
    """Where phase 0 writes the windows of dataset `name`."""
    return Path(root) / "processed" / name


# Per split: frames, labels, soft targets and mask (both optional), window index.
STORE_ARRAYS = ("X", "Y", "P", "M", "windows")


def store_path(folder: Path, split: str, array: str) -> Path:
    """One array of a processed split: `<split>.<array>.npy` (see `regimen.data.store`)."""
    return Path(folder) / f"{split}.{array}.npy"


def meta_path(folder: Path) -> Path:
    return Path(folder) / META_FILE


PROCESSED = FolderKind("a processed data folder", "processed data",
                       (META_FILE, *(f"{split}.{array}.npy" for split in SPLITS for array in STORE_ARRAYS)),
                       writers="tools/preprocess.py")


# --------------------------------------------------------------------------- output folders


FEATURE_ARRAYS = ("unaries", "labels", "feature_maps")  # phase 1's predictions per split, listed by features.pt
# Phases 1-3, fit_pgm.py and evaluate.py; ckpt.pt first: it is what --resume takes.
RUN = FolderKind("a run folder", "a run", ("ckpt.pt", "best.pt", "features.pt", "pgm_params.pkl", "metrics.json",
                                "history.jsonl", "log.txt", "config.yaml", "learning_curve.png",
                                *(f"features.{split}.{array}.npy" for split in SPLITS for array in FEATURE_ARRAYS)),
                 ("plots",),
                 writers="train_convlstm.py, fit_pgm.py, train_joint.py, evaluate.py")
CMAES_TABLE, CMAES_PLOT = "cmaes.csv", "cmaes_loss.png"
CMAES = FolderKind("a CMA-ES folder", "a CMA-ES run", (*RUN.files, CMAES_TABLE, CMAES_PLOT), RUN.folders,
                   writers="evolve.py --strategy cmaes, evaluate.py")
BUNDLE = FolderKind("an export bundle", "files", ("MANIFEST.json", "model.pt", "pgm_params.pkl", "config.yaml",
                                      "calibration.npz", "metrics.json"), writers="export.py", whole=True)
SEARCH = FolderKind("a search folder", "a search", ("state.json", "config.yaml", "trials.csv", "logbook.csv",
                                      "hall_of_fame.json", "pareto.json", "fitness.png", "pareto.png",
                                      "arrivals.csv"),
                    ("trials", "best", "data", *(p.name for p in staging_names(Path("best")))), writers="evolve.py")
PICTURES = FolderKind("a pictures folder", "pictures", (), writers="tools/visualize.py")


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

    def feature_array(self, split: str, array: str) -> Path:
        return self.root / f"features.{split}.{array}.npy"

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

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"


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
        self.data = self.root / "data"
        self.fitness_plot = self.root / "fitness.png"
        self.pareto_plot = self.root / "pareto.png"
        self.arrivals = self.root / "arrivals.csv"  # steady state: the order results arrived in

    def trial(self, generation: int, index: int) -> Path:
        return self.trials / f"g{generation}" / f"i{index}"


class TrialFolder:
    """The files of one trial of a search: its config, its phases' logs, its result, and the run
    folders of its phases (phase 3's in `joint/`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config = self.root / "trial.yaml"  # beside the run files, whose phases write their own config.yaml
        self.result = self.root / "result.json"
        self.run = RunFolder(self.root)
        self.joint = RunFolder(self.root / "joint")

    def result_of(self, stage: str = "") -> Path:
        """The result of the trial, or of one of its successive-halving rungs (`stage`: rung0, ...)."""
        return self.root / f"result.{stage}.json" if stage else self.result

    def log(self, phase: str, stage: str = "") -> Path:
        return self.root / (f"{phase}.{stage}.log" if stage else f"{phase}.log")

    @property
    def final(self) -> RunFolder:
        """The run whose model the trial scored: the joint one when phase 3 ran."""
        return self.joint if self.joint.best.is_file() else self.run


def run_folder_of(path: Path) -> RunFolder:
    """The run folder holding a file such as `features.pt` or `ckpt.pt`."""
    return RunFolder(Path(path).parent)
