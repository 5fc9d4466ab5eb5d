"""Phase 5: calibrate a checkpoint on val and export a verifiable bundle; or verify one.

    python export.py --config config.yaml --ckpt runs/joint/best.pt --out artifacts/
    python export.py --verify artifacts/

Calibration (evaluation.calibration, fitted on the validation split): temperature
scaling, isotonic regression, or auto (the lower val ECE). The bundle in --out:
model.pt (weights, what rebuilds the network, input preparation), pgm_params.pkl
(when there is a PGM and it beats the unaries on val, see evaluation.use_pgm),
config.yaml, calibration.npz, metrics.json (test metrics before and after
calibration, provenance) and MANIFEST.json (sha256 of each file, config hash,
data version, git commit, library versions). It is written whole
or not at all; a folder that holds files is replaced only with --overwrite.

--verify checks every hash, then loads the bundle. In Python:
    from regimen.evaluate.bundle import predict; predict("artifacts/", X)
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.evaluate.bundle import export, load_bundle, verify

log = logging.getLogger("export")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--ckpt", type=cli.path_arg, metavar="PATH", help="ckpt.pt or best.pt of phase 1 or 3")
    parser.add_argument("--out", default="artifacts", type=cli.path_arg, metavar="FOLDER",
                        help="bundle folder (default: artifacts)")
    parser.add_argument("--pgm", type=cli.path_arg, metavar="PATH", help="pgm_params.pkl (default: beside --ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace the bundle already in --out")
    parser.add_argument("--verify", type=cli.path_arg, metavar="FOLDER", help="check a bundle's hashes and that it loads")
    args = parser.parse_args(argv)
    cli.setup_logging()
    if args.verify:
        manifest = verify(args.verify)
        load_bundle(args.verify, check=False)
        log.info("%s: %d files match MANIFEST.json and the bundle loads (data %s, commit %s)", args.verify,
                 len(manifest["files"]), manifest["data_version"][:12], manifest["git_commit"])
        return
    if not args.ckpt:
        raise cli.UserError("export.py: give --ckpt PATH to export, or --verify FOLDER")
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    result = export(config, args.ckpt, args.out, args.overwrite, args.pgm)
    test = result["test"]
    if "calibrated" in test:
        log.info("test %s %.4f; ECE %.4f before, %.4f after %s calibration", result["metric"],
                 test["uncalibrated"][result["metric"]], test["uncalibrated"]["calibration"]["ece"],
                 test["calibrated"]["calibration"]["ece"], test["calibrated"]["method"])
    else:
        log.info("test %s %.4f", result["metric"], test["uncalibrated"][result["metric"]])
    log.info("bundle written to %s; check it with: python export.py --verify %s", args.out, args.out)


if __name__ == "__main__":
    cli.run(main)
