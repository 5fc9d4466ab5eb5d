"""The PGM on top of the network's unaries: one interface for the CRF, HMM and chain CRF.

`PGMHead` takes unary logits (`[B, T, K, H, W]` segmentation, `[B, T, K]`
tagging) and gives log marginals, a decoded labelling and the structured NLL.
The CRF works on the space-time grid; the HMM and the chain CRF work on
temporal chains: a sequence's frames (tagging) or every pixel's time series
(segmentation). The HMM is the hybrid HMM/NN: its emissions are the
network's posteriors divided by the class priors.

`fit_pgm` fits the head's parameters with the network fixed (phase 2 and
the alternating mode of phase 3); `pgm_params` / `head_from_params` turn a
head into the plain `pgm_params.pkl` form and back.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.chain_crf import ChainCRF
from models.crf import SpaceTimeCRF, inverse_softplus
from models.hmm import HMM, converged, forward_backward, viterbi
from regimen.core.config import PGMConfig
from regimen.core.errors import UserError
from regimen.core.progress import track
from regimen.core.weights import load_state_checked
from regimen.train.losses import masked_mean

TASKS_OF_PGM = {"crf": ("segmentation",), "hmm": ("segmentation", "tagging"),
                "chain_crf": ("segmentation", "tagging")}
TINY = 1e-12


def check_pgm_task(pgm_type: str, task: str) -> None:
    """A UserError when no PGM applies to the task, or this one does not."""
    if task == "regression":
        raise UserError(f"task 'regression' has no PGM: structured models need class labels "
                        f"(model.pgm.type = {pgm_type!r} does not apply)")
    if task not in TASKS_OF_PGM[pgm_type]:
        fitting = [t for t, tasks in TASKS_OF_PGM.items() if task in tasks]
        raise UserError(f"model.pgm.type = {pgm_type!r} does not fit task '{task}': "
                        f"expected {' or '.join(fitting)}")


def pgm_settings(pgm: PGMConfig, task: str, num_classes: int) -> dict:
    """What rebuilds a head: plain values only (they go into pickles and checkpoints)."""
    check_pgm_task(pgm.type, task)
    settings = {"type": pgm.type, "task": task, "num_classes": num_classes}
    if pgm.type == "hmm":
        settings["emission"] = pgm.emission
    if pgm.type != "crf":
        settings["decoding"] = pgm.decoding
    if pgm.type == "crf":
        settings.update(neighbourhood=pgm.neighbourhood, temporal_links=pgm.temporal_links,
                        iterations=pgm.mean_field_iters, pairwise_weight=pgm.pairwise_weight,
                        compatibility=pgm.compatibility, inference=pgm.inference, damping=pgm.damping,
                        edge_aware=pgm.edge_aware)
    return settings


class PGMHead(nn.Module):
    """A PGM applied to unary logits, whatever its type.

    On chains the emissions are `scale * log_softmax(unaries)` (chain CRF) or
    `scale * (log_softmax(unaries) - log_prior)` (hybrid HMM), with a learned
    `scale > 0`: the acoustic scale of hybrid speech recognisers, which weighs
    a network's (often under- or over-confident) posteriors against the
    transitions.

    The HMM's `emission: predictive` divides by the one-step prediction
    instead of the prior. A one-directional ConvLSTM's posterior at frame t has
    read frames 1..t: it approximates the filter `p(z_t | x_1..t)`, which is
    `p(x_t | z_t) p(z_t | x_1..t-1)` normalised. Dividing by the class prior
    leaves the past frames' evidence in, and the chain counts it again;
    dividing by `p(z_t | x_1..t-1) = posterior_{t-1} @ A` leaves the frame's
    own likelihood (up to a constant), what an HMM's emission is. A chain's
    first frame, where the network starts from zeros, is divided by the prior.

    Args:
        settings: from `pgm_settings` (type, task, num_classes, CRF options).
    """

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = dict(settings)
        self.type, self.task, k = settings["type"], settings["task"], settings["num_classes"]
        if self.type == "crf":
            self.model = SpaceTimeCRF(k, neighbourhood=settings["neighbourhood"],
                                      temporal_links=settings["temporal_links"],
                                      iterations=settings["iterations"],
                                      pairwise_weight=settings["pairwise_weight"],
                                      compatibility=settings["compatibility"],
                                      inference=settings.get("inference", "mean_field"),
                                      damping=settings.get("damping", 0.0),
                                      edge_aware=settings.get("edge_aware", False))
            return
        self.model = HMM(k, emission="given") if self.type == "hmm" else ChainCRF(k)
        self.raw_scale = nn.Parameter(torch.tensor(inverse_softplus(1.0)))
        if self.type == "hmm":
            self.register_buffer("log_prior", torch.full((k,), -float(np.log(k))))
            self.predictive = settings.get("emission", "prior") == "predictive"

    @property
    def device(self) -> torch.device:
        return next(iter(self.state_dict().values())).device

    @property
    def emission_scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def log_marginals(self, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
                      valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Log marginals of every node, the shape of `unaries` (differentiable). `guide`: the input
        windows `[B, T, C, H, W]` the unaries came from (what an edge-aware CRF weighs its edges by).
        `valid`: `[B, T(, H, W)]`, False at missing nodes, whose data term is left out: they get
        their labels from their neighbours' messages alone."""
        unaries = unaries.float()
        if self.type == "crf":
            return F.log_softmax(self.model(_data_term(unaries, valid), _float(guide)), dim=2)
        emissions = self.chain_emissions(unaries, valid)
        if self.type == "hmm":
            _, posteriors = forward_backward(self.model.log_start, self.model.log_trans, emissions)
        else:
            posteriors = self.model.marginals(emissions)
        return self.unchain(posteriors.clamp_min(TINY).log(), unaries.shape)

    @torch.no_grad()
    def decode(self, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
               valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The jointly most likely labelling (Viterbi on chains; on the grid the mean-field argmax or
        max-product BP), or on chains with `decoding: marginals` each node's most likely label, which
        gets the most nodes right; missing nodes as in `log_marginals`."""
        unaries = unaries.float()
        if self.type == "crf":
            return self.model.decode(_data_term(unaries, valid), _float(guide))
        if self.settings.get("decoding") == "marginals":
            return self.log_marginals(unaries, guide, valid).argmax(dim=2)
        emissions = self.chain_emissions(unaries, valid)
        if self.type == "hmm":
            paths, _ = viterbi(self.model.log_start, self.model.log_trans, emissions)
        else:
            paths = self.model.decode(emissions)
        return self.unchain(paths[..., None], unaries[:, :, :1].shape).squeeze(2)

    def nll(self, unaries: torch.Tensor, labels: torch.Tensor, guide: Optional[torch.Tensor] = None,
            valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Structured NLL per node: of the mean-field marginals (CRF), or of the labelled path
        under the chain (HMM, chain CRF: `-log p(y_1..y_T | unaries) / T`, exact). The path's
        likelihood is what Viterbi decoding maximises: fitting the HMM's emission scale to the
        nodes' marginals instead under-weighs the network against sticky transitions, and the
        decoded labels switch late wherever the label moves (a flood front).

        With `valid`, missing nodes lose their data term and their label: the CRF's NLL is the
        mean over observed nodes, a chain's `-log p(observed labels | unaries) / T`, the missing
        labels summed out (a forward pass with the observed nodes clamped to their labels)."""
        if self.type == "crf":
            log_q = self.log_marginals(unaries, guide, valid)
            per_node = F.nll_loss(log_q.movedim(2, -1).flatten(0, -2), labels.flatten(), reduction="none")
            return masked_mean(per_node, valid)
        emissions = self.chain_emissions(unaries.float(), valid)  # (M, T, K)
        paths = self._label_chains(labels)  # (M, T)
        if valid is not None:
            observed = self._label_chains(valid)[..., None]  # (M, T, 1)
            on_path = F.one_hot(paths, emissions.shape[2]).bool()
            clamped = emissions.masked_fill(observed & ~on_path, -float("inf"))
            return (self._log_partition(emissions) - self._log_partition(clamped)).mean() / emissions.shape[1]
        if self.type == "chain_crf":
            return -self.model.log_likelihood(emissions, paths).mean() / emissions.shape[1]
        log_start, log_trans = self.model.log_start, self.model.log_trans
        log_z, _ = forward_backward(log_start, log_trans, emissions)
        score = (log_start[paths[:, 0]] + log_trans[paths[:, :-1], paths[:, 1:]].sum(dim=1)
                 + emissions.gather(2, paths[..., None])[..., 0].sum(dim=1))
        return (log_z - score).mean() / emissions.shape[1]

    def _log_partition(self, emissions: torch.Tensor) -> torch.Tensor:
        """`log sum_paths exp(score)` of chains `[M, T, K]` under the HMM or the chain CRF: `[M]`."""
        if self.type == "hmm":
            return forward_backward(self.model.log_start, self.model.log_trans, emissions)[0]
        return self.model.log_partition(emissions, torch.ones(emissions.shape[:2], dtype=torch.bool,
                                                              device=emissions.device))

    def chain_emissions(self, unaries: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """The chains' emissions `[M, T, K]`, 0 (no evidence) at missing nodes."""
        emissions = self.emissions(self._chains(unaries))
        if valid is None:
            return emissions
        return emissions * self._label_chains(valid)[..., None].to(emissions.dtype)

    def chain_potentials(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chain's log start `[K]`, transition `[K, K]` and end `[K]` potentials (an HMM's end:
        zeros), as float64 arrays: what `regimen.train.streaming` decodes long chains with."""
        if self.type == "hmm":
            potentials = self.model.log_start, self.model.log_trans, torch.zeros_like(self.model.log_start)
        else:
            potentials = self.model.start_transitions, self.model.transitions, self.model.end_transitions
        return tuple(p.detach().cpu().double().numpy() for p in potentials)

    def emissions(self, chains: torch.Tensor) -> torch.Tensor:
        """Scaled emission scores of chains `[M, T, K]` of unaries."""
        log_posterior = F.log_softmax(chains, dim=2)
        if self.type == "hmm":  # scaled likelihoods of the hybrid HMM/NN
            log_posterior = log_posterior - (self._log_predicted(log_posterior) if self.predictive else self.log_prior)
        return self.emission_scale * log_posterior

    def _log_predicted(self, log_posterior: torch.Tensor) -> torch.Tensor:
        """`log p(z_t | x_1..t-1)` `[M, T, K]` from the posteriors before each frame and the
        transitions (the prior at the first frame)."""
        m, _, k = log_posterior.shape
        # shape: (M, T-1, K_prev, K_next), summed over the previous state
        moved = torch.logsumexp(log_posterior[:, :-1, :, None] + self.model.log_trans.to(log_posterior.dtype), dim=2)
        return torch.cat([self.log_prior.expand(m, 1, k).to(log_posterior.dtype), moved], dim=1)

    @staticmethod
    def _chains(unaries: torch.Tensor) -> torch.Tensor:
        """`[B, T, K, H, W]` -> one chain per pixel `[B*H*W, T, K]`; `[B, T, K]` stays."""
        if unaries.ndim == 3:
            return unaries
        b, t, k, h, w = unaries.shape
        return unaries.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, k)

    @staticmethod
    def _label_chains(labels: torch.Tensor) -> torch.Tensor:
        """`[B, T, H, W]` -> `[B*H*W, T]` in the order of `_chains`; `[B, T]` stays."""
        return labels.movedim(1, -1).reshape(-1, labels.shape[1]) if labels.ndim == 4 else labels

    @staticmethod
    def unchain(chains: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Inverse of `_chains` for a tensor `[B*H*W, T, K]` and the target shape."""
        if len(shape) == 3:
            return chains
        b, t, k, h, w = shape
        return chains.reshape(b, h, w, t, k).permute(0, 3, 4, 1, 2)


def _float(guide: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if guide is None else guide.float()


def _data_term(unaries: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Unaries `[B, T, K(, H, W)]` with missing nodes' set to 0: a uniform data term."""
    return unaries if valid is None else unaries * valid.unsqueeze(2).to(unaries.dtype)


# --------------------------------------------------------------------------- pgm_params.pkl


def pgm_params(head: PGMHead, dataset: dict) -> dict:
    """The plain form of `pgm_params.pkl`: settings, numpy arrays and the dataset it was fitted on."""
    arrays = {name: t.detach().cpu().numpy().copy() for name, t in head.state_dict().items()}
    return {"type": head.type, "settings": dict(head.settings), "params": arrays, "dataset": dict(dataset)}


def head_from_params(params: dict, source: str) -> PGMHead:
    """Rebuild a head from `pgm_params`; a mismatch is a UserError naming it."""
    try:
        head = PGMHead(params["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{source}: PGM settings do not rebuild a model ({error})") from None
    load_state_checked(head, {k: torch.as_tensor(v) for k, v in params["params"].items()}, source)
    return head


# --------------------------------------------------------------------------- fitting


def fit_pgm(head: PGMHead, unaries, labels, pgm: PGMConfig, seed: int, batch_size: int = 8, guide=None,
            valid=None) -> dict:
    """Fit the head's parameters on fixed unaries; returns a small report for metrics.json.

    HMM: MAP counts (`fit: mle`, Dirichlet `pseudo_count`, then the emission scale by
    gradient) or Baum-Welch (`fit: em`, labels unused). CRF and chain CRF: Adam on the structured NLL plus
    `l2 * |theta - theta_0|^2` (a Gaussian prior at the initial values, MAP).

    Args:
        unaries, labels: a split's unaries `[N, T, K, ...]` and labels, anything that gives rows
            as tensors, `array[rows]` (a tensor, phase 1's `StoredArray`, a `SplitArray`): the
            fit reads a batch, or a chunk of windows, at a time.
        guide: the input windows in model layout, the same way, for an edge-aware CRF.
        valid: the windows' masks (False at missing nodes), the same way, where the data has them:
            missing nodes add no count and no data term.
    """
    if head.type == "hmm":
        return _fit_hmm(head, unaries, labels, pgm, seed, batch_size, valid)
    return _fit_by_gradient(head, unaries, labels, pgm, seed, batch_size, guide, valid)


COUNT_WINDOWS = 64  # windows a chunk when the HMM sums counts over a split


def _chunks(array, device: torch.device):
    """The rows of `array` in order, `COUNT_WINDOWS` at a time, on `device`."""
    for first in range(0, len(array), COUNT_WINDOWS):
        yield array[np.arange(first, min(len(array), first + COUNT_WINDOWS))].to(device)


def _optional_chunks(array, like, device: torch.device):
    """`_chunks(array)`, or as many Nones as `like` has chunks when there is no array."""
    return _chunks(array, device) if array is not None else (None for _ in range(0, len(like), COUNT_WINDOWS))


def _fit_hmm(head: PGMHead, unaries, labels, pgm: PGMConfig, seed: int, batch_size: int, valid=None) -> dict:
    k, device = head.settings["num_classes"], head.log_prior.device
    if pgm.fit == "em":
        # Without labels the priors are the network's mean posterior, and the scale stays 1.
        total, nodes = torch.zeros(k, dtype=torch.float64, device=device), 0
        for chunk, observed in zip(_chunks(unaries, device), _optional_chunks(valid, unaries, device)):
            probs = F.softmax(chunk.float(), dim=2).movedim(2, -1).reshape(-1, k)
            if observed is not None:
                probs = probs[observed.flatten()]
            total, nodes = total + probs.double().sum(0), nodes + len(probs)
        head.log_prior.copy_((total / nodes).float().clamp_min(TINY).log())
        return {"method": "em", "log_likelihood": _baum_welch(head, unaries, pgm.pseudo_count, valid)}
    counts = torch.full((k,), pgm.pseudo_count, dtype=torch.float64, device=device)
    start, transitions = 0, 0
    for chunk, observed in zip(_chunks(labels, device), _optional_chunks(valid, labels, device)):
        counts += torch.bincount(chunk.flatten() if observed is None else chunk[observed], minlength=k).double()
        first, pairs = head.model.state_counts(head._label_chains(chunk),
                                               None if observed is None else head._label_chains(observed))
        start, transitions = start + first, transitions + pairs
    head.log_prior.copy_((counts / counts.sum()).log())
    head.model.set_from_counts(start, transitions, pgm.pseudo_count)
    # Then the emission scale alone, by gradient on the posteriors' NLL.
    report = _fit_by_gradient(head, unaries, labels, pgm, seed, batch_size, valid=valid)
    return {**report, "method": "mle_counts+scale", "pseudo_count": pgm.pseudo_count}


@torch.no_grad()
def _baum_welch(head: PGMHead, unaries, pseudo_count: float, valid=None, iterations: int = 20,
                tolerance: float = 1e-6) -> list[float]:
    """`HMM.fit_em` on the head's emissions (none at missing nodes), with the E-step's counts summed
    a chunk of windows at a time; returns the total log-likelihood before each update."""
    device = head.log_prior.device
    history = []
    for _ in range(iterations):
        start, transitions, log_likelihood = 0, 0, 0.0
        for chunk, observed in zip(_chunks(unaries, device), _optional_chunks(valid, unaries, device)):
            emissions = head.chain_emissions(chunk.float(), observed)
            first, pairs, _, chunk_likelihood = head.model.expected_counts(emissions)
            start, transitions, log_likelihood = start + first, transitions + pairs, log_likelihood + chunk_likelihood
        history.append(log_likelihood)
        head.model.set_from_counts(start, transitions, pseudo_count)
        if converged(history, tolerance):
            break
    return history


def _fit_by_gradient(head: PGMHead, unaries, labels, pgm: PGMConfig, seed: int, batch_size: int, guide=None,
                     valid=None) -> dict:
    params = list(head.parameters())
    device = params[0].device
    frozen = [not p.requires_grad for p in params]  # the alternating mode freezes the head between fits
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=pgm.fit_lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        for _ in track(range(pgm.fit_steps), f"fit {head.type}", "steps"):
            rows = torch.randint(len(unaries), (min(batch_size, len(unaries)),), generator=generator)
            prior = sum((p - p0).pow(2).sum() for p, p0 in zip(params, start))
            loss = head.nll(unaries[rows].to(device), labels[rows].to(device),
                            None if guide is None else guide[rows].to(device),
                            None if valid is None else valid[rows].to(device)) + pgm.l2 * prior
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        for p, was_frozen in zip(params, frozen):
            p.requires_grad_(not was_frozen)
    tail = max(1, len(losses) // 10)
    return {"method": "adam_map", "steps": pgm.fit_steps, "l2": pgm.l2,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-tail:]))}
