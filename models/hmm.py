"""Hidden Markov models, batched over any number of chains.

`log_trans[i, j] = log P(z_t = j | z_{t-1} = i)`. Forward-backward uses the
scaled recursions in probability space (one `[B, K] @ [K, K]` product per step,
emissions shifted by their per-step maximum so nothing underflows) and reports
the log-likelihood from the scales; Viterbi works in log space. Masks mark the
valid steps of ragged chains: `mask[:, 0]` must be on and a masked-off step
leaves the chain where it was.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn


def check_mask(log_emit: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return torch.ones(log_emit.shape[:2], dtype=torch.bool, device=log_emit.device)
    if mask.shape != log_emit.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be [B, T] = {tuple(log_emit.shape[:2])}")
    if not bool(mask[:, 0].all()):
        raise ValueError("the first step of every chain must be on in the mask")
    return mask.bool()


def _scaled_passes(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                   mask: torch.Tensor):
    """Scaled forward and backward passes.

    Returns:
        alpha, beta `[B, T, K]` (alpha normalised per step, alpha * beta the
        posteriors), scale `[B, T]` (the normaliser of each step, 1 where masked),
        emit `[B, T, K]` (emission probabilities shifted by their step maximum)
        and the log-likelihood `[B]`.
    """
    peak = log_emit.amax(dim=2, keepdim=True)  # (B, T, 1)
    emit = (log_emit - peak).exp().transpose(0, 1).contiguous()  # (T, B, K)
    trans, start, on = log_trans.exp(), log_start.exp(), mask.T[..., None]  # on: (T, B, 1)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (log_start, log_trans, log_emit))
    if emit.device.type == "cpu" and not needs_grad:
        passes = _numpy_passes(*(t.numpy() for t in (start, trans, emit, on)))
        alpha, beta, scale = (torch.from_numpy(array) for array in passes)
    else:
        alpha, beta, scale = _torch_passes(start, trans, emit, on)
    log_likelihood = (scale[..., 0].T.log() + peak[..., 0] * mask).sum(dim=1)
    # Time-major, handed out batch-first as views.
    return alpha.transpose(0, 1), beta.transpose(0, 1), scale[..., 0].T, emit.transpose(0, 1), log_likelihood


def _torch_passes(start: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor, on: torch.Tensor):
    """The recursions in torch, differentiable and on any device: `start` `[K]`, `trans` `[K, K]`,
    `emit` `[T, B, K]`, `on` `[T, B, 1]`; alpha, beta `[T, B, K]` and scale `[T, B, 1]`. They run
    over per-step views made up front, the backward pass's scale folded into its emissions: on
    short chains a step's cost is its operators' dispatch, not their arithmetic."""
    ragged = not bool(on.all())  # without masked steps, skip the per-step selects
    ons, emits = on.unbind(0), emit.unbind(0)
    a = start * emits[0]
    s = a.sum(dim=1, keepdim=True)
    alphas, scales = [a / s], [s]
    for step in range(1, len(emits)):
        a = (alphas[-1] @ trans) * emits[step]
        s = a.sum(dim=1, keepdim=True)
        if ragged:
            a, s = torch.where(ons[step], a, alphas[-1]), torch.where(ons[step], s, 1.0)
        alphas.append(a / s)
        scales.append(s)
    scale = torch.stack(scales)  # (T, B, 1)
    # beta_t = (e_{t+1} / s_{t+1} * beta_{t+1}) @ A^T
    scaled, into = (emit / scale).unbind(0), trans.T
    betas = [torch.ones_like(alphas[0])]  # built from the last step back
    for step in range(len(emits) - 2, -1, -1):
        b = (scaled[step + 1] * betas[-1]) @ into
        betas.append(torch.where(ons[step + 1], b, betas[-1]) if ragged else b)
    return torch.stack(alphas), torch.stack(betas[::-1]), scale


def _numpy_passes(start: np.ndarray, trans: np.ndarray, emit: np.ndarray, on: np.ndarray):
    """`_torch_passes` in numpy, in place in preallocated arrays: without gradients on the CPU, where
    numpy dispatches a small operator in a fifth of torch's time and the steps are many."""
    ragged, off = not on.all(), ~on
    alpha, beta, scale = np.empty_like(emit), np.empty_like(emit), np.empty(on.shape, emit.dtype)
    np.multiply(start, emit[0], out=alpha[0])
    for step in range(len(emit)):
        a, s = alpha[step], scale[step]
        if step:
            np.matmul(alpha[step - 1], trans, out=a)
            a *= emit[step]
        a.sum(axis=1, keepdims=True, out=s)
        if ragged and step:
            np.copyto(s, 1.0, where=off[step])
            np.copyto(a, alpha[step - 1], where=off[step])
        a /= s
    scaled, into, carried = emit / scale, np.ascontiguousarray(trans.T), np.empty_like(emit[0])
    beta[-1] = 1.0
    for step in range(len(emit) - 2, -1, -1):
        np.multiply(scaled[step + 1], beta[step + 1], out=carried)
        np.matmul(carried, into, out=beta[step])
        if ragged:
            np.copyto(beta[step], beta[step + 1], where=off[step + 1])
    return alpha, beta, scale


def forward_backward(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
                     mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood and state posteriors of every chain.

    Args:
        log_start: `[K]` log initial probabilities.
        log_trans: `[K, K]` log transition probabilities (rows sum to 1).
        log_emit: `[B, T, K]` log emission likelihoods.
        mask: `[B, T]` valid steps (default: all).

    Returns:
        log_likelihood `[B]` and posteriors `[B, T, K]` (0 at masked steps).
    """
    mask = check_mask(log_emit, mask)
    alpha, beta, _, _, log_likelihood = _scaled_passes(log_start, log_trans, log_emit, mask)
    return log_likelihood, alpha * beta * mask[..., None]


@torch.no_grad()
def viterbi(log_start: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor,
            mask: Optional[torch.Tensor] = None, log_end: Optional[torch.Tensor] = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Most likely state paths `[B, T]` (-1 at masked steps) and their log joint scores `[B]`.

    `log_end` `[K]` scores the last state of each chain (a linear-chain CRF's end transitions).
    Decoding only: the scores carry no gradient. The forward pass keeps each step's best scores
    and no back-pointers: a max with its indices over a short axis costs about ten times a plain
    max, so `backtrack` recomputes the one pointer each chain follows. Where every chain's mask is
    a prefix (ragged lengths) the recursion runs unmasked and each chain is read at its last step.
    """
    mask = check_mask(log_emit, mask)
    b, t, k = log_emit.shape
    log_trans = log_trans.to(log_emit.dtype)
    emit = log_emit.transpose(0, 1).contiguous()  # (T, B, K)
    prefix = bool((mask[:, 1:] <= mask[:, :-1]).all())
    deltas = torch.empty_like(emit)
    torch.add(log_start.to(emit.dtype), emit[0], out=deltas[0])
    moves = emit.new_empty((k, b, k))  # (K_prev, B, K_next): the max runs over the outer axis
    into = log_trans[:, None, :]  # (K_prev, 1, K_next)
    before = deltas.permute(0, 2, 1)[..., None].unbind(0)  # T x (K_prev, B, 1), views of deltas
    rows, emits, on = deltas.unbind(0), emit.unbind(0), mask.T[..., None].unbind(0)
    for step in range(1, t):
        torch.add(before[step - 1], into, out=moves)
        torch.amax(moves, dim=0, out=rows[step])
        rows[step].add_(emits[step])
        if not prefix:  # a masked-off step keeps its chain where it was
            rows[step].copy_(torch.where(on[step], rows[step], rows[step - 1]))
    last_step = mask.sum(dim=1) - 1 if prefix else torch.full((b,), t - 1, device=emit.device)
    final = deltas[last_step, torch.arange(b, device=emit.device)]  # (B, K)
    score, state = (final if log_end is None else final + log_end.to(emit.dtype)).max(dim=1)
    return backtrack(deltas, log_trans, state, last_step, None if prefix else mask), score


def backtrack(deltas: torch.Tensor, log_trans: torch.Tensor, last: torch.Tensor, last_step: torch.Tensor,
              holes: Optional[torch.Tensor]) -> torch.Tensor:
    """The best paths `[B, T]` (-1 at masked steps) from the best scores of each step `deltas`
    `[T, B, K]`, back from the states `last` at each chain's `last_step`: the state before s is the
    argmax of `delta_{t-1} + log_trans[:, s]`. `holes`: the mask where it is not a prefix (a
    masked-off step keeps the state). On the CPU the walk runs in numpy, whose per-step indexing
    costs a fraction of torch's dispatch."""
    t, b, _ = deltas.shape
    on = torch.arange(t, device=deltas.device)[None] <= last_step[:, None] if holes is None else holes
    if deltas.device.type == "cpu":
        scores, trans, ends, final = deltas.numpy(), log_trans.numpy(), last_step.numpy(), last.numpy()
        kept = None if holes is None else holes.numpy()
        path, state = np.empty((t, b), dtype=np.int64), final
        for step in range(t - 1, -1, -1):
            state = np.where(ends == step, final, state)
            path[step] = state
            if step:
                before = (scores[step - 1] + trans[:, state].T).argmax(axis=1)
                state = before if kept is None else np.where(kept[:, step], before, state)
        return torch.where(on, torch.from_numpy(path.T.copy()), -1)
    rows, state = [], last
    for step in range(t - 1, -1, -1):
        state = torch.where(last_step == step, last, state)
        rows.append(state)
        if step:
            before = (deltas[step - 1] + log_trans[:, state].T).argmax(dim=1)
            state = before if holes is None else torch.where(holes[:, step], before, state)
    return torch.where(on, torch.stack(rows[::-1], dim=1), -1)


class HMM(nn.Module):
    """A discrete-state HMM with categorical, Gaussian or given emissions.

    Args:
        num_states: hidden states K.
        emission: "categorical" (symbols `[B, T]` in [0, num_symbols)),
            "gaussian" (diagonal, features `[B, T, D]`), or "given" (the caller
            passes emission log-likelihoods `[B, T, K]`, e.g. a network's
            posteriors divided by the class priors: the hybrid HMM/NN).
        num_symbols: alphabet size for categorical emissions.
        num_features: D for Gaussian emissions.
    """

    def __init__(self, num_states: int, emission: str = "given", num_symbols: Optional[int] = None,
                 num_features: Optional[int] = None):
        super().__init__()
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        if emission not in ("categorical", "gaussian", "given"):
            raise ValueError(f"emission must be categorical, gaussian or given, got {emission!r}")
        k = num_states
        self.num_states, self.emission = k, emission
        self.register_buffer("log_start", torch.full((k,), -math.log(k)))
        self.register_buffer("log_trans", torch.full((k, k), -math.log(k)))
        if emission == "categorical":
            if not num_symbols:
                raise ValueError("categorical emissions need num_symbols")
            self.register_buffer("log_emission", torch.full((k, num_symbols), -math.log(num_symbols)))
        elif emission == "gaussian":
            if not num_features:
                raise ValueError("gaussian emissions need num_features")
            self.register_buffer("means", torch.randn(k, num_features))
            self.register_buffer("variances", torch.ones(k, num_features))

    def emission_log_likelihood(self, observations: torch.Tensor) -> torch.Tensor:
        """`log p(x_t | z_t = k)` `[B, T, K]` for the observations."""
        if self.emission == "categorical":
            return self.log_emission.T[observations]
        if self.emission == "gaussian":
            diff = observations[:, :, None, :] - self.means  # (B, T, K, D)
            return -0.5 * (diff ** 2 / self.variances + torch.log(2 * math.pi * self.variances)).sum(-1)
        return observations

    def log_likelihood(self, observations: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return forward_backward(self.log_start, self.log_trans,
                                self.emission_log_likelihood(observations), mask)[0]

    def posteriors(self, observations: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return forward_backward(self.log_start, self.log_trans,
                                self.emission_log_likelihood(observations), mask)[1]

    def decode(self, observations: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return viterbi(self.log_start, self.log_trans, self.emission_log_likelihood(observations), mask)[0]

    def decode_pixels(self, log_probs: torch.Tensor, log_prior: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Viterbi labels `[B, T, H, W]` with every pixel's time series as its own chain.

        Args:
            log_probs: a network's log posteriors `[B, T, K, H, W]`.
            log_prior: class log priors `[K]`; subtracting them turns posteriors
                into scaled likelihoods (hybrid HMM/NN). None: use as given.
        """
        b, t, k, h, w = log_probs.shape
        log_emit = log_probs.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, k)  # one chain per pixel
        if log_prior is not None:
            log_emit = log_emit - log_prior
        paths, _ = viterbi(self.log_start, self.log_trans, log_emit)
        return paths.reshape(b, h, w, t).permute(0, 3, 1, 2)

    @torch.no_grad()
    def fit_supervised(self, states: torch.Tensor, observations: Optional[torch.Tensor] = None,
                       mask: Optional[torch.Tensor] = None, pseudo_count: float = 1.0) -> None:
        """MAP estimates from labelled chains: counts plus Dirichlet pseudo-counts.

        Args:
            states: `[B, T]` true states.
            observations: the emissions, for categorical/Gaussian emission models.
            mask: valid steps.
            pseudo_count: added to every count (0: maximum likelihood).
        """
        onehot, start, transitions = self._state_counts(states, mask)
        self.set_from_counts(start, transitions, pseudo_count)
        if observations is not None and self.emission != "given":
            self._fit_emissions(onehot, observations, pseudo_count)

    def state_counts(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """First-state counts `[K]` and transition counts `[K, K]` of labelled chains `[B, T]`:
        sums, so chains can be counted a batch at a time and `set_from_counts` fitted on the total.
        `mask`: the labelled steps, anywhere in a chain (a first state counts when the first step is
        labelled, a transition when both of its steps are)."""
        return self._state_counts(states, mask)[1:]

    def _state_counts(self, states: torch.Tensor, mask: Optional[torch.Tensor]):
        mask = torch.ones(states.shape, dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        onehot = torch.nn.functional.one_hot(states.clamp(min=0), self.num_states).double() * mask[..., None]
        pairs = mask[:, 1:] & mask[:, :-1]
        transitions = torch.einsum("bti,btj->ij", onehot[:, :-1] * pairs[..., None], onehot[:, 1:])
        return onehot, onehot[:, 0].sum(0), transitions

    @torch.no_grad()
    def fit_em(self, observations: torch.Tensor, mask: Optional[torch.Tensor] = None,
               iterations: int = 10, tolerance: float = 1e-6, pseudo_count: float = 0.0) -> list[float]:
        """Baum-Welch EM on unlabelled chains; returns the total log-likelihood before each update.

        With `pseudo_count = 0` (maximum likelihood) the log-likelihood never decreases.
        """
        mask = check_mask(self.emission_log_likelihood(observations), mask)
        history = []
        for _ in range(iterations):
            start, transitions, gamma, log_likelihood = self.expected_counts(observations, mask)
            history.append(log_likelihood)
            self.set_from_counts(start, transitions, pseudo_count)
            if self.emission != "given":
                self._fit_emissions(gamma, observations, pseudo_count)
            if converged(history, tolerance):
                break
        return history

    @torch.no_grad()
    def expected_counts(self, observations: torch.Tensor, mask: Optional[torch.Tensor] = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Baum-Welch's E-step: the expected first states `[K]` and transitions `[K, K]` (sums over
        the chains), the posteriors `[B, T, K]` and the chains' total log-likelihood."""
        mask = check_mask(self.emission_log_likelihood(observations), mask)
        log_emit = self.emission_log_likelihood(observations)
        alpha, beta, scale, emit, log_likelihood = _scaled_passes(self.log_start, self.log_trans, log_emit, mask)
        gamma = alpha * beta * mask[..., None]  # (B, T, K)
        # expected transitions: sum_t alpha_{t-1}(i) A(i, j) e_t(j) beta_t(j) / s_t
        forward_part = alpha[:, :-1] * mask[:, 1:, None]
        backward_part = emit[:, 1:] * beta[:, 1:] / scale[:, 1:, None]
        xi = torch.einsum("bti,btj->ij", forward_part, backward_part) * self.log_trans.exp()
        return gamma[:, 0].sum(0), xi, gamma, float(log_likelihood.sum())

    def set_from_counts(self, start_counts: torch.Tensor, trans_counts: torch.Tensor, pseudo_count: float) -> None:
        """The start and transition probabilities from (expected) counts plus Dirichlet pseudo-counts."""
        start = start_counts + pseudo_count
        trans = trans_counts + pseudo_count
        self.log_start.copy_(_log_normalise(start))
        self.log_trans.copy_(_log_normalise(trans))

    def _fit_emissions(self, weights: torch.Tensor, observations: torch.Tensor, pseudo_count: float) -> None:
        """Weighted emission estimates; `weights` `[B, T, K]` are responsibilities (or one-hot labels)."""
        weights = weights.to(torch.float64)
        if self.emission == "categorical":
            symbols = torch.nn.functional.one_hot(observations, self.log_emission.shape[1]).double()
            counts = torch.einsum("btk,bts->ks", weights, symbols) + pseudo_count
            self.log_emission.copy_(_log_normalise(counts))
            return
        x = observations.double()
        total = weights.sum(dim=(0, 1))[:, None].clamp(min=1e-12)  # (K, 1)
        means = torch.einsum("btk,btd->kd", weights, x) / total
        second = torch.einsum("btk,btd->kd", weights, x ** 2) / total
        self.means.copy_(means)
        self.variances.copy_((second - means ** 2).clamp(min=1e-6))


def converged(history: list[float], tolerance: float) -> bool:
    """Whether EM's last log-likelihood changed by less than `tolerance`, relative to the one before."""
    return len(history) > 1 and abs(history[-1] - history[-2]) < tolerance * abs(history[-2])


def _log_normalise(counts: torch.Tensor) -> torch.Tensor:
    """Rows of log probabilities from non-negative counts (an empty row becomes uniform)."""
    counts = counts.double()
    empty = counts.sum(dim=-1, keepdim=True) <= 0
    counts = torch.where(empty, torch.ones_like(counts), counts)
    return (counts / counts.sum(dim=-1, keepdim=True)).log()
