"""Phase 1: train the ConvLSTM on the unary loss (CE, KL against soft targets, or MSE).

    python train_convlstm.py --config config.yaml --save runs/base_convlstm
    python train_convlstm.py --config config.yaml --save runs/base_convlstm --resume
    python train_convlstm.py --set device=cpu --set training.epochs=2 --save runs/cpu_try
    python train_convlstm.py --config config.yaml --save runs/short --until-epoch 2
    torchrun --nproc_per_node 8 train_convlstm.py --config config.yaml --save runs/final   # every GPU

Writes into --save: ckpt.pt (last epoch, resumable), best.pt (best validation
metric), features.pt (the best model's unaries and labels per split, the input
of fit_pgm.py), history.jsonl, learning_curve.png, log.txt, config.yaml and
metrics.json (val/test metrics with provenance). Killed at any moment, rerun
with --resume: it ends with the weights an uninterrupted run would have (a run
killed before its first checkpoint starts again from its beginning).
--until-epoch N pauses after epoch N of training.epochs (the learning-rate
schedule stays that of training.epochs); --resume --until-epoch M (or no
--until-epoch: to the end) continues as if it had never paused.
--overwrite starts again in a folder that holds a run and nothing else: every
file of the old run is removed first. Under torchrun it trains data-parallel
with training.batch_size as the global batch, and rank 0 writes (README
"Scaling out").
"""

from __future__ import annotations

import logging

from regimen.core import cli, runs
from regimen.core.config_file import load_config
from regimen.train.phases import pretrain

log = logging.getLogger("train_convlstm")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--save", default="runs/base_convlstm", type=cli.path_arg, metavar="FOLDER",
                        help="run folder to write (default: runs/base_convlstm)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, type=cli.path_arg, metavar="CKPT",
                        help="continue from a ckpt.pt (alone: the --save folder's)")
    parser.add_argument("--until-epoch", type=int, metavar="N",
                        help="pause after epoch N of training.epochs (resume continues to the end)")
    parser.add_argument("--overwrite", action="store_true", help="start again in a folder that holds a run")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    resume = None
    if args.resume is not None:
        resume = runs.RunFolder(args.save).checkpoint if args.resume is True else args.resume
    metrics = pretrain(config, args.save, resume, args.overwrite, args.until_epoch)
    if metrics is None:  # a torchrun process other than rank 0: it trained, rank 0 reports
        return
    metric = metrics["metric"]
    log.info("unaries: val %s %.4f, test %s %.4f", metric, metrics["val"][metric], metric,
             metrics["test"][metric])


if __name__ == "__main__":
    cli.run(main)
