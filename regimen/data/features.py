"""Phase 1's predictions per split: unaries, labels (and feature maps) as arrays beside `features.pt`.

Phase 1 writes them batch by batch (`FeatureWriter`), so it never holds a
split's predictions; `features.pt` then lists each array with its sha256 and
size and vouches for them, as meta.json does for the processed data. A rerun
removes `features.pt` before it renames new arrays into place, so an
interrupted one is never taken for whole. `load_features` opens them,
checked, as `StoredArray`s read by rows, so phase 2 never holds a split either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from regimen.core import files, runs
from regimen.core.errors import UserError
from regimen.data.store import VERIFY_BYTES, ArrayFile, ArrayWriter, verify_file


class FeatureWriter:
    """The arrays of one run's `features.pt`, filled batch by batch, split after split."""

    def __init__(self, run: runs.RunFolder):
        self.run = run
        self.writers: dict[str, dict[str, ArrayWriter]] = {}

    def add(self, split: str, count: int, rows: dict[str, torch.Tensor]) -> None:
        """The next rows of each array of `split` (`count` rows in all)."""
        arrays = self.writers.setdefault(split, {})
        for name, tensor in rows.items():
            values = tensor.numpy()
            if name not in arrays:
                arrays[name] = ArrayWriter(self.run.feature_array(split, name), values.dtype,
                                           (count, *values.shape[1:]))
            arrays[name].append(values)

    def save(self, identity: dict, stateful: bool) -> None:
        """Rename the arrays into place and write `features.pt`, which lists them and says whether
        the unaries are those of each sequence read as one stream (evaluation.stateful)."""
        listed = {split: {name: writer.close() for name, writer in arrays.items()}
                  for split, arrays in self.writers.items()}
        self.run.features.unlink(missing_ok=True)  # it vouched for the arrays about to be replaced
        for arrays in self.writers.values():
            for writer in arrays.values():
                writer.commit()
        files.save_checkpoint(self.run.features, {"kind": "features", "dataset": identity, "stateful": stateful,
                                                   "splits": listed})

    def discard(self) -> None:
        for arrays in self.writers.values():
            for writer in arrays.values():
                writer.discard()


def load_features(path: Path, flag: str) -> dict:
    """`features.pt` with its arrays opened: `splits[split][name]` a `StoredArray` (unaries
    `[N, T, K, ...]`, labels, optional feature_maps), and `stateful` (False where not recorded)."""
    payload = files.load_checkpoint(path, flag, ("features",))
    run = runs.run_folder_of(Path(path))
    splits = {}
    for split, arrays in payload["splits"].items():
        splits[split] = {}
        for name, entry in arrays.items():
            if not isinstance(entry, dict):
                raise UserError(f"{flag} {path}: written by an earlier version of train_convlstm.py; "
                                "run it again")
            array = run.feature_array(split, name)
            verify_file(array, entry, entry["bytes"] <= VERIFY_BYTES, Path(path).name, "train_convlstm.py")
            splits[split][name] = StoredArray(array)
    return {"stateful": False, **payload, "splits": splits}


def check_same_reading(features: dict, stateful: bool, path: Path) -> None:
    """Phase 2 decodes the unaries as phase 1 read them: window by window, or with evaluation.stateful
    each sequence as one stream, decoded whole; the config (`stateful`) must say the same."""
    if features["stateful"] != stateful:
        raise UserError(f"--features {path}: its unaries were saved with evaluation.stateful = "
                        f"{str(features['stateful']).lower()}, the config has {str(stateful).lower()}; expected the "
                        "same: run train_convlstm.py again with this config")


class StoredArray:
    """An `.npy` file read by rows, never whole: `array[rows]` is a tensor of those rows."""

    def __init__(self, path: Path):
        self.file = ArrayFile(path)

    def __len__(self) -> int:
        return self.file.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.file.shape)

    def __getitem__(self, rows) -> torch.Tensor:
        rows = np.atleast_1d(np.asarray(rows))
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):  # one read
            return torch.from_numpy(self.file.rows(int(rows[0]), len(rows)))
        return torch.from_numpy(np.stack([self.file.rows(int(row), 1)[0] for row in rows]))
