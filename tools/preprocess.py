"""Phase 0: generate or read the dataset, split it by sequence, normalise, cut windows.

    python tools/preprocess.py --config config.yaml
    python tools/preprocess.py --config config.yaml --set data.dataset=digits
    python tools/preprocess.py --set data.dataset=npz --set data.path=data/raw/mine.npz

Writes data/processed/<name>/{train,val,test}.npz and meta.json (shapes, classes,
normalisation, split sizes, sha256 of each split = the data version).
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.data.preprocess import preprocess

log = logging.getLogger("preprocess")


def main(argv=None) -> None:
    args = cli.make_parser(__doc__).parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    folder, meta = preprocess(config)
    for split, size in meta["splits"].items():
        log.info("%-5s %3d sequences -> %4d windows, X %s", split, size["sequences"],
                 size["windows"], meta["shapes"][split]["X"])
    if meta["baselines"]:
        b = meta["baselines"]
        log.info("storms baseline mIoU: per-frame threshold %.2f, smoothed threshold %.2f, "
                 "gap %.2f points", b["threshold_per_frame_miou"], b["threshold_smoothed_miou"],
                 b["smoothing_gap_points"])
    log.info("data version %s written to %s", meta["data_version"][:12], folder)


if __name__ == "__main__":
    cli.run(main)
