"""Phase 1's training throughput on one process and data-parallel under torchrun.

    python bench/ddp.py                                  # CPU: 1 and 2 processes (Gloo)
    python bench/ddp.py --device cuda --processes 1 2 4  # GPUs: one process per GPU (NCCL)

It makes a storms dataset (`--sequences` sequences of 24 frames on a `--size`
grid), runs `tools/preprocess.py`, then `train_convlstm.py` for `--epochs`
epochs with the same config and global batch on each process count, as a user
would (`torchrun --standalone --nproc_per_node N`). Each epoch's `train_seconds`
in history.jsonl times its training steps alone (not validation); the table
gives training windows per second (median of the epochs after the first),
per process and overall, the ratio to one process, and the distance of the
final weights from the one-process run's (the same steps, up to rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def config_for(work: Path, args: argparse.Namespace) -> Path:
    raw = {"device": args.device, "data": {"root": str(work / "data"), "T_window": 8, "stride": 4,
                                           "generator": {"num_sequences": args.sequences, "sequence_length": 24,
                                                         "height": args.size, "width": args.size}},
           "model": {"convlstm": {"hidden_sizes": [16, 16]}},
           "training": {"epochs": args.epochs, "batch_size": args.batch, "mixed_precision": args.device != "cpu",
                        "early_stopping_patience": args.epochs}}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, save: Path, processes: int) -> dict:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [sys.executable])
    subprocess.run([*launch, str(ROOT / "train_convlstm.py"), "--config", str(config), "--save", str(save),
                    "--overwrite"], check=True, capture_output=True)
    history = [json.loads(line) for line in (save / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((save / "metrics.json").read_text())["train_convlstm"]
    windows = metrics["provenance"]["split_sizes"]["train"]["windows"]
    rates = [windows / record["train_seconds"] for record in history[1:] or history]
    return {"rate": statistics.median(rates), "threads": metrics["provenance"]["threads"],
            "devices": metrics["provenance"]["distributed"]["devices"],
            "weights": torch.load(save / "ckpt.pt", weights_only=True)["net_state"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="the global batch")
    parser.add_argument("--size", type=int, default=64, help="grid side")
    parser.add_argument("--sequences", type=int, default=40)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_ddp")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = config_for(args.work, args)
    subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess.py"), "--config", str(config)], check=True,
                   capture_output=True)

    results = {n: train(config, args.work / f"run_{n}", n) for n in args.processes}
    first = results[args.processes[0]]
    print(f"storms {args.size}x{args.size}, global batch {args.batch}, {args.epochs} epochs, device {args.device}")
    print(f"{'processes':>9} {'threads/proc':>12} {'windows/s':>10} {'per process':>12} {'ratio':>6} "
          f"{'max |w - w1|':>13}  devices")
    for n, result in results.items():
        distance = max(float((result["weights"][k].float() - first["weights"][k].float()).abs().max())
                       for k in first["weights"])
        print(f"{n:>9} {result['threads']:>12} {result['rate']:>10.2f} {result['rate'] / n:>12.2f} "
              f"{result['rate'] / first['rate']:>6.2f} {distance:>13.2e}  {', '.join(result['devices'])}")


if __name__ == "__main__":
    main()
