"""Evaluate a checkpoint of any phase: the full metric suite on one split, with pictures.

    python evaluate.py --config config.yaml --ckpt runs/joint/best.pt
    python evaluate.py --ckpt runs/base_convlstm/best.pt --split val      # + pgm_params.pkl beside it
    python evaluate.py --ckpt runs/base_convlstm/best.pt --pgm runs/other/pgm_params.pkl --out runs/eval

Reports the unaries alone and, when there is a PGM (in the checkpoint, beside it,
or --pgm), after it: accuracy, per-class and macro precision/recall/F1, mIoU,
AUROC, KL, NLL, ECE/MCE with the reliability curve, boundary F1 and flicker
(regression: RMSE, MAE, R2, OpenSTL per-frame MSE/MAE). The PGM is the final
predictor only when it beats the unaries on val (evaluation.use_pgm: auto |
always | never). The final predictor is also calibrated on val
(evaluation.calibration) to show ECE before and after.
Parameter count, latency per window and peak memory are measured too.

Writes into --out (default: the checkpoint's run folder) the evaluate_<split>
section of metrics.json and plots/: confusion_<split>.png, reliability_<split>.png,
per_class_f1_<split>.png, learning_curve.png and, with evaluation.thresholds,
verification_<split>.png (CSI and FSS against lead time).
"""

from __future__ import annotations

import logging

from regimen.core import cli
from regimen.core.config_file import load_config
from regimen.evaluate.evaluation import evaluate

log = logging.getLogger("evaluate")


def main(argv=None) -> None:
    parser = cli.make_parser(__doc__)
    parser.add_argument("--ckpt", required=True, type=cli.path_arg, metavar="PATH",
                        help="ckpt.pt or best.pt of phase 1 or 3")
    parser.add_argument("--split", default=None, help="train, val or test (default: evaluation.split)")
    parser.add_argument("--pgm", type=cli.path_arg, metavar="PATH", help="pgm_params.pkl (default: beside --ckpt)")
    parser.add_argument("--out", type=cli.path_arg, metavar="FOLDER", help="where metrics.json and plots/ go")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = load_config(args.config, args.overrides)
    cli.apply_machine(config)
    result = evaluate(config, args.ckpt, args.split or config.evaluation.split, args.out, args.pgm)
    metric = result["metric"]
    for name in ("unary", "pgm"):
        if name in result:
            line = f"{result['split']} {name}{' (final)' if name == result['final'] else ''}: " \
                   f"{metric} {result[name][metric]:.4f}"
            if "calibration" in result[name]:
                line += (f", ECE {result[name]['calibration']['ece']:.4f}, boundary F1 "
                         f"{result[name]['boundary']['f1']:.4f}, flicker {result[name]['temporal']['flicker']:.4f}")
            log.info(line)
            for threshold, scores in result[name].get("verification", {}).get("by_threshold", {}).items():
                log.info("  >= %s: CSI %s, POD %s, FAR %s, HSS %s, FSS %s", threshold,
                         *(_score(scores[key]) for key in ("csi", "pod", "far", "hss")),
                         ", ".join(f"{_score(v)} ({scale} px)" for scale, v in scores["fss"].items()))
    for name, scores in (result.get("baselines") or {}).items():
        log.info("%s baseline %s: accuracy %.4f, macro F1 %.4f", result["split"], name, scores["accuracy"],
                 scores["macro_f1"])
    if "calibrated" in result:
        log.info("calibrated (%s, fitted on val): ECE %.4f", result["calibrated"]["method"],
                 result["calibrated"]["calibration"]["ece"])
    log.info("plots: %s", ", ".join(result["plots"]))


def _score(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    cli.run(main)
