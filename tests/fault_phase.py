"""A stand-in for every phase script of an evolution trial: fast, deterministic, faulty on purpose.

training.lr 0.002: exits 1; 0.003: hangs; 0.004: reports NaN; 0.005: SIGKILLed (as by the kernel's
out-of-memory killer); anything else: a valid result
whose metric is `(lr + pairwise_weight / 100) * epochs / training.epochs` and latency
`pairwise_weight` (evaluate takes 0.3 s, so a search can be killed mid-generation). Phase 1
counts its epochs as the real one does (`--until-epoch`, `--resume`) in `stand_in_epochs.json`.
Imports nothing heavy: searches over it run in seconds.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

args = sys.argv[1:]
config = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())
lr = config["training"]["lr"]
if lr == 0.002:
    print("injected failure", file=sys.stderr)
    sys.exit(1)
if lr == 0.003:
    time.sleep(120)
if lr == 0.005:
    os.kill(os.getpid(), signal.SIGKILL)
epochs = config["training"]["epochs"]
if "--save" in args and "--features" not in args and not args[args.index("--save") + 1].endswith("joint"):
    run = Path(args[args.index("--save") + 1])  # phase 1
    counted = run / "stand_in_epochs.json"
    before = json.loads(counted.read_text())["epochs"] if "--resume" in args and counted.exists() else 0
    until = int(args[args.index("--until-epoch") + 1]) if "--until-epoch" in args else epochs
    counted.write_text(json.dumps({"epochs": until, "before": before}))
if "--split" in args:  # the evaluate step
    out = Path(args[args.index("--out") + 1])
    time.sleep(0.3)
    trained = json.loads((out / "stand_in_epochs.json").read_text())
    value = float("nan") if lr == 0.004 else (lr + config["model"]["pgm"]["pairwise_weight"] / 100) * (
        trained["epochs"] / epochs)
    final = {"miou": value, "calibration": {"ece": 0.1}, "nll": 1.0, "boundary": {"f1": 0.5},
             "temporal": {"flicker": 0.1}}
    evaluation = {"final": "pgm", "metric": "miou", "task": "segmentation", "pgm": final,
                  "model": {"latency_ms_per_window": config["model"]["pgm"]["pairwise_weight"],
                            "peak_memory_mb": 1.0, "parameters": 10}}
    training = {"epochs_run": trained["epochs"], "epochs_this_run": trained["epochs"] - trained["before"]}
    (out / "metrics.json").write_text(json.dumps({"evaluate_val": evaluation,
                                                  "train_convlstm": {"training": training}}))
