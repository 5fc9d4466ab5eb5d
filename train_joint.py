"""Phase 3: train the ConvLSTM and the PGM jointly, from a phase-1 checkpoint.

    python train_joint.py --config config.yaml --resume runs/base_convlstm/ckpt.pt
    python train_joint.py --resume runs/base_convlstm/ckpt.pt --set training.joint.mode=end_to_end \\
        --save runs/joint_e2e
    python train_joint.py --resume runs/joint/ckpt.pt        # continue an interrupted joint run
    torchrun --nproc_per_node 8 train_joint.py --resume runs/final/ckpt.pt --save runs/final_joint

alternating: each epoch fine-tunes the network with the PGM fixed, then refits
the PGM with the network fixed. end_to_end: back-propagates through the unrolled
mean-field iterations (crf) or the forward algorithm (chain_crf, hmm) into both.
Loss: alpha * unary + beta * structured NLL + gamma * consistency (loss.*).
The PGM starts from phase 2's pgm_params.pkl next to the checkpoint when it was
fitted with the same settings (or from --pgm). Epoch 0 is the starting point,
so the best model is never worse on validation than phase 2.

Writes into --save (default: runs/joint, or the resumed joint run's folder):
ckpt.pt and best.pt holding network and PGM, pgm_params.pkl, history.jsonl,
learning_curve.png, log.txt, config.yaml and the train_joint section of metrics.json.
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.train.phases import train_joint

log = logging.getLogger("train_joint")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--resume", required=True, type=cli.path_arg, metavar="CKPT",
                        help="a phase-1 ckpt.pt/best.pt to start from, or a joint ckpt.pt to continue")
    parser.add_argument("--pgm", default=None, type=cli.path_arg, metavar="PATH",
                        help="pgm_params.pkl to start the PGM from (default: the one next to --resume)")
    parser.add_argument("--save", type=cli.path_arg, metavar="FOLDER", help="run folder (default: runs/joint)")
    parser.add_argument("--overwrite", action="store_true", help="start again in a folder that holds a run")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    metrics = train_joint(config, args.resume, args.pgm, args.save, args.overwrite)
    if metrics is None:  # a torchrun process other than rank 0: it trained, rank 0 reports
        return
    metric = metrics["metric"]
    log.info("test %s: unaries %.4f, with the %s %.4f (%s)", metric, metrics["test"]["unary"][metric],
             metrics["pgm"], metrics["test"]["pgm"][metric], metrics["mode"])


if __name__ == "__main__":
    cli.run(main)
