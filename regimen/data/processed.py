"""The processed data a phase reads: the splits of phase 0, checked against the config.

`load_meta` reads phase 0's meta.json. `load_task_data(config.data)` finds
`data/processed/<name>/` for the configured dataset, checks that it was made
with the same task, window and features and that its files are whole, and
returns a `TaskData`, whose windows stream through `TaskData.loader` (no phase
holds a split in memory).
`check_same_data` refuses a checkpoint or features file made from other data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import DataLoader, Sampler

from regimen.core import files, runs
from regimen.core.config import FILE_DATASETS, DataConfig, LoaderConfig
from regimen.core.errors import UserError
from regimen.data.store import STORE_VERSION, verify
from regimen.data.windows import WindowDataset, window_loader


class TaskData:
    """The processed splits: windows `x` `[N, T, H, W, C]`, labels `y`, optional soft targets `p`.

    Args:
        meta: phase 0's meta.json.
        folder: phase 0's folder, whose windows `windows(split)` and `loader` read.
        loader: how DataLoaders read them (`data.loader`).
    """

    def __init__(self, meta: dict, folder: Path, loader: Optional[LoaderConfig] = None):
        self.meta, self.folder, self.loader_config = meta, folder, loader or LoaderConfig()
        self._windows: dict[str, WindowDataset] = {}

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def num_classes(self) -> Optional[int]:
        return self.meta["num_classes"]

    @property
    def input_channels(self) -> int:
        return int(self.meta["shapes"]["train"]["X"][-1])

    @property
    def num_outputs(self) -> int:
        """Classes, or the channels of a regression target."""
        return int(self.meta["shapes"]["train"]["Y"][-1]) if self.task == "regression" else self.num_classes

    @property
    def forecast(self) -> Optional[list[int]]:
        """`[T_in, T_out]` of forecast windows, else None."""
        return forecast_frames(self.meta)

    @property
    def has_soft_targets(self) -> bool:
        return "P" in self.meta["shapes"]["train"]

    @property
    def has_mask(self) -> bool:
        """Whether the splits mark missing nodes (`M`, see `regimen.data.preprocess.mark_missing`)."""
        return "M" in self.meta["shapes"]["train"]

    @property
    def identity(self) -> dict:
        return data_identity(self.meta)

    def windows(self, split: str) -> WindowDataset:
        if split not in self._windows:
            self._windows[split] = WindowDataset(self.folder, split, self.meta)
        return self._windows[split]

    def loader(self, split: str, batches: Sampler, pin_memory: bool = False) -> DataLoader:
        """A DataLoader of the split's windows in the sampler's batches (`data.loader`'s workers)."""
        return window_loader(self.windows(split), batches, self.loader_config, pin_memory)


def data_identity(meta: dict) -> dict:
    """What checkpoints and features record of the data they came from."""
    return {"name": meta["name"], "data_version": meta["data_version"], "task": meta["task"],
            "num_classes": meta["num_classes"]}


def load_checked_meta(data: DataConfig) -> dict:
    """The processed data's meta.json, checked against the data section that asks for it."""
    folder = processed_folder(data)
    meta = load_meta(folder)
    made = {"task": meta["task"], "T_window": meta["T_window"], "stride": meta["stride"],
            "static_features": meta["static_features"], "forecast": forecast_frames(meta)}
    asked = {"task": data.task, "T_window": data.window, "stride": data.stride,
             "static_features": list(data.static_features),
             "forecast": [data.forecast.input_frames, data.forecast.output_frames] if data.forecast else None}
    for key, value in made.items():
        if asked[key] != value:
            raise UserError(f"data.{key} = {asked[key]!r} but {folder} was made with {value!r}; "
                            "run tools/preprocess.py again with this config")
    return meta


def forecast_frames(meta: dict) -> Optional[list[int]]:
    """`[T_in, T_out]` of processed forecast windows, else None."""
    forecast = meta.get("forecast")
    return [forecast["input_frames"], forecast["output_frames"]] if forecast else None


def processed_folder(data: DataConfig) -> Path:
    """Phase 0's folder for the configured data; a UserError when phase 0 has not made it, naming
    what phase 0 did make (another config's data) instead."""
    folder = runs.processed_dir(data.root, runs.dataset_name(data))
    if not runs.meta_path(folder).is_file():
        raise UserError(f"{runs.meta_path(folder)} not found: this config's data ({_described(data)}) has not "
                        f"been preprocessed; run tools/preprocess.py with this config first{_others(folder)}")
    return folder


def _described(data: DataConfig) -> str:
    return f"data.dataset: {data.dataset}" + (f", data.path: {data.path}" if data.dataset in FILE_DATASETS else "")


def _others(folder: Path) -> str:
    """What else phase 0 made beside `folder`, and from which data: the hint when a phase was given
    another config than preprocess was."""
    made = []
    for meta_file in sorted(folder.parent.glob(f"*/{runs.META_FILE}")):
        try:
            made_from = json.loads(meta_file.read_text())["generator"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        source = f"data.dataset: {made_from.get('dataset')}"
        if "path" in made_from:
            source += f", data.path: {made_from['path']}"
        made.append(f"{meta_file.parent.name} ({source})")
    if not made:
        return ""
    return (f". {folder.parent} holds {'; '.join(made)}: give every phase the config (--config, the same "
            "--set) that tools/preprocess.py was given")


def load_task_data(data: DataConfig, check_files: bool = True) -> TaskData:
    """The processed splits of the configured dataset, checked against the config and on disk
    (the files' sizes and hashes: by one process of a torchrun job, `check_files`)."""
    meta = load_checked_meta(data)
    folder = runs.processed_dir(data.root, meta["name"])
    for split in runs.SPLITS if check_files else ():
        verify(folder, split, meta["files"][split])
    return TaskData(meta, folder, data.loader)


def check_same_data(recorded: dict, meta: dict, source: str) -> None:
    """A UserError when a checkpoint or features file was made from other data than `meta`'s."""
    current = data_identity(meta)
    if recorded["data_version"] != current["data_version"]:
        raise UserError(f"{source} was made from {recorded['name']} data (version "
                        f"{recorded['data_version'][:12]}), but the configured data is "
                        f"{current['name']} (version {current['data_version'][:12]}); "
                        "use the config it was made with, or rerun the earlier phases")


META_KEYS = ("name", "task", "num_classes", "T_window", "stride", "static_features", "sha256", "data_version",
             "splits", "normalisation", "channel_names", "class_names", "spatial_invariant", "shapes", "files")


def load_meta(folder: Path) -> dict:
    path = runs.meta_path(folder)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    meta = files.read_json(path, "tools/preprocess.py")
    if isinstance(meta, dict) and meta.get("store") != STORE_VERSION:
        raise UserError(f"{path}: processed by another version of tools/preprocess.py (windows in .npz files); "
                        "run tools/preprocess.py again")
    missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise UserError(f"{path}: damaged (no {', '.join(missing)}); tools/preprocess.py writes it again")
    return meta


def first_windows(folder: Path, split: str, meta: dict, count: int) -> dict[str, np.ndarray]:
    """The first window of each of the split's first `count` sequences: `X`, `Y` (of every frame of
    a forecast window, past and future) and `sequence`, the split's files checked first."""
    if split not in runs.SPLITS:
        raise UserError(f"unknown split '{split}'; expected one of {', '.join(runs.SPLITS)}")
    verify(folder, split, meta["files"][split])
    windows = WindowDataset(folder, split, meta)
    picks = np.sort(np.unique(windows.sequence, return_index=True)[1])[:count]
    return {"X": windows.read_window("x", picks).numpy(), "Y": windows.read_window("y", picks).numpy(),
            "sequence": windows.sequence[picks]}
