"""Phase 2: fit the PGM (model.pgm.type) on the ConvLSTM's saved unaries, network frozen.

    python fit_pgm.py --config config.yaml --features runs/base_convlstm/features.pt
    python fit_pgm.py --features runs/base_convlstm/features.pt --set model.pgm.type=chain_crf
    python fit_pgm.py --set data.dataset=regimes --set data.task=tagging --set model.pgm.type=hmm \\
        --features runs/regimes/features.pt

crf: pairwise, temporal (and, with compatibility: learned, label-pair) weights
by minimising the NLL of the mean-field marginals plus an L2 prior (MAP).
hmm: supervised counts with Dirichlet pseudo-counts, or Baum-Welch with fit: em.
chain_crf: transitions by gradient maximum likelihood. Segmentation uses the
CRF or every pixel's temporal chain; tagging uses the HMM or the chain CRF.

Writes into --save (default: the folder of the features file): pgm_params.pkl
and the fit_pgm section of metrics.json (val and test metric before and after
the PGM, with provenance). A PGM of another type or other settings already
there is replaced only with --overwrite: give each PGM you try its own --save
(then --pgm FOLDER/pgm_params.pkl in train_joint.py, evaluate.py, export.py).
When the PGM does not beat the unaries on val it says so; evaluate.py and
export.py then use the unaries alone (evaluation.use_pgm: auto).
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.train.phases import fit_structure

log = logging.getLogger("fit_pgm")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--features", required=True, type=cli.path_arg, metavar="PATH",
                        help="features.pt written by train_convlstm.py")
    parser.add_argument("--save", default=None, type=cli.path_arg, metavar="FOLDER",
                        help="folder for pgm_params.pkl and metrics.json (default: the features' folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a PGM of another type or other settings already in the folder")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    metrics = fit_structure(config, args.features, args.save, args.overwrite)
    metric = metrics["metric"]
    for split in ("val", "test"):
        log.info("%s %s: unaries %.4f -> %s %.4f (%+.2f points)", split, metric,
                 metrics[split]["unary"][metric], metrics["pgm"], metrics[split]["pgm"][metric],
                 100 * metrics["gain"][split])


if __name__ == "__main__":
    cli.run(main)
