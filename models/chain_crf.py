"""A linear-chain CRF over tag sequences: exact NLL, marginals and Viterbi, batched.

Scores follow pytorch-crf: `start_transitions[y_0] + sum_t emissions[t, y_t] +
sum_t transitions[y_{t-1}, y_t] + end_transitions[y_last]`. Masks give ragged
lengths (a prefix of each row is on; the first step always is).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from models.hmm import check_mask, viterbi


class ChainCRF(nn.Module):
    """Linear-chain CRF with `num_tags` tags.

    Parameters: `start_transitions [K]`, `end_transitions [K]`,
    `transitions [K, K]` (`transitions[i, j]` scores tag i followed by j).
    """

    def __init__(self, num_tags: int):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`log p(tags | emissions)` per sequence `[B]`.

        Args:
            emissions: `[B, T, K]` scores.
            tags: `[B, T]` gold tags (anything at masked steps).
            mask: `[B, T]` valid steps.
        """
        self._check(emissions)
        mask = check_mask(emissions, mask)
        return self._score(emissions, tags, mask) - self.log_partition(emissions, mask)

    def marginals(self, emissions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`p(y_t = k | emissions)` `[B, T, K]` (0 at masked steps)."""
        self._check(emissions)
        mask = check_mask(emissions, mask)
        alphas = self._forward_alphas(emissions, mask)  # (B, T, K)
        log_z = torch.logsumexp(alphas[:, -1] + self.end_transitions, dim=1)
        betas = [self.end_transitions.expand_as(alphas[:, 0])]  # built from the last step back
        steps = emissions.unbind(1)  # T x (B, K)
        for step in range(emissions.shape[1] - 2, -1, -1):
            # shape: (B, K_now, K_next)
            new = torch.logsumexp(self.transitions + (steps[step + 1] + betas[-1])[:, None, :], dim=2)
            betas.append(torch.where(mask[:, step + 1, None], new, betas[-1]))
        posterior = (alphas + torch.stack(betas[::-1], dim=1) - log_z[:, None, None]).exp()
        return posterior * mask[..., None]

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Best tag sequences `[B, T]` (-1 past the mask), back-tracked for the whole batch at once."""
        self._check(emissions)
        return viterbi(self.start_transitions, self.transitions, emissions, mask, self.end_transitions)[0]

    def _check(self, emissions: torch.Tensor) -> None:
        if emissions.ndim != 3 or emissions.shape[2] != self.num_tags:
            raise ValueError(f"emissions must be [B, T, {self.num_tags}], got {tuple(emissions.shape)}")

    def _score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tags = tags.clamp(min=0)
        on = mask.to(emissions.dtype)
        emitted = emissions.gather(2, tags[..., None])[..., 0]  # (B, T)
        moved = self.transitions[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
        lengths = mask.sum(dim=1)
        last = tags.gather(1, (lengths - 1)[:, None])[:, 0]
        return (self.start_transitions[tags[:, 0]] + (emitted * on).sum(1)
                + (moved * on[:, 1:]).sum(1) + self.end_transitions[last])

    def _forward_alphas(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # unbind, not indexing: the backward pass then stacks the steps' gradients once, where each
        # index's would write into zeros the size of all emissions
        steps = emissions.unbind(1)  # T x (B, K)
        alpha = self.start_transitions + steps[0]
        alphas = [alpha]
        ragged = not bool(mask.all())
        into = self.transitions.T  # [K_next, K_prev]
        for step in range(1, len(steps)):
            new = torch.logsumexp(alpha[:, None, :] + into, dim=2) + steps[step]
            alpha = torch.where(mask[:, step, None], new, alpha) if ragged else new
            alphas.append(alpha)
        return torch.stack(alphas, dim=1)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`log Z` of each sequence `[B]`: every tag path's score summed out."""
        return torch.logsumexp(self._forward_alphas(emissions, mask)[:, -1] + self.end_transitions, dim=1)
