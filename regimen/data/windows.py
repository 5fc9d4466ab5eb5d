"""Windows of a processed split for PyTorch: a `Dataset` over the window index, and its `DataLoader`.

`WindowDataset[rows]` reads a whole batch of windows (one `pread` per window
and array, see `regimen.data.store`), so a `DataLoader` with `batch_size=None` and a
batch sampler moves finished batches from its workers. Workers only read: the
batch order (`ShuffledBatches`, drawn from the trainer's generator) and the
augmentations stay in the training process, so the batches, and the weights,
are the same with 0 or 8 workers. Under torchrun every process draws the same
order and reads only its `Share` of each global batch (`ShardedBatches`).

A forecast window (`data.forecast`) is T_in + T_out frames: `x` is read from its
first T_in frames only and the targets from its last T_out, so no future input
is ever read for a prediction. `last` holds the targets of the last observed
frame (what persistence holds); `x_future`, the true inputs of the frames the
autoregressive forecaster feeds back, is read only where training asks for it
(`future_inputs`, scheduled sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from regimen.core import runs
from regimen.core.config import LoaderConfig
from regimen.data.store import ArrayFile


class WindowDataset(Dataset):
    """The windows of one processed split: `dataset[rows]` -> `{"x": [B, T, H, W, C], "y": [B, T, ...],
    "p": [B, T, ..., K], "m": [B, T, ...]}` (CPU tensors; `p` only where the split has soft targets,
    `m`, False at missing nodes, only where it has a mask)."""

    def __init__(self, folder: Path, split: str, meta: dict, in_memory: bool = False):
        window = self.length = int(meta["T_window"])
        names = {"X": "x", "Y": "y", "P": "p", "M": "m"}
        self.arrays = {names[array]: ArrayFile(runs.store_path(folder, split, array), in_memory)
                       for array in meta["files"][split] if array in names}
        self.index = np.load(runs.store_path(folder, split, "windows"), allow_pickle=False)  # [W, 3]
        forecast = meta.get("forecast")
        self.future_inputs = False
        # key -> (array, first frame in the window, frames)
        self.frames = {key: (key, 0, window) for key in self.arrays}
        if forecast:
            t_in, t_out = forecast["input_frames"], forecast["output_frames"]
            self.frames = {key: (key, 0, t_in) if key == "x" else (key, t_in, t_out) for key in self.arrays}
            self.frames["last"] = ("y", t_in - 1, 1)
            self.frames["x_future"] = ("x", t_in, t_out - 1)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sequence(self) -> np.ndarray:
        return self.index[:, 0]

    @property
    def start(self) -> np.ndarray:
        return self.index[:, 1]

    def __getitem__(self, rows) -> dict[str, torch.Tensor]:
        return {key: self.read(key, rows) for key in self.frames if key != "x_future" or self.future_inputs}

    def read_window(self, array: str, rows) -> torch.Tensor:
        """An array (`x`, `y`) over the windows' every frame, a forecast's past and future alike: for
        pictures of the data, never for a prediction."""
        first = self.index[np.atleast_1d(np.asarray(rows)), 2]
        return torch.from_numpy(np.stack([self.arrays[array].rows(int(row), self.length) for row in first]))

    def read(self, key: str, rows) -> torch.Tensor:
        """One array (`x`, `y`, `p`, `m`; a forecast's `last` and `x_future`) of the windows `rows`."""
        array, offset, count = self.frames[key]
        first = self.index[np.atleast_1d(np.asarray(rows)), 2] + offset
        return torch.from_numpy(np.stack([self.arrays[array].rows(int(row), count) for row in first]))


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


def rows_by_sequence(sequence: np.ndarray) -> list[list[int]]:
    """Each sequence's windows (rows), in the order of their first rows: `sequence[row]` is a window's
    sequence, and a sequence's windows are in the order of their starts (the window index)."""
    by_sequence: dict[int, list[int]] = {}
    for row, owner in enumerate(sequence):
        by_sequence.setdefault(int(owner), []).append(row)
    return list(by_sequence.values())


class SequenceBatches(Sampler):
    """Every pass: the sequences in chunks of `size`; each chunk gives one global batch per window,
    holding the next window of each of its sequences in step (longest first, so the ones that run
    out drop off the end and a sequence keeps its place in the batch): what truncated
    backpropagation through time reads (`training.stateful`). The sequences are shuffled by
    `generator`, then ordered by length (a stable sort: equal lengths stay shuffled), so chunks
    hold sequences of about one length; the chunks come in an order of their own.

    Args:
        sequence: each window's sequence, in the order of a sequence's windows (the window index).
        size: sequences a chunk (the global batch).
    """

    def __init__(self, sequence: np.ndarray, size: int, generator: torch.Generator):
        self.size, self.generator, self.count = size, generator, len(sequence)
        self.sequences = rows_by_sequence(sequence)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.sequences), generator=self.generator).tolist()
        ordered = sorted((self.sequences[i] for i in order), key=len, reverse=True)
        chunks = [ordered[first:first + self.size] for first in range(0, len(ordered), self.size)]
        for c in torch.randperm(len(chunks), generator=self.generator).tolist():
            for step in range(len(chunks[c][0])):
                yield [rows[step] for rows in chunks[c] if len(rows) > step]

    def __len__(self) -> int:
        lengths = sorted((len(rows) for rows in self.sequences), reverse=True)
        return sum(lengths[first] for first in range(0, len(lengths), self.size))


@dataclass(frozen=True)
class Share:
    """One process's part of one global batch of training windows.

    Attributes:
        rows: the windows it reads, its micro-batches' one after the other.
        sizes: the windows of each of its micro-batches.
        offset: where its first window stands in the global batch.
        batch: the windows of the global batch.
        stand_in: the global batch (an epoch's last, smaller one) has no window for this process:
            `rows` holds the batch's first window, whose loss counts 0, because every process must
            take part in each step's gradient all-reduce.
    """

    rows: list[int]
    sizes: list[int]
    offset: int
    batch: int
    stand_in: bool = False


def share_of(batch: list[int], rank: int, world: int, parts: int) -> Share:
    """Process `rank`'s share of a global batch cut into `world * parts` near-equal micro-batches
    (as `numpy.array_split`), `parts` of them per process in rank order; empty ones are left out."""
    base, extra = divmod(len(batch), world * parts)
    sizes = [base + (i < extra) for i in range(world * parts)]
    offset = sum(sizes[:rank * parts])
    mine = [size for size in sizes[rank * parts:(rank + 1) * parts] if size]
    if not mine:
        return Share([batch[0]], [1], 0, len(batch), stand_in=True)
    return Share(batch[offset:offset + sum(mine)], mine, offset, len(batch))


class ShardedBatches(Sampler):
    """`batches`' global batches (the same order on every process), as this process's `Share`s."""

    def __init__(self, batches: ShuffledBatches, rank: int = 0, world: int = 1, parts: int = 1):
        self.batches, self.rank, self.world, self.parts = batches, rank, world, parts

    def __iter__(self) -> Iterator[Share]:
        for batch in self.batches:
            yield share_of(batch, self.rank, self.world, self.parts)

    def __len__(self) -> int:
        return len(self.batches)


class SharedWindows(Dataset):
    """`dataset[share]` -> the share's windows (as `WindowDataset[rows]`) and the share."""

    def __init__(self, windows: WindowDataset):
        self.windows = windows

    def __getitem__(self, share: Share) -> tuple[dict[str, torch.Tensor], Share]:
        return self.windows[share.rows], share


class SequentialBatches(Sampler):
    """The windows `start` to `stop` in order, in batches of `size`."""

    def __init__(self, stop: int, size: int, start: int = 0):
        self.start, self.stop, self.size = start, stop, size

    def __iter__(self) -> Iterator[list[int]]:
        for first in range(self.start, self.stop, self.size):
            yield list(range(first, min(self.stop, first + self.size)))

    def __len__(self) -> int:
        return math.ceil((self.stop - self.start) / self.size)


def window_loader(dataset: Dataset, batches: Sampler, loader: LoaderConfig,
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
