"""A search trial's fixed cost: its phases in one process (what evolve.py runs) against one process
per phase script (what a user typing the commands runs, and what trials did before).

    python bench/trial_cost.py [--repeats 3] [--out runs/trial_cost]

A trial on a tiny grid (one epoch), so the start-up of Python, torch and CUDA
dominates; prints the median seconds of each way and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from regimen.search import trials

TINY = {"data": {"generator": {"num_sequences": 10, "sequence_length": 10, "height": 12, "width": 12},
                 "T_window": 4, "stride": 3},
        "model": {"convlstm": {"hidden_sizes": [6, 6]}, "pgm": {"fit_steps": 20}},
        "training": {"epochs": 1}, "threads": 1}


def one_process(folder: Path, config: str) -> float:
    spec = trials.TrialSpec(str(folder), "bench", config, has_pgm=True, joint=False, objectives=["metric"],
                            timeout_s=600, retries=0)
    started = time.perf_counter()
    result = trials.run_trial(spec)
    assert result["status"] == "ok", result
    return time.perf_counter() - started


def process_per_phase(folder: Path, config: str) -> float:
    folder.mkdir(parents=True)
    (folder / "trial.yaml").write_text(config)
    started = time.perf_counter()
    for phase, command in trials.trial_commands(folder, has_pgm=True, joint=False):
        with open(folder / f"{phase}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/trial_cost"))
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out}: already exists; name a new folder (the benchmark writes its trials there)")
    args.out.mkdir(parents=True)
    raw = dict(TINY, data=dict(TINY["data"], root=str((args.out / "data").resolve())))
    config = yaml.safe_dump(raw)
    (args.out / "config.yaml").write_text(config)
    subprocess.run([sys.executable, str(trials.PROJECT / "tools/preprocess.py"), "--config",
                    str(args.out / "config.yaml")], check=True, capture_output=True)
    ways = {"one process per phase": process_per_phase, "one process per trial": one_process}
    seconds = {name: [] for name in ways}
    for repeat in range(args.repeats):
        for name, way in ways.items():
            seconds[name].append(way(args.out / f"{name.replace(' ', '_')}_{repeat}", config))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\n{'trial (3 phases, 1 epoch, 12x12)':<36}{'median s':>10}{'ratio':>8}")
    base = medians["one process per phase"]
    for name, value in medians.items():
        print(f"{name:<36}{value:>10.2f}{value / base:>8.2f}")


if __name__ == "__main__":
    main()
