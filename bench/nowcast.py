"""The built-in storms as a nowcast: the ConvLSTM (encoder-forecaster), the ConvLSTM with the CRF,
persistence and extrapolation, CSI at each class threshold per lead time and averaged over lead
times, on the test split.

    python bench/nowcast.py [--out runs/bench_nowcast] [--set KEY=VALUE ...]
    python bench/nowcast.py --report runs/bench_nowcast/nowcast/metrics.json   # the table of a run made before

Runs phases 0-2 and evaluate.py as a user does, with the settings below (any `--set` on top), and
prints the table from `evaluate_test.forecast` of the run's metrics.json. The baselines hold (and
advect) the true classes of the last observed frame, which the network never sees: it reads the
noisy reflectivity only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "data.forecast.input_frames=6", "data.forecast.output_frames=8", "data.generator.num_sequences=512",
    "model.convlstm.hidden_sizes=[32,32]", "loss.unary=kl", "training.epochs=14",
    "training.early_stopping_patience=20",
]
FORECASTERS = {"unary": "ConvLSTM", "pgm": "ConvLSTM + CRF", "persistence": "persistence",
               "extrapolation": "extrapolation (pysteps)"}


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(PROJECT / script), *args], check=True)


def nowcast(out: Path, settings: list[str]) -> dict:
    """Phases 0-2 and the test evaluation into `out`; returns `evaluate_test`."""
    config = ["--config", str(PROJECT / "config.yaml"), "--set", f"data.root={out / 'data'}",
              *[a for s in settings for a in ("--set", s)]]
    run("tools/preprocess.py", *config)
    run("train_convlstm.py", *config, "--save", str(out / "nowcast"), "--overwrite")
    run("fit_pgm.py", *config, "--features", str(out / "nowcast" / "features.pt"))
    run("evaluate.py", *config, "--ckpt", str(out / "nowcast" / "best.pt"))
    return json.loads((out / "nowcast" / "metrics.json").read_text())["evaluate_test"]


def table(result: dict) -> str:
    """CSI per threshold: a row per forecaster, a column per lead time and the mean."""
    report = result["forecast"]
    leads = report["lead_times"]["steps"]
    lines = []
    for threshold in map(str, report["thresholds"]):
        lines += ["", f"CSI of class >= {threshold} (test split, {report['input_frames']} frames in)", "",
                  "| forecaster | " + " | ".join(f"+{t}" for t in leads) + " | mean |",
                  "|---|" + "---|" * (len(leads) + 1)]
        for name, label in FORECASTERS.items():
            if name not in report["scores"]:
                continue
            csi = report["scores"][name]["verification"]["by_threshold"][threshold]["lead_time"]["csi"]
            mean = report["scores"][name]["mean"]["csi"][threshold]
            lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in csi) + f" | **{mean:.3f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "runs" / "bench_nowcast")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--report", type=Path, metavar="METRICS", help="print the table of this metrics.json")
    args = parser.parse_args()
    result = json.loads(args.report.read_text())["evaluate_test"] if args.report else nowcast(args.out,
                                                                                             SETTINGS + args.set)
    print(table(result))


if __name__ == "__main__":
    main()
