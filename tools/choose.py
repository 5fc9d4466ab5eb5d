"""Which of several evaluated checkpoints is better on a split, by the main metric of evaluate.py's
final predictor (mIoU, accuracy or RMSE); prints that checkpoint's path.

    python evaluate.py --config config.yaml --ckpt runs/joint/best.pt --split val
    python tools/choose.py --split val runs/joint/best.pt runs/evo_search/best/ckpt.pt

Reads the evaluate_<split> section of the metrics.json beside each checkpoint (a search's best/
has its trial's evaluate_val), and logs each figure. pipeline.sh exports the checkpoint it names.
"""

from __future__ import annotations

import argparse

from regimen.core import cli, runs
from regimen.evaluate.choice import better_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=cli.path_arg, metavar="CKPT", help="evaluated checkpoints")
    parser.add_argument("--split", default="val", choices=runs.SPLITS, help="the split to compare on (default: val)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    print(better_checkpoint(args.checkpoints, args.split))


if __name__ == "__main__":
    cli.run(main)
