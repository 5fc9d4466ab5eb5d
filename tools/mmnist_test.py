"""Score an mmnist forecast checkpoint on Moving MNIST's standard test file, as published tables are.

    python tools/mmnist_test.py --config mmnist.yaml --ckpt runs/mmnist/best.pt --file mnist_test_seq.npy

The file is uint8 (20, 10000, 64, 64), time first. Each sequence's first 10 frames go in, its last
10 are the truth: the model, persistence and extrapolation get MSE and MAE per frame (OpenSTL's:
summed over the frame's pixels), PSNR and SSIM per lead time and averaged. Writes the
standard_test section of metrics.json in --out (default: the checkpoint's run folder).
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.evaluate.standard_test import score_standard_test

log = logging.getLogger("mmnist_test")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--ckpt", required=True, type=cli.path_arg, metavar="PATH", help="an mmnist checkpoint")
    parser.add_argument("--file", required=True, type=cli.path_arg, metavar="PATH", help="mnist_test_seq.npy")
    parser.add_argument("--limit", type=int, metavar="N", help="score the first N sequences only")
    parser.add_argument("--out", type=cli.path_arg, metavar="FOLDER", help="where metrics.json goes")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    result = score_standard_test(config, args.ckpt, args.file, args.out, args.limit)
    for name, scores in result["scores"].items():
        log.info("%-13s %s", name, ", ".join(f"{key} {value:.4f}" for key, value in scores["mean"].items()
                                             if key in ("mse_per_frame", "mae_per_frame", "ssim", "psnr")))


if __name__ == "__main__":
    cli.run(main)
