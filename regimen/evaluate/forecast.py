"""The forecast section of evaluate.py: every forecaster's scores per lead time on the same windows
and masks, the model's (unaries, PGM) beside persistence and extrapolation, and their skill
against persistence.

Lead time is the steps after the last observed frame (1..T_out), and minutes
where the archive gives frame times (`meta["forecast"]["frame_step"]`, the
median step between frame times).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from regimen.core.config import EvaluationConfig
from regimen.data.processed import TaskData
from regimen.evaluate.forecast_baselines import extrapolation, has_pysteps, persistence
from regimen.scores.lead_times import LeadTimeSums, skill
from regimen.train.inference import Outputs, numpy_of

log = logging.getLogger(__name__)

BASELINES = ("persistence", "extrapolation")


def lead_times(meta: dict) -> dict:
    """Steps 1..T_out, and each in minutes (dates) or in the time coordinate's units (numbers) where
    the data has frame times, else None."""
    forecast = meta["forecast"]
    steps = list(range(1, forecast["output_frames"] + 1))
    step, unit = forecast.get("frame_step"), forecast.get("frame_step_unit")
    out = {"steps": steps, "minutes": None}
    if step is not None and unit == "seconds":
        out["minutes"] = [round(s * step / 60.0, 6) for s in steps]
    elif step is not None:
        out["time"] = [s * step for s in steps]
    return out


def forecast_thresholds(data: TaskData, settings: EvaluationConfig) -> list[float]:
    """The events whose CSI each lead time reports: `evaluation.thresholds`, else for classes every
    class above 0 (an event is a label >= it)."""
    if settings.thresholds or data.task != "segmentation":
        return list(settings.thresholds)
    return list(range(1, data.num_classes))


class ForecastReport:
    """Lead-time scores of the model's predictors and the baselines over a split's forecast windows.

    Args:
        data: the processed forecast data.
        settings: `evaluation` (thresholds, FSS scales).
        predictors: the names of the model's predictors (`unary`, `pgm`).
    """

    def __init__(self, data: TaskData, settings: EvaluationConfig, predictors: list[str]):
        self.meta, self.task = data.meta, data.task
        self.num_classes = data.num_classes if data.task != "regression" else None
        self.output_frames = data.forecast[1]
        self.thresholds = forecast_thresholds(data, settings)
        names = list(predictors) + ["persistence"]
        if data.task == "tagging":
            log.info("forecast baselines: extrapolation moves fields; tagging has none, so it is left out")
        elif has_pysteps():
            names.append("extrapolation")
        else:
            log.info("forecast baselines: extrapolation left out: it needs pysteps "
                     "(pip install -r requirements-pysteps.txt)")
        # The video scores of the forecasting tables, where the values are known to lie in [0, 1] (mmnist).
        frame_scores = data.meta["generator"].get("value_range") == [0.0, 1.0] and not data.has_mask
        self.sums = {name: LeadTimeSums(data.task, data.num_classes, self.output_frames, self.thresholds,
                                        settings.scales, frame_scores) for name in names}
        self.example: Optional[dict] = None

    def add(self, out: Outputs, predicted: dict[str, np.ndarray]) -> None:
        """One batch: the model's forecasts (`predicted`, labels or values per predictor) and the
        baselines' from the batch's observed frames, each scored on the batch's truth and mask."""
        last = out.last.numpy()
        forecasts = {**predicted, "persistence": persistence(last, self.output_frames)}
        if "extrapolation" in self.sums:
            forecasts["extrapolation"] = extrapolation(out.x.numpy(), last, self.output_frames, self.num_classes)
        truth, valid = out.y.numpy(), numpy_of(out.valid)
        for name, forecast in forecasts.items():
            self.sums[name].add(truth, forecast, valid)
        if self.example is None and self.task != "tagging":
            self.example = {"observed": out.x[0, :, 0].numpy(), "truth": truth[0],
                            "forecasts": {name: forecast[0] for name, forecast in forecasts.items()}}

    def result(self) -> dict:
        scores = {name: sums.result() for name, sums in self.sums.items()}
        forecast = self.meta["forecast"]
        return {"input_frames": forecast["input_frames"], "output_frames": forecast["output_frames"],
                "lead_times": lead_times(self.meta), "thresholds": self.thresholds, "scores": scores,
                "skill": {name: skill(scores[name], scores["persistence"]) for name in scores
                          if name != "persistence"}}
