"""The reader of data held in memory: the built-in generators and the user's npz file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regimen.core.config import DataConfig
from regimen.data.datasets import load_dataset
from regimen.data.mmnist import load_mmnist
from regimen.data.npz import load_npz
from regimen.data.readers import Reader, Sequence


class ArraysReader(Reader):
    """Sequences of a generated or npz `Dataset` (`X` `[N, T, H, W, C]`), checked as a whole on loading."""

    def __init__(self, data: DataConfig, seed: int):
        loaders = {"npz": lambda: load_npz(data), "mmnist": lambda: load_mmnist(data, seed)}
        dataset = loaders.get(data.dataset, lambda: load_dataset(data, seed))()
        self.arrays = {"X": dataset.X, "Y": dataset.Y}
        if dataset.P is not None:
            self.arrays["P"] = dataset.P
        n, t = dataset.X.shape[:2]
        label = f"{data.path}" if data.dataset == "npz" else data.dataset
        super().__init__(task=dataset.task, num_classes=dataset.num_classes, class_names=dataset.class_names,
                         channel_names=dataset.channel_names,
                         sequences=[Sequence(f"{label} sequence {i}", t) for i in range(n)],
                         spatial_invariant=dataset.spatial_invariant, params=dataset.params,
                         baselines=dataset.baselines,
                         sources=[Path(data.path)] if data.dataset == "npz" else [])

    def read(self, index: int, start: int, stop: int) -> dict[str, np.ndarray]:
        return {key: a[index, start:stop] for key, a in self.arrays.items()}
