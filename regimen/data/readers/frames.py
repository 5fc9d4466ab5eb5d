"""Folders of frames: one folder per sequence of PNG or npy frames, sorted by name (HKO-7's layout).

`data.path` holds a folder per sequence (or the frames of a single sequence).
A PNG frame is `[H, W]` (one channel) or `[H, W, C]` (RGB, RGBA); an npy frame
`[H, W]` or `[H, W, C]`. `data.labels` is a folder beside it with the same
sequence folders and as many frames each: integer masks (segmentation) or
target frames (regression); or `next_frame`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from regimen.core.config import NEXT_FRAME, DataConfig
from regimen.core.errors import UserError
from regimen.data.readers import Reader, Sequence, archive_names, integer_labels
from regimen.data.values import as_float32

SUFFIXES = (".png", ".npy")


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def frame_shape(path: Path) -> tuple[int, ...]:
    """A frame's shape from its header only."""
    try:
        if path.suffix.lower() == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        with Image.open(path) as image:
            bands = len(image.getbands())
            return (image.height, image.width) + ((bands,) if bands > 1 else ())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable {path.suffix} frame ({error})") from None


def read_frame(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable {path.suffix} frame ({error})") from None


class FramesReader(Reader):
    def __init__(self, data: DataConfig):
        self.data = data
        root = Path(data.path)
        if not root.is_dir():
            raise UserError(f"data.path: {root} {'is not a folder' if root.exists() else 'not found'}; expected a "
                            "folder with a folder of frames per sequence")
        folders = sorted(p for p in root.iterdir() if p.is_dir()) or [root]
        self.inputs = [frame_files(folder) for folder in folders]
        self.labels = None
        if data.labels != NEXT_FRAME:
            self.labels = [self._label_files(root, folder, files) for folder, files in zip(folders, self.inputs)]
        grid = None
        for folder, files in zip(folders, self.inputs):
            if not files:
                raise UserError(f"{folder}: holds no frame ({', '.join(SUFFIXES)})")
            for path in files:
                shape = frame_shape(path)
                if len(shape) not in (2, 3) or (grid is not None and shape != grid[0]):
                    expected = f"{grid[0]} as {grid[1]}" if grid else "[H, W] or [H, W, C]"
                    raise UserError(f"{path}: a frame of shape {shape}; expected {expected}")
                grid = grid or (shape, path)
        if self.labels is not None:
            self._check_label_shapes(grid[0])
        shift = data.target_shift if data.labels == NEXT_FRAME else 0
        channels = grid[0][2] if len(grid[0]) == 3 else 1
        super().__init__(**archive_names(data, channels, "channel"),
                         sequences=[Sequence(str(folder), len(files) - shift)
                                    for folder, files in zip(folders, self.inputs)],
                         params={"dataset": "frames", "path": data.path, "labels": data.labels},
                         sources=[p for files in self.inputs + (self.labels or []) for p in files])

    def _label_files(self, root: Path, folder: Path, inputs: list[Path]) -> list[Path]:
        """The label frames parallel to one sequence's input frames."""
        label_root = Path(self.data.labels)
        if not label_root.is_dir():
            raise UserError(f"data.labels: {label_root} {'is not a folder' if label_root.exists() else 'not found'}; "
                            "expected a folder of label frames beside data.path, with the same sequence folders")
        label_folder = label_root / folder.relative_to(root)
        labels = frame_files(label_folder) if label_folder.is_dir() else []
        if len(labels) != len(inputs):
            raise UserError(f"{label_folder}: {len(labels)} label frames for the {len(inputs)} frames of {folder}; "
                            "expected one label frame per frame")
        return labels

    def _check_label_shapes(self, grid: tuple[int, ...]) -> None:
        expected = grid[:2] if self.data.task == "segmentation" else None
        for files in self.labels:
            for path in files:
                shape = frame_shape(path)
                if (expected is not None and shape != expected) or shape[:2] != grid[:2]:
                    raise UserError(f"{path}: a label frame of shape {shape}; expected "
                                    f"{expected or grid[:2] + ('C',)} as the frames")

    def read(self, index: int, start: int, stop: int) -> dict[str, np.ndarray]:
        extra = self.data.target_shift if self.labels is None else 0
        x = as_float32(str(self.inputs[index][start]), "frames", self._stack(self.inputs[index][start:stop + extra]))
        if self.labels is None:
            return {"X": x[:len(x) - extra], "Y": x[extra:].copy()}
        y = np.stack([read_frame(p) for p in self.labels[index][start:stop]])
        if self.data.task == "regression":
            return {"X": x, "Y": (y if y.ndim == 4 else y[..., None]).astype(np.float32)}
        return {"X": x, "Y": integer_labels(str(self.labels[index][start]), y)}

    @staticmethod
    def _stack(paths: list[Path]) -> np.ndarray:
        frames = np.stack([read_frame(p) for p in paths])
        return frames if frames.ndim == 4 else frames[..., None]
