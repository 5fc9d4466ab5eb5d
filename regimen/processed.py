"""The processed data a phase reads: the splits of phase 0 as tensors, checked against the config.

`load_meta` and `load_split` read phase 0's files, checked (each split against
the sha256 that meta.json recorded). `load_task_data(config)` finds `data/processed/<name>/` for the configured
dataset, checks that it was made with the same task, window and features, and
returns a `TaskData`. `check_same_data` refuses a checkpoint or features file
made from other data.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from regimen import files, runs
from regimen.augment import Batch
from regimen.config import Config
from regimen.errors import UserError


@dataclass
class TaskData:
    """The processed splits as tensors: `x` `[N, T, H, W, C]`, `y`, optional soft targets `p`."""

    meta: dict
    splits: dict[str, Batch]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def num_classes(self) -> Optional[int]:
        return self.meta["num_classes"]

    @property
    def input_channels(self) -> int:
        return int(self.splits["train"]["x"].shape[-1])

    @property
    def num_outputs(self) -> int:
        """Classes, or the channels of a regression target."""
        return int(self.splits["train"]["y"].shape[-1]) if self.task == "regression" else self.num_classes

    @property
    def identity(self) -> dict:
        return data_identity(self.meta)


def data_identity(meta: dict) -> dict:
    """What checkpoints and features record of the data they came from."""
    return {"name": meta["name"], "data_version": meta["data_version"], "task": meta["task"],
            "num_classes": meta["num_classes"]}


def load_checked_meta(config: Config) -> dict:
    """The processed data's meta.json, checked against the config that asks for it."""
    folder = processed_folder(config)
    meta = load_meta(folder)
    made = {"task": meta["task"], "T_window": meta["T_window"], "stride": meta["stride"],
            "static_features": meta["static_features"]}
    asked = {"task": config.data.task, "T_window": config.data.T_window, "stride": config.data.stride,
             "static_features": list(config.data.static_features)}
    for key, value in made.items():
        if asked[key] != value:
            raise UserError(f"data.{key} = {asked[key]!r} but {folder} was made with {value!r}; "
                            "run tools/preprocess.py again with this config")
    return meta


def processed_folder(config: Config) -> Path:
    """Phase 0's folder for the configured data; a UserError when phase 0 has not made it, naming
    what phase 0 did make (another config's data) instead."""
    folder = runs.processed_dir(config.data.root, runs.dataset_name(config))
    if not runs.meta_path(folder).is_file():
        raise UserError(f"{runs.meta_path(folder)} not found: this config's data ({_described(config)}) has not "
                        f"been preprocessed; run tools/preprocess.py with this config first{_others(folder)}")
    return folder


def _described(config: Config) -> str:
    data = config.data
    return f"data.dataset: {data.dataset}" + (f", data.path: {data.path}" if data.dataset == "npz" else "")


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


def load_task_data(config: Config) -> TaskData:
    """The processed splits of the configured dataset, checked against the config."""
    meta = load_checked_meta(config)
    folder = runs.processed_dir(config.data.root, meta["name"])
    splits = {}
    for split in runs.SPLITS:
        arrays = load_split(folder, split, meta)
        splits[split] = {"x": torch.from_numpy(arrays["X"]), "y": torch.from_numpy(arrays["Y"])}
        if "P" in arrays:
            splits[split]["p"] = torch.from_numpy(arrays["P"])
    return TaskData(meta, splits)


def check_same_data(recorded: dict, meta: dict, source: str) -> None:
    """A UserError when a checkpoint or features file was made from other data than `meta`'s."""
    current = data_identity(meta)
    if recorded["data_version"] != current["data_version"]:
        raise UserError(f"{source} was made from {recorded['name']} data (version "
                        f"{recorded['data_version'][:12]}), but the configured data is "
                        f"{current['name']} (version {current['data_version'][:12]}); "
                        "use the config it was made with, or rerun the earlier phases")


META_KEYS = ("name", "task", "num_classes", "T_window", "stride", "static_features", "sha256", "data_version",
             "splits", "normalisation", "channel_names", "class_names", "spatial_invariant")


def load_meta(folder: Path) -> dict:
    path = runs.meta_path(folder)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    meta = files.read_json(path, "tools/preprocess.py")
    missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise UserError(f"{path}: damaged (no {', '.join(missing)}); tools/preprocess.py writes it again")
    return meta


def load_split(folder: Path, split: str, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of one processed split (`X`, `Y`, optional `P`, `sequence`, `start`), checked
    against the sha256 that meta.json recorded for it."""
    if split not in runs.SPLITS:
        raise UserError(f"unknown split '{split}'; expected one of {', '.join(runs.SPLITS)}")
    path = runs.split_path(folder, split)
    if not path.is_file():
        raise UserError(f"{path} not found; run tools/preprocess.py first")
    payload = path.read_bytes()
    if files.sha256_bytes(payload) != meta["sha256"].get(split):
        raise UserError(f"{path}: damaged (its sha256 differs from {runs.META_FILE}'s); tools/preprocess.py "
                        "writes it again")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # numpy and zipfile raise many types for a broken archive
        raise files.damaged(path, "tools/preprocess.py", error) from None
