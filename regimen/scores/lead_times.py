"""Scores per lead time of a forecast: for each of the T_out frames after the last observed one,
the task's metrics (accuracy and mIoU or macro F1; regression MSE, RMSE and MAE) and, at each
event threshold, the CSI, summed over batches like every other score.

Skill against persistence (`skill`) is what a nowcasting reviewer asks first:
MSE skill `1 - MSE / MSE_persistence` per lead time (and MAE's alike), and the
difference of CSI (and of the label metrics) per threshold.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from regimen.scores.frames import FrameScoreSums
from regimen.scores.metrics import MetricSums
from regimen.scores.verification import VerificationSums


class LeadTimeSums:
    """One forecaster's scores per lead time on fields `[B, T_out, ...]`.

    Args:
        task, num_classes: what the fields hold (see `MetricSums`).
        lead_times: T_out.
        thresholds: event thresholds for the CSI (class labels or the target's units); [] none.
        scales: FSS window sizes.
        frame_scores: also the per-frame video scores (`regimen.scores.frames`: values in [0, 1]).
    """

    def __init__(self, task: str, num_classes: Optional[int], lead_times: int, thresholds: list[float],
                 scales: list[int], frame_scores: bool = False):
        self.task = task
        self.by_lead = [MetricSums(task, num_classes) for _ in range(lead_times)]
        self.verified = VerificationSums(thresholds, scales, lead_times, "lead_time") if thresholds else None
        self.frames = FrameScoreSums(lead_times) if frame_scores else None

    def add(self, truth: np.ndarray, predicted: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """Labels `[B, T_out(, H, W)]` or values `[B, T_out, H, W, C]`; `valid`: the nodes scored."""
        for t, sums in enumerate(self.by_lead):
            sums.add(truth[:, t], predicted[:, t], None if valid is None else valid[:, t])
        if self.verified is not None:  # label fields, or the single regression channel
            fields = (truth, predicted) if self.task != "regression" else (truth[..., 0], predicted[..., 0])
            self.verified.add(*fields, valid)
        if self.frames is not None:
            self.frames.add(truth, predicted)

    def result(self) -> dict:
        """`per_lead`: each score a list over lead times; `mean`: their means over lead times;
        `verification` (with thresholds): `VerificationSums.result`."""
        per = [sums.result() for sums in self.by_lead]
        if self.task == "regression":
            per = [{"mse": scores["rmse"] ** 2, **scores} for scores in per]
        per_lead = {name: [scores[name] for scores in per] for name in per[0]}
        if self.frames is not None:
            per_lead.update(self.frames.result())
        out = {"per_lead": per_lead, "mean": {name: float(np.mean(values)) for name, values in per_lead.items()}}
        if self.verified is not None:
            out["verification"] = self.verified.result()
            out["mean"]["csi"] = {name: _mean(entry["lead_time"]["csi"])
                                  for name, entry in out["verification"]["by_threshold"].items()}
        return out


def skill(scores: dict, persistence: dict) -> dict:
    """A forecaster's skill against persistence, per lead time and averaged over lead times:
    `mse`/`mae` (regression) `1 - score / persistence's`; label metrics and CSI per threshold: the
    difference (None where persistence's score is undefined)."""
    out = {}
    for name, values in scores["per_lead"].items():
        base = persistence["per_lead"][name]
        if name in ("mse", "mae", "mse_per_frame", "mae_per_frame"):
            out[name] = [None if b == 0 else 1.0 - v / b for v, b in zip(values, base)]
        elif name != "rmse":
            out[name] = [v - b for v, b in zip(values, base)]
    if "verification" in scores:
        ours, theirs = scores["verification"]["by_threshold"], persistence["verification"]["by_threshold"]
        out["csi"] = {name: [None if a is None or b is None else a - b
                             for a, b in zip(entry["lead_time"]["csi"], theirs[name]["lead_time"]["csi"])]
                      for name, entry in ours.items()}
    means = {name: _mean(values) for name, values in out.items() if name != "csi"}
    if "csi" in out:
        means["csi"] = {name: _mean(values) for name, values in out["csi"].items()}
    return {"per_lead": out, "mean": means}


def _mean(values: list) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
