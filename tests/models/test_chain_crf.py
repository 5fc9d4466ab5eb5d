"""Chain CRF log-likelihood, marginals and decode against brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch
from autograd_nodes import readers_of

from models.chain_crf import ChainCRF


def random_crf(k: int, seed: int) -> ChainCRF:
    torch.manual_seed(seed)
    crf = ChainCRF(k).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def path_score(crf, emissions_row, path):
    score = crf.start_transitions[path[0]] + emissions_row[0, path[0]]
    for step in range(1, len(path)):
        score = score + crf.transitions[path[step - 1], path[step]] + emissions_row[step, path[step]]
    return score + crf.end_transitions[path[-1]]


@pytest.mark.parametrize("seed", range(4))
def test_likelihood_marginals_decode_equal_enumeration(seed):
    k, t = 3, 4
    crf = random_crf(k, seed)
    lengths = [4, 2, 1, 3]
    g = torch.Generator().manual_seed(seed + 100)
    emissions = torch.randn(len(lengths), t, k, generator=g, dtype=torch.float64)
    tags = torch.randint(k, (len(lengths), t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        log_likelihood = crf.log_likelihood(emissions, tags, mask)
        marginals = crf.marginals(emissions, mask)
        decoded = crf.decode(emissions, mask)
        for b, length in enumerate(lengths):
            paths = list(itertools.product(range(k), repeat=length))
            scores = torch.stack([path_score(crf, emissions[b], p) for p in paths])
            log_z = torch.logsumexp(scores, 0)
            gold = path_score(crf, emissions[b], tags[b, :length].tolist())
            assert abs(float(log_likelihood[b] - (gold - log_z))) < 1e-9
            expected = torch.zeros(t, k, dtype=torch.float64)
            for score, p in zip(scores, paths):
                for step, tag in enumerate(p):
                    expected[step, tag] += torch.exp(score - log_z)
            assert torch.allclose(marginals[b], expected, atol=1e-9, rtol=0)
            assert decoded[b, :length].tolist() == list(paths[int(scores.argmax())])
            assert (decoded[b, length:] == -1).all()


def test_gradcheck_nll():
    crf = random_crf(3, 0)
    emissions = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    tags = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert torch.autograd.gradcheck(lambda e: -crf.log_likelihood(e, tags, mask).sum(), (emissions,))
    loss = -crf.log_likelihood(emissions, tags, mask).sum()
    loss.backward()
    assert crf.transitions.grad is not None and crf.transitions.grad.abs().sum() > 0


def test_shape_errors():
    crf = ChainCRF(4)
    with pytest.raises(ValueError, match=r"emissions must be \[B, T, 4\]"):
        crf.decode(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="num_tags must be >= 1"):
        ChainCRF(0)


def test_the_recursions_index_no_step_of_the_emissions():
    """Each step taken by indexing would write its gradient into zeros the size of all emissions,
    T times a pass; unbound steps are stacked once."""
    crf = ChainCRF(3)
    emissions = torch.randn(2, 6, 3, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    nll = -crf.log_likelihood(emissions, torch.zeros(2, 6, dtype=torch.long), mask).sum()
    for out in (nll, crf.marginals(emissions, mask)):
        readers = readers_of(emissions, out)
        assert "UnbindBackward0" in readers
        assert "SelectBackward0" not in readers
