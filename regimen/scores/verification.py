"""Forecast verification: the categorical scores and the fractions skill score of nowcasting.

What forecasters quote (pysteps' `verification` module, the HKO-7 and SEVIR
benchmarks): at each threshold, the contingency table of events
(`value >= threshold`) in forecast and observation, with CSI, POD, FAR, bias
and HSS; CSI again after max-pooling the event fields over non-overlapping
4x4 and 16x16 blocks (an event near enough counts); and the fractions skill
score (FSS) of the event fractions in square windows of each scale. Every
score is given per frame and over all of them: in a forecast (`data.forecast`)
a frame is a lead time, the steps after the last observed frame (`lead_time`);
else it is the frame of the window (`frame`), not a lead time.

Everything is a sum over frames (`VerificationSums`), so a split streamed
batch by batch scores as the whole split. Pixels outside `valid` count in no
table; in the FSS they are no event, as pysteps treats a missing value.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

POOLS = (4, 16)  # block sizes of the pooled CSI


class VerificationSums:
    """The contingency tables and FSS sums of fields `[B, T, H, W]` at each threshold and lead time.

    Args:
        thresholds: event thresholds, in the fields' units (class labels or physical values).
        scales: FSS window sizes in pixels.
        lead_times: frames a window (T).
        frames_are: what the frames are: `lead_time` (a forecast's) or `frame` (of the window); the
            key of the per-frame scores.
    """

    def __init__(self, thresholds: list[float], scales: list[int], lead_times: int, frames_are: str = "frame"):
        self.thresholds, self.scales, self.frames_are = list(thresholds), list(scales), frames_are
        shape = (len(self.thresholds), lead_times)
        self.table = np.zeros((*shape, 4), np.int64)  # hits, misses, false alarms, correct negatives
        self.pooled = {size: np.zeros((*shape, 4), np.int64) for size in POOLS}
        self.fractions = np.zeros((len(self.scales), *shape, 3))  # sums of f^2, f*o, o^2

    def add(self, observed: np.ndarray, forecast: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """One batch of observed and forecast fields `[B, T, H, W]`; `valid`: the pixels scored."""
        valid = np.ones(observed.shape, dtype=bool) if valid is None else valid
        for i, threshold in enumerate(self.thresholds):
            obs, fct = (observed >= threshold) & valid, (forecast >= threshold) & valid
            self.table[i] += contingency(obs, fct, valid)
            for size, table in self.pooled.items():
                table[i] += contingency(*(max_pool(field, size) for field in (obs, fct, valid)))
            for j, scale in enumerate(self.scales):
                self.fractions[j, i] += fraction_sums(obs, fct, scale)

    def result(self) -> dict:
        """Per threshold: the table and its scores over all frames, the pooled CSI and the FSS per
        scale, and each of them per frame (lists, one value a frame, under `frames_are`)."""
        out = {}
        for i, threshold in enumerate(self.thresholds):
            total, by_lead = self.table[i].sum(0), self.table[i]
            entry = {**dict(zip(("hits", "misses", "false_alarms", "correct_negatives"), total.tolist())),
                     **categorical_scores(total)}
            lead = {name: [categorical_scores(row)[name] for row in by_lead] for name in SCORES}
            for size, table in self.pooled.items():
                entry[f"csi_pool{size}"] = categorical_scores(table[i].sum(0))["csi"]
                lead[f"csi_pool{size}"] = [categorical_scores(row)["csi"] for row in table[i]]
            entry["fss"] = {str(scale): fss(self.fractions[j, i].sum(0)) for j, scale in enumerate(self.scales)}
            lead["fss"] = {str(scale): [fss(row) for row in self.fractions[j, i]] for j, scale in enumerate(self.scales)}
            entry[self.frames_are] = lead
            out[_name(threshold)] = entry
        return {"thresholds": self.thresholds, "scales": self.scales, "frames_are": self.frames_are,
                "by_threshold": out}


SCORES = ("csi", "pod", "far", "bias", "hss")


def contingency(obs: np.ndarray, fct: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Hits, misses, false alarms and correct negatives `[T, 4]` of event fields `[B, T, H, W]`,
    summed over the windows and pixels of each lead time, valid pixels only."""
    axes = (0, *range(2, obs.ndim))
    return np.stack([(obs & fct).sum(axes), (obs & ~fct).sum(axes), (~obs & fct & valid).sum(axes),
                     (~obs & ~fct & valid).sum(axes)], axis=1).astype(np.int64)


def categorical_scores(counts: np.ndarray) -> dict:
    """CSI, POD, FAR, frequency bias and HSS of a table `[hits, misses, false alarms, correct
    negatives]` (pysteps' `det_cat_fct_compute`); None where a score is 0/0."""
    h, m, f, r = (float(c) for c in counts)
    hss_denominator = (h + m) * (m + r) + (h + f) * (f + r)
    return {"csi": _ratio(h, h + m + f), "pod": _ratio(h, h + m), "far": _ratio(f, h + f),
            "bias": _ratio(h + f, h + m), "hss": _ratio(2 * (h * r - f * m), hss_denominator)}


def max_pool(field: np.ndarray, size: int) -> np.ndarray:
    """A boolean field `[B, T, H, W]` max-pooled over non-overlapping `size` x `size` blocks (the
    last blocks of a side that `size` does not divide are smaller)."""
    b, t, h, w = field.shape
    pooled = F.max_pool2d(torch.from_numpy(field.reshape(b * t, 1, h, w)).to(torch.uint8).float(), size,
                          ceil_mode=True)
    return pooled.bool().numpy().reshape(b, t, *pooled.shape[-2:])


def fraction_sums(obs: np.ndarray, fct: np.ndarray, scale: int) -> np.ndarray:
    """The sums of `S_f^2`, `S_f S_o` and `S_o^2` `[T, 3]` of the event fractions in `scale` x `scale`
    windows around each pixel (zero beyond the edge), as pysteps' `fss_accum`."""
    from scipy.ndimage import uniform_filter

    size = (1, 1, scale, scale)
    s_o = uniform_filter(obs.astype(np.float64), size=size, mode="constant") if scale > 1 else obs.astype(np.float64)
    s_f = uniform_filter(fct.astype(np.float64), size=size, mode="constant") if scale > 1 else fct.astype(np.float64)
    axes = (0, 2, 3)
    return np.stack([(s_f ** 2).sum(axes), (s_f * s_o).sum(axes), (s_o ** 2).sum(axes)], axis=1)


def fss(sums: np.ndarray) -> Optional[float]:
    """`1 - sum (S_f - S_o)^2 / (sum S_f^2 + sum S_o^2)` from the three sums; None without any event."""
    forecast, both, observed = (float(s) for s in sums)
    total = forecast + observed
    return 1.0 - (forecast - 2.0 * both + observed) / total if total else None


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def _name(threshold: float) -> str:
    """A threshold as a metrics.json key: `2`, not `2.0`."""
    return str(int(threshold)) if float(threshold).is_integer() else str(threshold)
