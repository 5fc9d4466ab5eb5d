"""Windows of a processed split for PyTorch: a `Dataset` over the window index, and its `DataLoader`.

`WindowDataset[rows]` reads a whole batch of windows (one `pread` per window
and array, see `regimen.store`), so a `DataLoader` with `batch_size=None` and a
batch sampler moves finished batches from its workers. Workers only read: the
batch order (`ShuffledBatches`, drawn from the trainer's generator) and the
augmentations stay in the training process, so the batches, and the weights,
are the same with 0 or 8 workers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from regimen import runs
from regimen.config import LoaderConfig
from regimen.store import ArrayFile


class WindowDataset(Dataset):
    """The windows of one processed split: `dataset[rows]` -> `{"x": [B, T, H, W, C], "y": [B, T, ...],
    "p": [B, T, ..., K], "m": [B, T, ...]}` (CPU tensors; `p` only where the split has soft targets,
    `m`, False at missing nodes, only where it has a mask)."""

    def __init__(self, folder: Path, split: str, meta: dict, in_memory: bool = False):
        self.window = int(meta["T_window"])
        names = {"X": "x", "Y": "y", "P": "p", "M": "m"}
        self.arrays = {names[array]: ArrayFile(runs.store_path(folder, split, array), in_memory)
                       for array in meta["files"][split] if array in names}
        self.index = np.load(runs.store_path(folder, split, "windows"), allow_pickle=False)  # [W, 3]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sequence(self) -> np.ndarray:
        return self.index[:, 0]

    @property
    def start(self) -> np.ndarray:
        return self.index[:, 1]

    def __getitem__(self, rows) -> dict[str, torch.Tensor]:
        return {key: self.read(key, rows) for key in self.arrays}

    def read(self, key: str, rows) -> torch.Tensor:
        """One array (`x`, `y` or `p`) of the windows `rows`."""
        first = self.index[np.atleast_1d(np.asarray(rows)), 2]
        return torch.from_numpy(np.stack([self.arrays[key].rows(int(row), self.window) for row in first]))


class ShuffledBatches(Sampler):
    """Every pass: a permutation of the windows from `generator`, cut into batches of `size` (the last
    one smaller); the generator advances as it would for `torch.randperm` in the training loop."""

    def __init__(self, count: int, size: int, generator: torch.Generator):
        self.count, self.size, self.generator = count, size, generator

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.count, generator=self.generator)
        for start in range(0, self.count, self.size):
            yield order[start:start + self.size].tolist()

    def __len__(self) -> int:
        return math.ceil(self.count / self.size)


class SequentialBatches(Sampler):
    """The windows in order, in batches of `size`."""

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.count, self.size):
            yield list(range(start, min(self.count, start + self.size)))

    def __len__(self) -> int:
        return math.ceil(self.count / self.size)


def window_loader(dataset: WindowDataset, batches: Sampler, loader: LoaderConfig,
                  pin_memory: bool = False) -> DataLoader:
    """A DataLoader of whole batches; with `loader.workers`, read by that many processes started
    with `loader.start_method` (never fork: HDF5 and Zarr deadlock in a forked child of a
    threaded process), kept for the loader's lifetime and each opening its own files. The loader
    draws its workers' base seed from a generator of its own: from the global one, every epoch
    would shift the dropout masks."""
    workers = loader.workers
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers,
                      multiprocessing_context=loader.start_method if workers else None,
                      persistent_workers=workers > 0, prefetch_factor=loader.prefetch if workers else None,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
