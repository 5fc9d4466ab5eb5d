"""Pictures of a processed split: input frames and labels side by side (and a model's predictions), PNG grid and GIF.

    python tools/visualize.py --config config.yaml
    python tools/visualize.py --config config.yaml --split val --count 4 --out runs/visualize
    python tools/visualize.py --split test --ckpt runs/joint/best.pt

Reads data/processed/<name>/ (run tools/preprocess.py first) and writes
<out>/<name>_<split>.png and .gif, with a colour legend for the classes
(non-grid data [N, T, F]: the PNG only, every feature against time). With
--ckpt it adds rows of predicted labels (through the checkpoint's PGM, or the
pgm_params.pkl beside it) and per-pixel confidence, to <name>_<split>_predicted.*.
"""

from __future__ import annotations

import logging

from regimen.core import cli, folders, runs
from regimen.core.config_file import load_config
from regimen.data.processed import processed_folder
from regimen.evaluate.evaluation import window_predictor
from regimen.evaluate.plots import visualize_split

log = logging.getLogger("visualize")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--split", default="train", choices=runs.SPLITS, help="which split (default: train)")
    parser.add_argument("--count", type=int, default=3, help="sequences to show (default: 3)")
    parser.add_argument("--out", default="runs/visualize", type=cli.path_arg, help="output folder (default: runs/visualize)")
    parser.add_argument("--ckpt", type=cli.path_arg, metavar="PATH", help="also draw this checkpoint's predictions")
    args = parser.parse_args(argv)
    cli.setup_logging()
    if args.count < 1:
        raise cli.UserError(f"--count {args.count}: must be >= 1")
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    folders.claim(folders.check_output(args.out, runs.PICTURES, "--out"), "--out")
    folder = processed_folder(config.data)
    predict = window_predictor(config, args.ckpt) if args.ckpt else None
    written = visualize_split(folder, args.split, args.count, args.out, predict)
    log.info("wrote %s", " and ".join(map(str, written)))


if __name__ == "__main__":
    cli.run(main)
