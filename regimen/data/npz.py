"""Your own arrays: `X`, `Y` (and optional `P`, `class_names`, `channel_names`) of an npz file,
read whole and checked, each problem one line naming the file, the array and what is expected."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from regimen.core.config import DataConfig
from regimen.core.errors import UserError
from regimen.core.machine import require_memory
from regimen.data.datasets import Dataset
from regimen.data.values import as_float32

log = logging.getLogger(__name__)


def load_npz(data: DataConfig) -> Dataset:
    """Read `X`, `Y` (and optional `P`) from `data.path` and validate them.

    `X` is `[N, T, H, W, C]` (or `[N, T, C, H, W]` with `data.format: NTCHW`),
    or non-grid features `[N, T, F]`, taken as a 1 x 1 grid with F channels.
    Optional string arrays `class_names` `[K]` and `channel_names` `[C]` name them.
    """
    name = str(data.path)
    arrays = _read_npz(Path(data.path))
    x, y, p = arrays["X"], arrays["Y"], arrays.get("P")
    hint = _layout_hint(x, data)
    non_grid = x.ndim == 3
    x = _grid_features(name, "X", x, data.format)
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise UserError(f"{name}: X has dtype {x.dtype}; expected real numbers")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{name}: X has shape {arrays['X'].shape}, {x.shape[0]} sequences of {x.shape[1]} frames; "
                        "expected at least one sequence and frame")
    x = as_float32(name, "X", x)
    _require_finite(name, "X", x)

    if data.task == "regression":
        y = _grid_features(name, "Y", y, data.format)
        if y.shape[:4] != x.shape[:4]:
            raise UserError(f"{name}: Y has shape {y.shape}; expected [N, T, H, W, C'] with "
                            f"N, T, H, W = {x.shape[:4]} as in X")
        y = as_float32(name, "Y", y)
        _require_finite(name, "Y", y)
        num_classes, names = None, []
    else:
        y, num_classes, names, p = _class_labels(name, arrays, x.shape, data, hint)

    channels = _names(name, arrays, "channel_names", x.shape[-1], "channel") or [
        f"channel_{i}" for i in range(x.shape[-1])]
    if hint:
        log.warning("%s: %s", name, hint)
    if non_grid and data.task == "segmentation":
        log.warning("%s: non-grid X %s: each frame is a 1 x 1 grid with one label; data.task: tagging says "
                    "so and reports frame accuracy and macro F1", name, arrays["X"].shape)
    return Dataset(X=x, Y=y, P=p, task=data.task, num_classes=num_classes, class_names=names,
                   channel_names=channels,
                   params={"dataset": "npz", "path": name, "format": data.format})


def _class_labels(name: str, arrays: dict[str, np.ndarray], shape: tuple, data: DataConfig, hint: str
                  ) -> tuple[np.ndarray, int, list[str], Optional[np.ndarray]]:
    """Segmentation or tagging: the labels `Y` of inputs of `shape` `[N, T, H, W, C]`, checked, with
    the number of classes, their names and the optional soft targets `P`."""
    n, t, h, w, _ = shape
    y, p = arrays["Y"], arrays.get("P")
    expected = (n, t) if data.task == "tagging" else (n, t, h, w)
    if data.task == "segmentation" and h == w == 1 and y.shape == (n, t):
        y = y[:, :, None, None]
    if y.shape != expected:
        layout = "[N, T]" if data.task == "tagging" else "[N, T, H, W]"
        raise UserError(f"{name}: Y has shape {y.shape}; {data.task} expects {layout} = "
                        f"{expected} to match X {arrays['X'].shape}" + (f" ({hint})" if hint else ""))
    y = _integer_labels(name, y)
    num_classes = data.num_classes or int(y.max()) + 1
    # The unaries of every window hold K floats per node (each frame sits in T_window / stride windows).
    require_memory(4.0 * y.size * num_classes * max(1.0, data.window / data.stride),
                   f"{name}: Y's largest label {int(y.max())} means {num_classes} classes, and their unaries")
    if num_classes < 2:
        raise UserError(f"{name}: Y holds a single class; set data.num_classes (>= 2)")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{name}: Y has label {int(y[where])} at index {where}; expected "
                        f"labels in [0, {num_classes}) (data.num_classes = {data.num_classes})")
    names = _names(name, arrays, "class_names", num_classes, "class") or [str(i) for i in range(num_classes)]
    if p is not None:
        p = _validate_soft_targets(name, p, y.shape, num_classes)
    return y, num_classes, names, p


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the user's npz file, which must hold X and Y."""
    name = str(path)
    if path.is_dir():
        raise UserError(f"data.path: {name} is a folder; expected an .npz file with X and Y")
    if not path.is_file():
        raise UserError(f"data.path: {name} not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # numpy raises several kinds for a bad archive
        raise UserError(f"{name}: not a readable .npz file ({type(error).__name__}: {error})") from None
    for key in ("X", "Y"):
        if key not in arrays:
            raise UserError(f"{name}: no array '{key}' (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays


def _names(name: str, arrays: dict, key: str, count: int, what: str) -> Optional[list[str]]:
    """The npz's optional names of its classes or channels, one distinct string each."""
    if key not in arrays:
        return None
    names = arrays[key]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) != count:
        raise UserError(f"{name}: {key} has shape {names.shape} and dtype {names.dtype}; expected {count} "
                        f"strings, one per {what}")
    names = [str(n) for n in names]
    if len(set(names)) != len(names) or "" in names:
        raise UserError(f"{name}: {key} holds {names}; expected distinct, non-empty names")
    return names


def _layout_hint(x: np.ndarray, data: DataConfig) -> str:
    """For an X that looks channels-first but is read as NTHWC, what it is taken for ("" otherwise)."""
    if x.ndim == 5 and data.format == "NTHWC" and x.shape[2] < x.shape[4] and x.shape[2] <= 16:
        return (f"X {x.shape} is read as [N, T, H, W, C]: a {x.shape[2]} x {x.shape[3]} grid with {x.shape[4]} "
                "channels; if it is [N, T, C, H, W], set data.format: NTCHW")
    return ""


def _grid_features(name: str, key: str, a: np.ndarray, layout: str) -> np.ndarray:
    if a.ndim == 3:  # non-grid features [N, T, F]: a 1 x 1 grid with F channels
        return a[:, :, None, None, :]
    if a.ndim != 5:
        raise UserError(f"{name}: {key} has rank {a.ndim} (shape {a.shape}); expected rank 5 "
                        f"[N, T, H, W, C] ({layout}) or rank 3 [N, T, F]")
    return a.transpose(0, 1, 3, 4, 2) if layout == "NTCHW" else a


def _require_finite(name: str, key: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{name}: {key} has {int(bad.sum())} NaN/Inf value(s), the first at index {where}")


def _integer_labels(name: str, y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise UserError(f"{name}: Y has dtype {y.dtype} with non-integer values; expected integer class labels")


def _validate_soft_targets(name: str, p: np.ndarray, label_shape: tuple, k: int) -> np.ndarray:
    if p.shape != (*label_shape, k):
        raise UserError(f"{name}: P has shape {p.shape}; expected Y's shape plus K: {(*label_shape, k)}")
    p = as_float32(name, "P", p)
    _require_finite(name, "P", p)
    if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
        raise UserError(f"{name}: P must hold class distributions (non-negative, summing to 1 over K)")
    return p
