"""Epoch time of phase 1 alone and beside one busy neighbour process, for several thread settings.

    python bench/threads.py              # 3 repeats per cell (about 4 minutes on 2 cores)
    python bench/threads.py --repeats 1

A busy neighbour (a process spinning on one core) stands for a browser on a laptop or another job
on a shared node. Each cell is the median over repeats of the median epoch time (history.jsonl) of
a 3-epoch `train_convlstm.py` run on the default storms data; ratios are to the same setting alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (--set overrides, extra environment)
    "our choice (threads: null)": ([], {}),
    "threads: 1": (["--set", "threads=1"], {}),
    "our choice, OMP_WAIT_POLICY=PASSIVE": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def epoch_seconds(folder: Path, overrides: list[str], env: dict, run: int) -> float:
    save = folder / f"run{run}"
    command = [sys.executable, str(ROOT / "train_convlstm.py"), "--set", f"data.root={folder / 'data'}",
               "--set", "training.epochs=3", "--save", str(save), *overrides]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, **env}, cwd=ROOT)
    history = [json.loads(line) for line in (save / "history.jsonl").read_text().splitlines()]
    return statistics.median(record["seconds"] for record in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "tools/preprocess.py"), "--set", f"data.root={folder / 'data'}"],
                       check=True, capture_output=True, cwd=ROOT)
        run, rows = 0, []
        for name, (overrides, env) in SETTINGS.items():
            cells = {}
            for neighbour in (False, True):
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
                try:
                    times = []
                    for _ in range(args.repeats):
                        run += 1
                        times.append(epoch_seconds(folder, overrides, env, run))
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                cells[neighbour] = statistics.median(times)
            rows.append((name, cells[False], cells[True]))
    print(f"{'setting':40s} {'alone s':>9s} {'+ neighbour s':>14s} {'ratio':>7s}")
    for name, alone, busy in rows:
        print(f"{name:40s} {alone:9.2f} {busy:14.2f} {busy / alone:7.2f}")


if __name__ == "__main__":
    main()
