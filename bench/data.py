"""Phase 0 on HDF5 archives of growing size, and the streaming window loader against the in-memory one.

    python bench/data.py                        # archives of 1 and 6 GB under runs/bench_data
    python bench/data.py --sizes-gb 0.5 2 --work /scratch/bench

For each size it writes a synthetic SEVIR-like archive (events of 48 frames of
256 x 256 float32 along N of 500 MB files, next-frame targets), runs
`tools/preprocess.py` and one epoch of `train_convlstm.py` (a one-layer
ConvLSTM; validation, and the predictions of every split into features.pt) on
it as a user would, and prints the wall times, phase 0's throughput (archive MB
per second; it reads the training sequences twice) and each process's peak RSS. Then, on the smallest archive's processed
data, it trains a small ConvLSTM for epochs of batches read through the
DataLoader from disk (0, 1 and 2 workers) and from memory, and prints
windows/s (median of epochs, after one that starts the workers) and the
ratio. Needs the disk space of about twice the largest archive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIDE, EVENTS_PER_FILE = 48, 256, 40  # 12 MB per event, about 500 MB per file


def write_archive(folder: Path, gigabytes: float) -> int:
    """Smooth moving fields, one event after the other; returns the archive's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    events = max(4, round(gigabytes * 2 ** 30 / (FRAMES * SIDE * SIDE * 4)))
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    for first in range(0, events, EVENTS_PER_FILE):
        count = min(EVENTS_PER_FILE, events - first)
        with h5py.File(folder / f"part{first // EVENTS_PER_FILE:03d}.h5", "w") as f:
            vil = f.create_dataset("vil", (count, FRAMES, SIDE, SIDE), dtype=np.float32,
                                   chunks=(1, 1, SIDE, SIDE))
            for n in range(count):
                phase = rng.uniform(0, 2 * np.pi, size=3)
                t = np.arange(FRAMES)[:, None, None]
                field = (np.sin(0.05 * xx + 0.1 * t + phase[0]) * np.cos(0.04 * yy - 0.07 * t + phase[1])
                         + 0.1 * rng.standard_normal((FRAMES, SIDE, SIDE)))
                vil[n] = field.astype(np.float32)
    return sum(p.stat().st_size for p in folder.glob("*.h5"))


def config_for(work: Path, archive: Path) -> Path:
    raw = {"device": "cpu", "data": {"root": str(work / "data"), "dataset": "hdf5", "path": str(archive),
                                     "format": "NTHW", "inputs": "vil", "labels": "next_frame",
                                     "task": "regression", "T_window": 8, "stride": 8},
           "model": {"convlstm": {"num_layers": 1, "hidden_sizes": [4]}}, "training": {"epochs": 1}}
    path = work / f"{archive.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_measured(args: list[str]) -> tuple[float, float]:
    """A script in its own process: (wall seconds, peak RSS in GB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 2 ** 20  # ru_maxrss is in KB on Linux


def training_rate(config: Path, workers: int, in_memory: bool, repeats: int) -> float:
    """Windows per second of epochs of training (a small ConvLSTM, batch 8, AdamW) fed by the loader:
    the median of `repeats` epochs after one that starts the workers."""
    from models.network import ConvLSTMNet
    from regimen.core.config_file import load_config
    from regimen.data.processed import load_task_data
    from regimen.data.windows import ShuffledBatches, WindowDataset, window_loader
    from regimen.train.stack import model_input

    loaded = load_config(config)
    data = load_task_data(loaded.data)
    windows = WindowDataset(data.folder, "train", data.meta, in_memory=in_memory)
    loaded.data.loader.workers = workers
    loader = window_loader(windows, ShuffledBatches(len(windows), 8, torch.Generator().manual_seed(0)),
                           loaded.data.loader)
    torch.manual_seed(0)
    net = ConvLSTMNet(1, [4], 3, "regression", 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    rates = []
    for epoch in range(repeats + 1):
        started = time.perf_counter()
        for batch in loader:
            loss = torch.nn.functional.mse_loss(net(model_input(batch["x"])), model_input(batch["y"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch:  # the first epoch also starts the workers
            rates.append(len(windows) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 6.0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_data")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print("| archive | phase 0 | throughput | peak RSS phase 0 | phase 1 (one epoch) | peak RSS phase 1 |")
    print("|---|---|---|---|---|---|")
    configs = []
    for size in sorted(args.sizes_gb):
        work = args.work / f"{size:g}gb"
        archive = work / "archive"
        total = write_archive(archive, size)
        config = config_for(work, archive)
        configs.append(config)
        seconds, rss = run_measured(["tools/preprocess.py", "--config", str(config)])
        trained, trained_rss = run_measured(["train_convlstm.py", "--config", str(config), "--save", str(work / "run"),
                                             "--overwrite"])
        print(f"| {total / 2 ** 30:.2f} GB | {seconds:.1f} s | {total / 2 ** 20 / seconds:.0f} MB/s | {rss:.2f} GB "
              f"| {trained:.0f} s | {trained_rss:.2f} GB |", flush=True)

    print("\n| training on the smallest archive | windows/s | vs in memory |")
    print("|---|---|---|")
    memory = training_rate(configs[0], 0, True, args.repeats)
    print(f"| in memory, 0 workers | {memory:.1f} | 1.00x |")
    for workers in (0, 1, 2):
        rate = training_rate(configs[0], workers, False, args.repeats)
        print(f"| streamed from disk, {workers} workers | {rate:.1f} | {rate / memory:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
