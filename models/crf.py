"""A space-time CRF over label grids: mean-field (differentiable) or loopy belief propagation.

The graph has a node per pixel and frame, spatial edges to the 4 or 8
neighbours and, with `temporal_links`, edges to the same pixel in the previous
and next frame. With unaries `u` (logits) the energy of a labelling `y` is

    E(y) = -sum_i u_i(y_i) + sum_{edges (i, j)} w_ij * mu(y_i, y_j)

where `mu` is the Potts compatibility `[y_i != y_j]` or a learned symmetric
K x K matrix, and `w_ij` is the spatial or temporal weight, times
`exp(-|g_i - g_j|^2 / (2 theta^2))` of a guide image when `edge_aware`.
Messages move by shifting whole `[B, T, K, H, W]` tensors, one shift per edge
direction: no loop over pixels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

Offset = tuple[int, int, int]  # (dt, dy, dx) from a node to its neighbour

_SPATIAL_4: tuple[Offset, ...] = ((0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))
_DIAGONAL: tuple[Offset, ...] = ((0, -1, -1), (0, -1, 1), (0, 1, -1), (0, 1, 1))
_TEMPORAL: tuple[Offset, ...] = ((-1, 0, 0), (1, 0, 0))


def shift(x: torch.Tensor, offset: Offset) -> torch.Tensor:
    """`y[:, t, :, i, j] = x[:, t+dt, :, i+dy, j+dx]`, zero where that is off the grid.

    Args:
        x: `[B, T, K, H, W]` (K may be 1).
    """
    out = torch.zeros_like(x)
    spans = [(d, n) for d, n in zip(offset, (x.shape[1], x.shape[3], x.shape[4]))]
    src = [slice(max(d, 0), n + min(d, 0)) for d, n in spans]
    dst = [slice(max(-d, 0), n + min(-d, 0)) for d, n in spans]
    out[:, dst[0], :, dst[1], dst[2]] = x[:, src[0], :, src[1], src[2]]
    return out


def inverse_softplus(value: float) -> float:
    """The x with softplus(x) = value (value > 0)."""
    return value + math.log(-math.expm1(-value))


class SpaceTimeCRF(nn.Module):
    """Space-time CRF with learnable pairwise weights; mean-field or loopy-BP inference.

    Args:
        num_classes: labels K.
        neighbourhood: 4 or 8 spatial neighbours.
        temporal_links: edges to the previous and next frame.
        iterations: mean-field iterations (or loopy-BP sweeps), >= 1.
        pairwise_weight: initial spatial and temporal weight, >= 0; 0 turns the
            pairwise term off and `forward` returns the unaries unchanged.
        compatibility: "potts" (fixed `[y_i != y_j]`) or "learned" (a
            symmetric K x K matrix initialised to Potts).
        edge_aware: scale each edge by the guide image's similarity across it.
        inference: "mean_field" or "loopy_bp" (sum-product marginals;
            `decode` uses max-product).
        damping: loopy-BP message damping in [0, 1) (0: plain updates).
    """

    def __init__(self, num_classes: int, neighbourhood: int = 4, temporal_links: bool = True,
                 iterations: int = 5, pairwise_weight: float = 1.0, compatibility: str = "potts",
                 edge_aware: bool = False, inference: str = "mean_field", damping: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if neighbourhood not in (4, 8):
            raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if pairwise_weight < 0:
            raise ValueError(f"pairwise_weight must be >= 0, got {pairwise_weight}")
        if compatibility not in ("potts", "learned"):
            raise ValueError(f"compatibility must be 'potts' or 'learned', got {compatibility!r}")
        if inference not in ("mean_field", "loopy_bp"):
            raise ValueError(f"inference must be 'mean_field' or 'loopy_bp', got {inference!r}")
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        self.num_classes = num_classes
        self.iterations = iterations
        self.inference = inference
        self.damping = damping
        self.enabled = pairwise_weight > 0
        self.spatial_offsets = _SPATIAL_4 + (_DIAGONAL if neighbourhood == 8 else ())
        self.temporal_offsets = _TEMPORAL if temporal_links else ()
        initial = inverse_softplus(pairwise_weight) if self.enabled else 0.0
        # Unconstrained parameters; softplus keeps the weights positive.
        self.raw_spatial = nn.Parameter(torch.tensor(initial))
        self.raw_temporal = nn.Parameter(torch.tensor(initial))
        self.raw_bandwidth = nn.Parameter(torch.tensor(inverse_softplus(1.0))) if edge_aware else None
        potts = 1.0 - torch.eye(num_classes)
        self.compatibility = nn.Parameter(potts) if compatibility == "learned" else None
        self.register_buffer("potts", potts, persistent=False)

    @property
    def spatial_weight(self) -> torch.Tensor:
        return F.softplus(self.raw_spatial)

    @property
    def temporal_weight(self) -> torch.Tensor:
        return F.softplus(self.raw_temporal)

    def compatibility_matrix(self) -> torch.Tensor:
        """`mu` `[K, K]`, symmetric."""
        if self.compatibility is None:
            return self.potts
        return 0.5 * (self.compatibility + self.compatibility.T)

    def edge_weights(self, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None
                     ) -> dict[Offset, torch.Tensor]:
        """The weight of the edge from each node to its neighbour at each offset.

        Returns a scalar per offset, or `[B, T, 1, H, W]` maps when `edge_aware`
        (then `guide` `[B, T, C, H, W]` is required).
        """
        weights = {o: self.spatial_weight for o in self.spatial_offsets}
        weights.update({o: self.temporal_weight for o in self.temporal_offsets})
        if self.raw_bandwidth is None:
            return {o: w.to(unaries.dtype) for o, w in weights.items()}
        if guide is None:
            raise ValueError("edge_aware needs a guide image [B, T, C, H, W]")
        if guide.shape[:2] != unaries.shape[:2] or guide.shape[3:] != unaries.shape[3:]:
            raise ValueError(f"guide {tuple(guide.shape)} does not match unaries {tuple(unaries.shape)}")
        bandwidth = F.softplus(self.raw_bandwidth)
        affinity = {}
        for o, w in weights.items():
            # shape: (B, T, 1, H, W)
            distance = (guide - shift(guide, o)).pow(2).sum(dim=2, keepdim=True)
            affinity[o] = w * torch.exp(-distance / (2 * bandwidth ** 2))
        return affinity

    def forward(self, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Refine unary logits `[B, T, K, H, W]`; returns logits of the same shape.

        Softmax over K of the result gives the (approximate) marginals.
        """
        if unaries.ndim != 5 or unaries.shape[2] != self.num_classes:
            raise ValueError(f"unaries must be [B, T, {self.num_classes}, H, W], got {tuple(unaries.shape)}")
        if not self.enabled:
            return unaries
        weights = self.edge_weights(unaries, guide)
        if self.inference == "loopy_bp":
            return torch.log_softmax(self._belief_propagation(unaries, weights, max_product=False), dim=2)
        mu = self.compatibility_matrix().to(unaries.dtype)
        logits = unaries
        for _ in range(self.iterations):
            q = torch.softmax(logits, dim=2)
            logits = unaries - self._pairwise_field(q, weights, mu)
        return logits

    def decode(self, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A labelling `[B, T, H, W]`: max-product BP with `loopy_bp`, else the mean-field argmax."""
        if self.inference == "loopy_bp" and self.enabled:
            beliefs = self._belief_propagation(unaries, self.edge_weights(unaries, guide), max_product=True)
            return beliefs.argmax(dim=2)
        return self.forward(unaries, guide).argmax(dim=2)

    @staticmethod
    def _pairwise_field(q: torch.Tensor, weights: dict[Offset, torch.Tensor], mu: torch.Tensor
                        ) -> torch.Tensor:
        """`sum_j w_ij sum_l' mu(l, l') q_j(l')` for every node i and label l."""
        neighbours = sum(w * shift(q, o) for o, w in weights.items())  # (B, T, K, H, W)
        return torch.einsum("btkhw,lk->btlhw", neighbours, mu)

    def _belief_propagation(self, unaries: torch.Tensor, weights: dict[Offset, torch.Tensor],
                            max_product: bool) -> torch.Tensor:
        """Synchronous loopy BP in log space; returns unnormalised log beliefs `[B, T, K, H, W]`.

        `messages[o][i]` is the message into node i from its neighbour i+o.
        """
        mu = self.compatibility_matrix().to(unaries.dtype)
        messages = {o: torch.zeros_like(unaries) for o in weights}
        for _ in range(self.iterations):
            belief = unaries + sum(messages.values())
            updated = {}
            for o in weights:
                back = (-o[0], -o[1], -o[2])
                # At the sender j = i+o, leave out what i sent it; the edge's weight seen from j.
                cavity = belief - messages[back]  # (B, T, K', H, W)
                w = weights[back]
                w = w[:, :, :, None] if w.ndim else w  # (B, T, 1, 1, H, W) or scalar
                # shape: (B, T, K, K', H, W): cavity(l') - w * mu(l, l')
                scores = cavity[:, :, None] - w * mu[None, None, :, :, None, None]
                sent = scores.amax(dim=3) if max_product else torch.logsumexp(scores, dim=3)
                sent = sent - (sent.amax(dim=2, keepdim=True) if max_product
                               else torch.logsumexp(sent, dim=2, keepdim=True))
                message = shift(sent, o)
                if self.damping:
                    message = self.damping * messages[o] + (1 - self.damping) * message
                updated[o] = message
            messages = updated
        return unaries + sum(messages.values())
