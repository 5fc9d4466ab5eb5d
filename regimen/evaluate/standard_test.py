"""Moving MNIST's standard test file scored by an `mmnist` checkpoint, as the published tables are.

`mnist_test_seq.npy` holds 10,000 sequences of 20 frames, uint8, time first:
`(20, 10000, 64, 64)`. Each sequence's first T_in frames (scaled to [0, 1],
then normalised as the checkpoint's training data was) go in, its last T_out
frames are the truth; the model, persistence and extrapolation are scored per
lead time with the forecasting tables' metrics (`regimen.scores.frames`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from regimen.core import files, folders, runs
from regimen.core.config import Config, config_hash
from regimen.core.errors import UserError
from regimen.core.progress import track
from regimen.evaluate.evaluation import load_evaluated
from regimen.evaluate.forecast import ForecastReport
from regimen.train.inference import Outputs
from regimen.train.losses import class_last
from regimen.train.stack import model_input, resolve_device

log = logging.getLogger(__name__)


def read_standard_test(path: Path, frames: int, height: int, width: int) -> np.ndarray:
    """The file's sequences as a read-only view `(T, N, H, W)` uint8, checked against the checkpoint's
    windows: a UserError naming the file and the layout expected."""
    try:
        sequences = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"--file {path}: not a readable .npy file ({error})") from None
    expected = f"uint8 ({frames}, N, {height}, {width}), time first, as mnist_test_seq.npy"
    if sequences.dtype != np.uint8 or sequences.ndim != 4 or sequences.shape[0] != frames \
            or sequences.shape[2:] != (height, width):
        raise UserError(f"--file {path}: {sequences.dtype} {sequences.shape}; expected {expected}")
    return sequences


def as_windows(sequences: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Sequences `first` to `stop` of a time-first file as windows `[n, T, H, W, 1]` in [0, 1]."""
    return (np.asarray(sequences[:, first:stop]).transpose(1, 0, 2, 3)[..., None] / 255.0).astype(np.float32)


@torch.no_grad()
def score_standard_test(config: Config, ckpt: Path, path: Path, out: Optional[Path], limit: Optional[int]) -> dict:
    """The lead-time report (`ForecastReport`) of the file's first `limit` sequences (all: None),
    written as the `standard_test` section of `out`'s metrics.json."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a number of sequences >= 1")
    out = runs.RunFolder(folders.check_output(out or runs.run_folder_of(ckpt).root, runs.RUN, "--out"))
    files.check_metrics(out.metrics)
    _, data, stack = load_evaluated(config, ckpt, None)
    if data.meta["dataset"] != "mmnist" or not data.forecast:
        raise UserError(f"--ckpt {ckpt}: trained on {data.meta['name']}; the standard test file is scored by a "
                        "forecast of data.dataset: mmnist")
    t_in, t_out = data.forecast
    height, width = data.meta["shapes"]["train"]["X"][2:4]
    sequences = read_standard_test(path, t_in + t_out, height, width)
    count = sequences.shape[1] if limit is None else min(limit, sequences.shape[1])
    folders.claim(out.root, "--out")
    device = resolve_device(config.device)
    stack.to(device).eval()
    norm = data.meta["normalisation"]
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    report = ForecastReport(data, config.evaluation, ["unary"])
    for first in track(range(0, count, config.training.batch_size), "standard test", "batches"):
        windows = as_windows(sequences, first, min(count, first + config.training.batch_size))
        x = model_input(torch.from_numpy((windows[:, :t_in] - mean) / std))  # (B, T_in, 1, H, W)
        unaries = stack.unaries(x.to(device)).cpu()
        truth = torch.from_numpy(windows[:, t_in:])
        batch = Outputs(np.arange(first, first + len(x)), unaries, truth, x=x,
                        last=torch.from_numpy(windows[:, t_in - 1:t_in]))
        report.add(batch, {"unary": class_last(unaries).numpy()})
    result = {"file": str(path), "sequences": count, "checkpoint": str(ckpt), **report.result(),
              "config_hash": config_hash(config)}
    files.update_metrics(out.metrics, "standard_test", result)
    return result
