"""The better of several evaluated checkpoints on a split: by the main metric of evaluate.py's final
predictor there (mIoU, accuracy or RMSE), as the `evaluate_<split>` section of the `metrics.json`
beside each checkpoint records it."""

from __future__ import annotations

import logging
from pathlib import Path

from regimen.core import files, runs
from regimen.core.errors import UserError
from regimen.scores.metrics import MAIN_METRIC

log = logging.getLogger(__name__)


def evaluated_metric(checkpoint: Path, split: str) -> tuple[str, str, float]:
    """The task, the main metric's name and its value for the final predictor of `checkpoint` on `split`."""
    metrics_path = runs.RunFolder(Path(checkpoint).parent).metrics
    again = f"run evaluate.py --ckpt {checkpoint} --split {split} first"
    if not metrics_path.is_file():
        raise UserError(f"{checkpoint}: no {metrics_path.name} beside it; {again}")
    metrics = files.read_json(metrics_path, "evaluate.py")
    section = metrics.get(f"evaluate_{split}") if isinstance(metrics, dict) else None
    if not isinstance(section, dict) or section.get("final") not in section:
        raise UserError(f"{metrics_path}: no evaluate_{split} section; {again}")
    name = MAIN_METRIC[section["task"]][0]
    return section["task"], name, float(section[section["final"]][name])


def better_checkpoint(checkpoints: list[Path], split: str) -> Path:
    """The checkpoint whose final predictor scores best on `split` (the first of equals)."""
    scored = [(Path(ckpt), *evaluated_metric(ckpt, split)) for ckpt in checkpoints]
    tasks = {task for _, task, _, _ in scored}
    if len(tasks) > 1:
        raise UserError(f"the checkpoints were evaluated on different tasks ({', '.join(sorted(tasks))}); "
                        "compare checkpoints of one task")
    higher = MAIN_METRIC[tasks.pop()][1]
    best = max(scored, key=lambda row: row[3] if higher else -row[3])
    for ckpt, _, name, value in scored:
        log.info("%s: %s %s %.4f%s", ckpt, split, name, value, "  <- the better" if ckpt == best[0] else "")
    return best[0]
