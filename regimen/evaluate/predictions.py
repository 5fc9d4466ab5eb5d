"""What a predictor gives on a batch of windows: labels and class probabilities (or values).

The unaries alone give their softmax and argmax; a PGM its marginals and joint
decoding, of each window on its own or, where stateful evaluation decoded
whole sequences (`regimen.train.whole_sequences`), of the windows' sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from regimen.train.inference import Outputs, decode, marginals
from regimen.train.losses import class_last
from regimen.train.pgm import PGMHead


@dataclass
class Predictions:
    """One predictor's output on a split: decoded labels `[N, T(, H, W)]` and class
    probabilities with the class axis last `[N, T(, H, W), K]`; for regression the
    predicted values `[N, T, H, W, C]` (labels None)."""

    probs: np.ndarray
    labels: Optional[np.ndarray] = None

    def flat_probs(self) -> np.ndarray:
        return self.probs.reshape(-1, self.probs.shape[-1])


def predictions(unaries: torch.Tensor, task: str, head: Optional[PGMHead] = None,
                guide: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None) -> Predictions:
    """The unaries' softmax and argmax, or the head's marginals and joint decoding (`guide`: the
    input windows in model layout, for an edge-aware CRF; `valid`: their masks)."""
    if task == "regression":
        return Predictions(class_last(unaries).numpy())
    return Predictions(class_probs(unaries, head, guide, valid), decode(head, unaries, guide, valid).numpy())


def output_predictions(out: Outputs, task: str, head: Optional[PGMHead]) -> Predictions:
    """`predictions` of a batch of windows; for the PGM, its decoding of their whole sequences
    where the batch carries it (stateful evaluation)."""
    if head is not None and out.pgm_labels is not None:
        return Predictions(class_last(out.pgm_probs).numpy(), out.pgm_labels.numpy())
    return predictions(out.unaries, task, head, out.guide, out.valid)


def output_labels(out: Outputs, head: Optional[PGMHead]) -> np.ndarray:
    """The labels `output_predictions` gives, without the probabilities."""
    if head is not None and out.pgm_labels is not None:
        return out.pgm_labels.numpy()
    return decode(head, out.unaries, out.guide, out.valid).numpy()


def sampled_probs(out: Outputs, head: Optional[PGMHead], keep: torch.Tensor) -> np.ndarray:
    """Class probabilities, class axis last, of the batch's windows in `keep`, as `output_predictions`
    gives them."""
    if head is not None and out.pgm_probs is not None:
        return class_last(out.pgm_probs[keep]).numpy()
    guide, valid = (None if a is None else a[keep] for a in (out.guide, out.valid))
    return class_probs(out.unaries[keep], head, guide, valid)


def class_probs(unaries: torch.Tensor, head: Optional[PGMHead], guide: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None) -> np.ndarray:
    """Class probabilities, class axis last: the unaries' softmax, or the head's marginals."""
    probs = F.softmax(unaries.float(), dim=2) if head is None else marginals(head, unaries, guide, valid)
    return class_last(probs).numpy()
