"""The training losses: `alpha * unary + beta * structured NLL + gamma * consistency`.

Network outputs are `[B, T, K, H, W]` (segmentation, regression) or
`[B, T, K]` (tagging); labels `[B, T, H, W]` or `[B, T]`; soft targets `[..., K]`
with the class axis last; regression targets `[B, T, H, W, K]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from regimen.core.errors import UserError


@dataclass(frozen=True)
class Part:
    """A micro-batch's place in its global batch (the whole batch: 1 and 1).

    Every loss term is a mean over the global batch's nodes, or over its observed nodes where
    the data has a mask. A micro-batch's mean weighted by its share of those (`windows`: every
    window has as many nodes; `observed`) gives terms whose sum over the micro-batches of every
    process is the whole batch's loss, exactly, however the batch is split.

    Attributes:
        windows: the micro-batch's share of the global batch's windows.
        observed: its share of the global batch's observed nodes.
        dropout_seeds: one per window, drawn for the global batch (see `ConvLSTM`).
        teacher: which fed-back frames of each window are the true ones `[B, T_out - 1]` (the
            autoregressive forecaster's scheduled sampling; None: its own predictions).
        carry: the state the windows start from and end with (`tbptt.Carry`, training.stateful).
    """

    windows: float = 1.0
    observed: float = 1.0
    dropout_seeds: Optional[list[int]] = None
    teacher: Optional[torch.Tensor] = None
    carry: Optional[object] = None

    def network_inputs(self, batch: dict) -> dict:
        """What `Stack.unaries` takes besides the inputs: dropout seeds, the carried state, and for
        scheduled sampling the true future frames (`x_future`) and which to feed."""
        extra = {"dropout_seeds": self.dropout_seeds, "carry": self.carry}
        if self.teacher is not None:
            extra.update(future=batch["x_future"], teacher=self.teacher)
        return extra

    def of_mean(self, valid: Optional[torch.Tensor]) -> float:
        """The weight of a mean over nodes, which is over the observed ones where there is a mask."""
        return self.windows if valid is None else self.observed


REGRESSION_LOSSES = ("mse", "l1")


def resolve_unary_loss(name: str, task: str, has_soft_targets: bool) -> str:
    """The unary loss for `loss.unary` (`auto`: ce, or mse for regression)."""
    if name == "auto":
        return "mse" if task == "regression" else "ce"
    if (name in REGRESSION_LOSSES) != (task == "regression"):
        expected = "mse or l1 (or auto)" if task == "regression" else "ce or kl (or auto)"
        raise UserError(f"loss.unary = {name!r} does not fit task '{task}': expected {expected}")
    if name == "kl" and not has_soft_targets:
        raise UserError("loss.unary = 'kl' needs soft targets P in the processed data; "
                        "this dataset has none (use ce)")
    return name


def class_last(outputs: torch.Tensor) -> torch.Tensor:
    """`[B, T, K, H, W]` -> `[B, T, H, W, K]`; `[B, T, K]` stays."""
    return outputs.movedim(2, -1) if outputs.ndim == 5 else outputs


def unary_loss(kind: str, outputs: torch.Tensor, target: torch.Tensor,
               soft: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against labels, KL divergence against soft targets, or MSE or L1 (mean absolute
    error) against regression targets. L1's optimum is each node's median, not its mean: where a
    forecast is unsure whether a value comes, it predicts none rather than a faint haze.

    KL uses `reduction="batchmean"` over every node (pixel or frame) as one
    row, so it is the mean KL per node, on the same scale as the cross-entropy.
    With `valid` (`[B, T(, H, W)]`, False at missing nodes) each is the mean over
    the observed nodes only: a missing node's target counts for nothing.
    """
    if valid is not None:
        return masked_mean(_per_node(kind, outputs, target, soft), valid)
    if kind in REGRESSION_LOSSES:
        loss = F.mse_loss if kind == "mse" else F.l1_loss
        return loss(class_last(outputs).float(), target.float())
    logits = class_last(outputs).float().flatten(0, -2)  # (nodes, K)
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), soft.flatten(0, -2).float(), reduction="batchmean")
    return F.cross_entropy(logits, target.flatten())


def _per_node(kind: str, outputs: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
    """`unary_loss`'s terms per node `[nodes]`, before the mean."""
    if kind in REGRESSION_LOSSES:
        error = class_last(outputs).float() - target.float()
        return (error.pow(2) if kind == "mse" else error.abs()).mean(dim=-1).flatten()
    logits = class_last(outputs).float().flatten(0, -2)  # (nodes, K)
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), soft.flatten(0, -2).float(), reduction="none").sum(dim=1)
    return F.cross_entropy(logits, target.flatten(), reduction="none")


def masked_mean(per_node: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-node values (flattened as `valid` is) over the valid nodes; 0 with none."""
    if valid is None:
        return per_node.mean()
    weights = valid.flatten().to(per_node.dtype)
    return (per_node.flatten() * weights).sum() / weights.sum().clamp_min(1.0)


def frames_guide(batch: dict) -> Optional[torch.Tensor]:
    """The inputs of the frames a batch's targets are on, for the losses that read them; None for
    a forecast (its targets are frames whose inputs the network never reads; the batch has `last`)."""
    return None if "last" in batch else batch["x"]


def consistency(log_marginals: torch.Tensor, x: Optional[torch.Tensor]) -> torch.Tensor:
    """Disagreement of consecutive frames' marginals where the input did not change.

    The input change is measured on a 3x3 box-smoothed input, so sensor noise
    alone does not count as change: `w_t = exp(-mean_c (s(x_t) - s(x_{t-1}))^2)`.
    The disagreement is the squared L2 distance of the two marginals; the mean of
    `w_t * distance` over every node and pair of frames is returned.

    Args:
        log_marginals: `[B, T, K, H, W]` or `[B, T, K]` log probabilities.
        x: inputs `[B, T, C, H, W]`; None (a forecast, whose frames have no inputs): every weight 1.
    """
    q = log_marginals.float().exp()
    distance = (q[:, 1:] - q[:, :-1]).pow(2).sum(dim=2)  # (B, T-1, H, W) or (B, T-1)
    if x is None:
        return distance.mean()
    smoothed = F.avg_pool2d(x.float().flatten(0, 1), 3, stride=1, padding=1,
                            count_include_pad=False).unflatten(0, x.shape[:2])  # (B, T, C, H, W)
    change = (smoothed[:, 1:] - smoothed[:, :-1]).pow(2).mean(dim=2)  # (B, T-1, H, W)
    if q.ndim == 3:
        change = change.mean(dim=(2, 3))  # tagging: one weight per pair of frames
    return (torch.exp(-change) * distance).mean()
